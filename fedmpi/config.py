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
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedmpi.errors import ConfigError, clip
from fedmpi import backoff
from fedmpi.liveness import DEFAULT_TIMEOUT_S


# ----------------------------------------------------------------------------- bounds


# Config keys that say how a run executes, not what it computes: a sweep does not call a
# result file stale for them, and `--resume FILE CONFIG` lets CONFIG differ in them
# (run.threads follows --cpus-per-task; the test images per forward pass change the
# speed, not the accuracy).
EXECUTION_ONLY = frozenset({"run.threads", "run.eval_batch_size"})

@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field; NaN and infinities are never inside."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo < v if self.lo_open else self.lo <= v
        below = v < self.hi if self.hi_open else v <= self.hi
        return bool(above and below)  # False for NaN

    def describe(self, integer: bool) -> str:
        if integer:
            return f"an integer in {self.lo}..{self.hi}"
        return (f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")


def num(default: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """A numeric config field with its bounds: `lr: float = num(0.05, 0, 100, lo_open=True)`.

    Every int and float field is declared this way (a unit test checks it), so a value
    that would overflow an HDF5/wire integer, crash a library (torch threads) or make
    the model NaN is a config error naming the field and this range.
    """
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


MAX_INT32 = 2**31 - 1  # HDF5 /rounds and /messages store rounds and client ids as int32
MAX_SEED = 2**32 - 1  # what every generator we seed (numpy, torch) takes without wrapping
MAX_THREADS = 1024  # torch segfaults with 100000; more than any node has cores
MAX_COUNT = 1_000_000  # rounds, clients, epochs, batch sizes: far beyond any real run
MAX_STR = 4096  # characters of a string value (names, paths)
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer is no deadline at all


@dataclass
class PartitionConfig:
    method: str = "lda"  # iid | lda | shards
    alpha: float = num(100.0, 0, 1e6, lo_open=True)  # Dirichlet concentration (lda)
    shards_per_client: int = num(2, 1, MAX_COUNT)  # shards
    min_samples: int = num(1, 1, MAX_INT32)
    size_sigma: float = num(0.0, 0, 10)  # iid | lda: lognormal sigma of client sizes (0: equal)


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits (embedded) | cifar10
    path: str | None = None  # cifar10: archive or directory; else $FEDMPI_CIFAR10
    train_subset: int | None = num(None, 1, MAX_INT32)
    test_subset: int | None = num(None, 1, MAX_INT32)
    partition: PartitionConfig = field(default_factory=PartitionConfig)


@dataclass
class ClientsConfig:
    num_clients: int = num(10, 1, MAX_COUNT)
    fraction: float = num(1.0, 0, 1, lo_open=True)  # of clients sampled per round
    per_round: int | None = num(None, 1, MAX_COUNT)  # exact count; overrides fraction


@dataclass
class TrainConfig:
    model: str = "mlp"
    local_epochs: int = num(1, 1, 10_000)
    batch_size: int = num(20, 1, MAX_COUNT)
    lr: float = num(0.05, 0, 100, lo_open=True)
    momentum: float = num(0.0, 0, 1, hi_open=True)
    weight_decay: float = num(0.0, 0, 1)
    amp: str = "off"  # off | bf16 | fp16: autocast mixed precision (fp16 needs a GPU)
    compile: str = "off"  # off | default | reduce-overhead | max-autotune: torch.compile mode


@dataclass
class CompressionConfig:
    target: str = "weights"  # weights | update: what the uplink encodes
    # a list of stages, or a one-key mapping {method: {params}} (fedmpi.compressors)
    uplink: Any = field(default_factory=list)
    downlink: Any = field(default_factory=list)
    # weights | update: what the downlink encodes (update: new global - clients' replica)
    downlink_target: str = "weights"
    # null, or a rule giving each client its own uplink prune rate (fedmpi.compressors.client_rate)
    client_rate: Any = None


@dataclass
class PollConfig:
    """How a rank waits for MPI (fedmpi/backoff.py): spin, then sleep with exponential
    backoff. Sleeps stay far below liveness.PAUSE_S (5 s), which reads a longer gap
    between two polls as this rank having been stopped."""

    spin_s: float = num(backoff.SPIN_S, 0, 1)  # poll without sleeping this long first
    min_sleep_s: float = num(backoff.MIN_SLEEP_S, 1e-6, 1)  # first sleep, then doubled
    max_sleep_s: float = num(backoff.MAX_SLEEP_S, 1e-6, 1)  # cap (an idle rank's wake-up period)


@dataclass
class RunConfig:
    deterministic: bool = True  # ordered aggregation + deterministic torch kernels
    # torch threads per rank; null: $SLURM_CPUS_PER_TASK (capped at the cores), else 1
    threads: int | None = num(None, 1, MAX_THREADS)
    device: str = "auto"  # auto | cpu | cuda
    # null: one GPU per worker rank; k: k worker ranks share one
    ranks_per_gpu: int | None = num(None, 1, MAX_THREADS)
    codec: str = "auto"  # auto (torch on GPU ranks, numpy/numba on CPU ones) | numpy | torch
    eval_every: int = num(1, 1, MAX_COUNT)
    checkpoint_every: int = num(1, 1, MAX_COUNT)
    # 100: on one CPU thread ResNet-12 evaluates 1,000 CIFAR images 2.5x faster in batches
    # of 100 than of 1,000 (cache-sized activations); the result does not depend on it.
    eval_batch_size: int = num(100, 1, MAX_COUNT)
    # Deterministic mode: decoded UPDATEs the server may hold before their turn in the
    # fixed (client) order; 0: receive strictly in that order. Memory: this many models.
    reorder_window: int = num(4, 0, 1024)
    # Evaluate round r's model while round r+1 trains (its row is written then)
    overlap_eval: bool = True
    # Liveness: a rank silent this long while others wait on it ends the job (the limit
    # grows with the slowest round; see fedmpi/liveness.py). Covers start-up and round 0.
    timeout_s: float = num(DEFAULT_TIMEOUT_S, 1, MAX_TIMEOUT_S)
    poll: PollConfig = field(default_factory=PollConfig)
    # Stragglers: UPDATEs not back this many seconds after the round's first MODEL was
    # sent are dropped from the round (received and discarded later); null: wait for all
    round_deadline_s: float | None = num(None, 0, MAX_TIMEOUT_S, lo_open=True)
    fail_at: dict | None = None  # fault injection for tests: {rank: R, round: N, where: train|aggregate|data|sleep|...}


@dataclass
class LinkConfig:
    """Simulated client links (fedmpi/linkmodel.py): wire bytes -> transfer seconds."""

    kind: str = "none"  # none | fixed | random | trace
    up_bps: float = num(10e6, 0, 1e15, lo_open=True)  # uplink bit/s (random: the median)
    down_bps: float = num(100e6, 0, 1e15, lo_open=True)  # downlink bit/s
    latency_s: float = num(0.0, 0, 3600)  # one-way latency per message
    distribution: str = "lognormal"  # random: lognormal | uniform
    spread: float = num(0.5, 0, 10)  # random: lognormal sigma; uniform relative half-width (< 1)
    seed: int | None = num(None, 0, MAX_SEED)  # random: null = the experiment seed
    trace: str | None = None  # trace: CSV client,up_bps,down_bps,latency_s


@dataclass
class Config:
    name: str = "experiment"
    seed: int = num(0, 0, MAX_SEED)
    rounds: int = num(5, 1, MAX_COUNT)
    output: str | None = None  # default results/<name>.h5
    data: DataConfig = field(default_factory=DataConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    # a name or a one-key mapping {strategy: {params}} (fedmpi.strategies)
    strategy: Any = "fedavg"
    run: RunConfig = field(default_factory=RunConfig)
    link: LinkConfig = field(default_factory=LinkConfig)

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


MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer is no deadline at all

CHOICES = {
    "data.dataset": ("digits", "cifar10"),
    "data.partition.method": ("iid", "lda", "shards"),
    "compression.target": ("weights", "update"),
    "compression.downlink_target": ("weights", "update"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.codec": ("auto", "numpy", "torch"),
    "train.amp": ("off", "bf16", "fp16"),
    "train.compile": ("off", "default", "reduce-overhead", "max-autotune"),
    "link.kind": ("none", "fixed", "random", "trace"),
    "link.distribution": ("lognormal", "uniform"),
}


# ----------------------------------------------------------------------------- parsing


def _build(cls: type, raw: Any, where: str) -> Any:
    """Turn a dict into dataclass `cls`, rejecting unknown keys, wrong types and ranges."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where or "<root>", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = sorted(set(raw) - set(names), key=str)  # YAML keys need not be strings
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(key, raw[unknown[0]], f"one of the known keys: {', '.join(names)}")
    values = {}
    for f in fields:
        if f.name not in raw:
            continue
        dotted = f"{where}.{f.name}" if where else f.name
        value = _coerce(hints[f.name], raw[f.name], dotted)
        bounds = f.metadata.get("range")
        if bounds is not None and value is not None and value not in bounds:
            optional = type(None) in typing.get_args(hints[f.name])
            integer = isinstance(value, int)
            raise ConfigError(dotted, value, ("null or " if optional else "")
                              + bounds.describe(integer))
        if isinstance(value, float) and not math.isfinite(value):  # a field left unbounded
            raise ConfigError(dotted, value, "a finite number")
        values[f.name] = value
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is Any:  # checked where it is built (compressors, strategies)
        return copy.deepcopy(value)
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
            try:
                return float(value)
            except OverflowError:  # an int beyond float range
                raise ConfigError(where, value, "a finite number" + suffix) from None
        raise ConfigError(where, value, "a number" + suffix)
    if origin is str:
        if isinstance(value, str) and len(value) <= MAX_STR and "\0" not in value:
            return value
        raise ConfigError(where, value, f"a string of at most {MAX_STR} characters, "
                          "without NUL characters" + suffix)
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
    """Choices and cross-field checks (ranges are checked by `_build` from the fields).

    Pipelines, datasets and models check their own names and parameters.
    """
    for dotted, allowed in CHOICES.items():
        value = _get(cfg, dotted)
        _check(value in allowed, dotted, value, " | ".join(allowed))
    _check(bool(cfg.name) and len(cfg.name) <= 200 and "/" not in cfg.name
           and cfg.name.isprintable(), "name", cfg.name,
           "a non-empty name of at most 200 printable characters, without '/'")
    from fedmpi.data.partition import SKEW_WITH_SHARDS

    part = cfg.data.partition
    _check(part.size_sigma == 0 or part.method != "shards", "data.partition.size_sigma",
           part.size_sigma, SKEW_WITH_SHARDS)
    c = cfg.clients
    if c.per_round is not None:
        _check(
            1 <= c.per_round <= c.num_clients,
            "clients.per_round",
            c.per_round,
            f"an integer in 1..clients.num_clients ({c.num_clients})",
        )
    from fedmpi.compressors import build_compressor
    from fedmpi.strategies import build_strategy

    build_strategy(cfg.strategy, field="strategy")
    links = {link: build_compressor(getattr(cfg.compression, link), field=f"compression.{link}")
             for link in ("uplink", "downlink")}
    if cfg.compression.client_rate is not None:
        from fedmpi.compressors import client_rate

        rule = client_rate.parse(cfg.compression.client_rate, num_clients=c.num_clients)
        client_rate.check_uplink(links["uplink"])
        _check(rule.seconds is None or cfg.link.kind != "none", "compression.client_rate.seconds",
               rule.seconds, client_rate.SECONDS_NEED_LINKS)
    poll = cfg.run.poll
    _check(poll.min_sleep_s <= poll.max_sleep_s, "run.poll.min_sleep_s", poll.min_sleep_s,
           f"a number <= run.poll.max_sleep_s ({poll.max_sleep_s:g})")
    if cfg.link.kind != "none":  # a bad trace or spread is found here, before training
        from fedmpi import linkmodel

        linkmodel.from_config(cfg.link, cfg.seed, cfg.clients.num_clients)
    fail_at = cfg.run.fail_at or {}
    for key in ("rank", "round"):
        value = fail_at.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            _check(0 <= value <= MAX_INT32, f"run.fail_at.{key}", value,
                   f"an integer in 0..{MAX_INT32}")
    if cfg.data.dataset == "cifar10" and cfg.data.path:
        path = Path(os.path.expandvars(os.path.expanduser(cfg.data.path)))
        _check(path.exists(), "data.path", cfg.data.path, "an existing CIFAR-10 archive or directory")
    try:  # the result file stores it as JSON: a YAML date or binary must not fail there
        json.dumps(cfg.to_dict(), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError("config", str(exc), "plain values (strings, finite numbers, booleans, "
                          "lists and mappings with string keys)") from None
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


# ----------------------------------------------------------------------------- size limits
#
# A YAML alias bomb (`b: &b [*a, *a, ...]`, nine levels) is 300 bytes of text that
# expands to 9**9 list items: anything that walks the value (repr, deepcopy, json)
# never returns. So the document is measured as the tree it stands for, aliases
# expanded, with work bounded by the limits themselves, before anything else reads it.

MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes; a sweep a few kilobytes
MAX_NODES = 100_000  # scalars + lists + mappings once aliases are expanded
MAX_DEPTH = 32  # nesting levels (the deepest real key, compression.uplink.0.prune.rate, has 6)


def _measure(root: Any, children, where: str, value: Any) -> None:
    """Raise ConfigError if the tree at `root`, shared subtrees counted at every use,
    has more than MAX_NODES nodes or more than MAX_DEPTH levels (a cycle has infinitely
    many). Each distinct node is expanded once, so the work is O(MAX_NODES)."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    distinct = 0
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]

    def too_deep() -> ConfigError:
        return ConfigError(where, value, f"at most {MAX_DEPTH} levels of nesting "
                           "(no recursive YAML aliases)")

    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            kids = children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if size[key] > MAX_NODES:
                raise ConfigError(where, value, f"at most {MAX_NODES} values once YAML "
                                  "aliases (*name) are expanded")
            continue
        if key in size:
            if depth - 1 + height[key] > MAX_DEPTH:
                raise too_deep()
            continue
        if depth > MAX_DEPTH:
            raise too_deep()
        distinct += 1
        if distinct > MAX_NODES:
            raise ConfigError(where, value, f"at most {MAX_NODES} values")
        stack.append((node, depth, True))
        stack.extend((k, depth + 1, False) for k in children(node))


def _data_children(obj: Any) -> list:
    if isinstance(obj, dict):
        return [x for kv in obj.items() for x in kv]
    if isinstance(obj, (list, tuple)):
        return list(obj)
    return []


def _node_children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_size(raw: Any, where: str = "config") -> None:
    """Refuse plain data (parsed YAML or JSON) too large or deep to be a configuration."""
    _measure(raw, _data_children, where, f"<{type(raw).__name__}>")


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing (PyYAML recurses per level)."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooDeep(Exception):
    pass


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One line: where and what (PyYAML's own message quotes the text over several)."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"line {line}, column {column}: character #x{exc.character:04x} is not allowed"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) \
        or (str(exc).splitlines() or ["?"])[0]
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return clip(f"{at}{problem}", 200)


def parse_yaml(text: str, where: str, value: Any) -> Any:
    """YAML text -> plain data; ConfigError (one line, naming `where`) on anything wrong.

    The node graph is measured before it is turned into Python objects: merge keys
    (`<<: *a`) copy entries during construction, so a bomb made of them would blow up
    in PyYAML itself.
    """
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, _node_children, where, value)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        raise ConfigError(where, value, f"valid YAML ({_yaml_problem(exc, text)})") from None
    except (_TooDeep, RecursionError):
        raise ConfigError(where, value, f"valid YAML with at most {MAX_DEPTH} levels of "
                          "nesting") from None
    except ValueError as exc:  # Python refuses integers of more than 4300 digits
        why = "an integer of more than 4300 digits" if "digits" in str(exc) else clip(str(exc), 200)
        raise ConfigError(where, value, f"valid YAML values (found {why})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, where: str = "config") -> tuple[str, Any]:
    """(text, data) of a YAML file, refusing missing, huge, binary or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(where, str(path), "an existing YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(where, str(path), f"a readable YAML file ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(where, str(path), f"a YAML file of at most {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(where, str(path), f"a UTF-8 text file (byte {exc.start} is not "
                          "UTF-8: is it a binary file?)") from None
    return text, parse_yaml(text, where, str(path))


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


_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so `0.5`, `true`, `[1, 2]` work)."""
    if "=" not in text:
        raise ConfigError("--set", text, "dotted.key=value, e.g. train.lr=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not _KEY.fullmatch(key):
        raise ConfigError("--set", text, "dotted.key=value with a key such as train.lr or "
                          "compression.uplink.0.prune.rate")
    return key, parse_yaml(raw, f"--set {key}", raw)


def from_dict(raw: Any) -> Config:
    """Validated Config from plain data (a parsed YAML file, a sweep task, a stored JSON)."""
    check_size(raw)
    return validate(_build(Config, raw, ""))


def load(path: str | Path, overrides: list[str] = ()) -> tuple[Config, str]:
    """Read, override and validate a config file; returns the config and the text as given."""
    text, raw = read_yaml(path)
    if raw is None or raw == {}:
        raise ConfigError("config", str(path), "a YAML mapping of settings such as `name:` "
                          "and `rounds:` (this file sets nothing; start from "
                          "configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError("config", str(path), "a YAML mapping at the top level")
    for item in overrides:
        key, value = parse_override(item)
        set_path(raw, key, value)
    if overrides:
        text += "\n# overrides: " + " ".join(o.replace("\n", " ") for o in overrides) + "\n"
    return from_dict(raw), text
