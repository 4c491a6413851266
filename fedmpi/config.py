"""Experiment configuration: YAML in, validated dataclasses out.

Every rank parses the same file, so validation must be pure and deterministic;
errors are `ConfigError`s naming the dotted field, the value and what is allowed,
raised before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedmpi.errors import ConfigError


@dataclass
class PartitionConfig:
    method: str = "lda"  # iid | lda | shards
    alpha: float = 100.0  # Dirichlet concentration (lda)
    shards_per_client: int = 2  # shards
    min_samples: int = 1


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits (embedded) | cifar10
    path: str | None = None  # cifar10: archive or directory; else $FEDMPI_CIFAR10
    train_subset: int | None = None
    test_subset: int | None = None
    partition: PartitionConfig = field(default_factory=PartitionConfig)


@dataclass
class ClientsConfig:
    num_clients: int = 10
    fraction: float = 1.0  # of clients sampled per round, in (0, 1]
    per_round: int | None = None  # exact count; overrides fraction


@dataclass
class TrainConfig:
    model: str = "mlp"
    local_epochs: int = 1
    batch_size: int = 20
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    amp: str = "off"  # off | bf16 | fp16: autocast mixed precision (fp16 needs a GPU)
    compile: str = "off"  # off | default | reduce-overhead | max-autotune: torch.compile mode


@dataclass
class CompressionConfig:
    target: str = "weights"  # weights | update: what the uplink encodes
    uplink: list = field(default_factory=list)
    downlink: list = field(default_factory=list)


@dataclass
class RunConfig:
    deterministic: bool = True  # ordered aggregation + deterministic torch kernels
    threads: int = 1  # torch intra-op threads per rank (ranks share the cores)
    device: str = "auto"  # auto | cpu | cuda
    ranks_per_gpu: int | None = None  # null: one GPU per worker rank; k: k worker ranks share one
    codec: str = "auto"  # auto (torch on GPU ranks, numpy/numba on CPU ones) | numpy | torch
    eval_every: int = 1
    checkpoint_every: int = 1
    eval_batch_size: int = 1000
    fail_at: dict | None = None  # fault injection for tests: {rank: R, round: N, where: train|aggregate|data}


@dataclass
class Config:
    name: str = "experiment"
    seed: int = 0
    rounds: int = 5
    output: str | None = None  # default results/<name>.h5
    data: DataConfig = field(default_factory=DataConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def output_path(self) -> Path:
        return Path(self.output or f"results/{self.name}.h5")

    def clients_per_round(self) -> int:
        if self.clients.per_round is not None:
            return self.clients.per_round
        return max(1, math.floor(self.clients.fraction * self.clients.num_clients + 1e-9))


CHOICES = {
    "data.dataset": ("digits", "cifar10"),
    "data.partition.method": ("iid", "lda", "shards"),
    "compression.target": ("weights", "update"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.codec": ("auto", "numpy", "torch"),
    "train.amp": ("off", "bf16", "fp16"),
    "train.compile": ("off", "default", "reduce-overhead", "max-autotune"),
}


# ----------------------------------------------------------------------------- parsing


def _build(cls: type, raw: Any, where: str) -> Any:
    """Turn a dict into dataclass `cls`, rejecting unknown keys and wrong types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where or "<root>", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(key, raw[unknown[0]], f"one of the known keys: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        dotted = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], raw[name], dotted)
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp) or tp
    suffix = " or null" if optional else ""
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, value, "true or false" + suffix)
    if origin is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(where, value, "an integer" + suffix)
    if origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(where, value, "a number" + suffix)
    if origin is str:
        if isinstance(value, str):
            return value
        raise ConfigError(where, value, "a string" + suffix)
    if origin is list:
        if isinstance(value, list):
            return copy.deepcopy(value)
        raise ConfigError(where, value, "a list" + suffix)
    if origin is dict:
        if isinstance(value, dict):
            return copy.deepcopy(value)
        raise ConfigError(where, value, "a mapping" + suffix)
    raise TypeError(f"unsupported config type {tp!r} for {where}")  # a bug in this module


def _check(cond: bool, where: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(where, value, allowed)


def validate(cfg: Config) -> Config:
    """Range and cross-field checks; pipelines, datasets and models check their own names."""
    for dotted, allowed in CHOICES.items():
        value = _get(cfg, dotted)
        _check(value in allowed, dotted, value, " | ".join(allowed))
    _check(cfg.rounds >= 1, "rounds", cfg.rounds, "an integer >= 1")
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _check(bool(cfg.name) and "/" not in cfg.name, "name", cfg.name, "a non-empty name without '/'")
    c = cfg.clients
    _check(c.num_clients >= 1, "clients.num_clients", c.num_clients, "an integer >= 1")
    _check(0.0 < c.fraction <= 1.0, "clients.fraction", c.fraction, "a number in (0, 1]")
    if c.per_round is not None:
        _check(
            1 <= c.per_round <= c.num_clients,
            "clients.per_round",
            c.per_round,
            f"an integer in 1..clients.num_clients ({c.num_clients})",
        )
    t = cfg.train
    _check(t.local_epochs >= 1, "train.local_epochs", t.local_epochs, "an integer >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
    _check(t.lr > 0, "train.lr", t.lr, "a number > 0")
    _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "a number in [0, 1)")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a number >= 0")
    p = cfg.data.partition
    _check(p.alpha > 0, "data.partition.alpha", p.alpha, "a number > 0")
    _check(p.shards_per_client >= 1, "data.partition.shards_per_client", p.shards_per_client, ">= 1")
    _check(p.min_samples >= 1, "data.partition.min_samples", p.min_samples, "an integer >= 1")
    for key in ("train_subset", "test_subset"):
        value = getattr(cfg.data, key)
        _check(value is None or value >= 1, f"data.{key}", value, "null or an integer >= 1")
    r = cfg.run
    _check(r.threads >= 1, "run.threads", r.threads, "an integer >= 1")
    _check(r.ranks_per_gpu is None or r.ranks_per_gpu >= 1, "run.ranks_per_gpu", r.ranks_per_gpu,
           "null (one GPU per worker rank) or an integer >= 1 (worker ranks sharing a GPU)")
    _check(r.eval_every >= 1, "run.eval_every", r.eval_every, "an integer >= 1")
    _check(r.checkpoint_every >= 1, "run.checkpoint_every", r.checkpoint_every, "an integer >= 1")
    _check(r.eval_batch_size >= 1, "run.eval_batch_size", r.eval_batch_size, "an integer >= 1")
    if cfg.data.dataset == "cifar10" and cfg.data.path:
        path = Path(os.path.expandvars(os.path.expanduser(cfg.data.path)))
        _check(path.exists(), "data.path", cfg.data.path, "an existing CIFAR-10 archive or directory")
    return cfg


def check_world(cfg: Config, world_size: int) -> None:
    """Checks that need the MPI world size (every rank runs them identically)."""
    if world_size < 2:
        raise ConfigError(
            "mpi.world_size", world_size,
            "needs >= 2 ranks (1 server + >= 1 client worker): run under "
            "`mpiexec -n 3 python -m fedmpi run ...` or `srun`",
        )
    workers = world_size - 1
    _check(
        workers <= cfg.clients.num_clients,
        "clients.num_clients",
        cfg.clients.num_clients,
        f"at least as many clients as worker ranks ({workers}); use fewer ranks or more clients",
    )


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ----------------------------------------------------------------------------- loading


def set_path(d: dict, dotted: str, value: Any) -> None:
    """Set a nested key in a plain dict; integer parts index lists (`compression.uplink.0.prune.rate`)."""
    parts = dotted.split(".")
    node: Any = d
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(dotted, value, f"a valid list index at '{part}' (list has {len(node)} items)")
            key: Any = int(part)
        else:
            if not isinstance(node, dict):
                raise ConfigError(dotted, value, f"a path through mappings/lists; '{part}' is below a scalar")
            key = part
        if last:
            node[key] = value
            return
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so `0.5`, `true`, `[1, 2]` work)."""
    if "=" not in text:
        raise ConfigError("--set", text, "dotted.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def from_dict(raw: dict) -> Config:
    return validate(_build(Config, raw, ""))


def load(path: str | Path, overrides: list[str] = ()) -> tuple[Config, str]:
    """Read, override and validate a config file; returns the config and the text as given."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "an existing YAML file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", str(path), f"valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError("config", str(path), "a YAML mapping at the top level")
    for item in overrides:
        key, value = parse_override(item)
        set_path(raw, key, value)
    if overrides:
        text += "\n# overrides: " + " ".join(overrides) + "\n"
    return from_dict(raw), text
