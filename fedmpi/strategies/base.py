"""The Strategy interface: how the server picks clients and turns updates into a model.

    strategy.setup(info)                         # once, on every rank
    for each round r:
        picks = strategy.select(r)               # [(client, {setting: float})], server
        strategy.begin(r, reference, fold)       # reference: the model clients start from
        strategy.fold(client, tensors, weight)   # as each decoded update arrives
        new_global = strategy.finish()
    strategy.state() / strategy.load(state)      # checkpoints (named float arrays)

Why streaming: the server never holds a round's updates, only a running sum
(`fedmpi.aggregate.StreamingFedAvg`, or a compressor's own `Fold`, e.g. signSGD's
majority vote). A strategy changes what happens around that sum: FedAvgM and
FedAdam/FedYogi apply the mean update with a server optimizer; FedProx adds a
proximal term on the clients, through per-client settings that travel in ASSIGN
(`client_settings` names them; `local_options` turns them into training options
on the worker). Settings that are not the strategy's own (a compression rule's, such as
`compression.client_rate`'s per-client prune rate) join through `add_settings`, so that
they work with every strategy.

Adding a strategy = one file with a dataclass subclass decorated with
`@register("<key>")`, one import line in `strategies/__init__.py`, and its test.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedmpi.aggregate import StreamingFedAvg
from fedmpi.errors import ConfigError
from fedmpi.params import instantiate, registrar

REGISTRY: dict[str, type["Strategy"]] = {}


register = registrar(REGISTRY, "strategy")


@dataclass(frozen=True)
class RunInfo:
    """What every rank knows about the run (from the config and the data split)."""

    seed: int
    num_clients: int
    per_round: int
    samples: np.ndarray  # training samples per client
    target: str  # "weights" | "update": what clients send


@dataclass(kw_only=True)
class Strategy(ABC):
    """A server strategy; its dataclass fields are its config parameters."""

    key: ClassVar[str] = "?"
    paper: ClassVar[str] = ""
    choices: ClassVar[dict[str, tuple]] = {}
    client_settings: ClassVar[tuple[str, ...]] = ()  # per-client floats carried in ASSIGN

    info: RunInfo | None = field(default=None, init=False, repr=False, compare=False)
    # settings contributed from outside the strategy (a compression rule), see add_settings
    extra: list = field(default_factory=list, init=False, repr=False, compare=False)

    def check(self) -> None:
        """Raise fedmpi.params.BadParam for a parameter out of range."""

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    # ------------------------------------------------------------ every rank

    def setup(self, info: RunInfo) -> None:
        self.info = info

    def add_settings(self, names: tuple[str, ...], values) -> None:
        """Carry more per-client settings in ASSIGN, whatever the strategy.

        Why here: a compression rule (`compression.client_rate`) gives each client its
        own value, and must work with every strategy without editing each one. `names`
        are appended to this instance's `client_settings` (both ends build the same
        list from the config); `values(round, client)` returns them, merged into
        `all_settings`. A strategy that overrides `select` must use `all_settings`.
        """
        clash = set(names) & set(self.client_settings)
        if clash:
            raise ValueError(f"strategy {self.key} already carries the settings {sorted(clash)}")
        self.client_settings = (*self.client_settings, *names)
        self.extra.append(values)

    def all_settings(self, round: int, client: int) -> dict[str, float]:
        """The strategy's own settings of a client, plus those added by `add_settings`."""
        out = dict(self.settings(round, client))
        for values in self.extra:
            out.update(values(round, client))
        return out

    def local_options(self, settings: Mapping[str, float]) -> dict:
        """Worker side: extra `fedmpi.train.train_local` options from a client's settings."""
        return {}

    # ------------------------------------------------------------ server

    def select(self, round: int) -> list[tuple[int, dict[str, float]]]:
        """The clients of `round`, each with its settings (names: `client_settings`).

        Default: a uniform sample without replacement, a pure function of
        (seed, round), never of the rank layout.
        """
        from fedmpi.experiment import sample_clients

        info = self.info
        picked = sample_clients(info.seed, round, info.num_clients, info.per_round)
        return [(int(c), self.all_settings(round, int(c))) for c in picked]

    def settings(self, round: int, client: int) -> dict[str, float]:
        return {}

    def begin(self, round: int, reference: Mapping[str, np.ndarray], fold=None) -> None:
        """Start a round; `fold` is the compressor's own aggregation, if it has one."""
        self.round = round
        self.reference = reference
        if fold is not None:
            self.sum = fold
        else:  # a weighted mean of updates around the reference, or of weights
            self.sum = StreamingFedAvg(reference if self.info.target == "update" else None)

    def fold(self, client: int, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        self.sum.add(tensors, weight)

    def finish(self) -> dict[str, np.ndarray]:
        """The new global model: `apply` of the mean update to the reference."""
        mean = self.sum.result()
        ref = {k: _host(v) for k, v in self.reference.items()}
        delta = {k: _host(v).astype(np.float64) - ref[k] for k, v in mean.items()}
        out = self.apply(ref, delta)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    def apply(self, reference: dict[str, np.ndarray], delta: dict[str, np.ndarray]
              ) -> dict[str, np.ndarray]:
        """reference + the server step for the mean update `delta` (float64 arrays)."""
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """What a checkpoint must hold to continue bit-identically (server optimizer)."""
        return {}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"strategy {self.key} keeps no state, the checkpoint has "
                             f"{sorted(state)[:4]}")


def build_strategy(raw: object, *, field: str = "strategy") -> Strategy:
    """A strategy from config: a name (`fedavg`) or a one-key mapping `{fedadam: {lr: 0.01}}`."""
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(field, raw, "a strategy name or a one-key mapping {strategy: {params}} "
                          f"with strategy in {', '.join(sorted(REGISTRY))}")
    (name, params), = raw.items()
    if name not in REGISTRY:
        raise ConfigError(field, name, f"one of the strategies {', '.join(sorted(REGISTRY))}")
    return instantiate(REGISTRY[name], params, f"{field}.{name}")


def _host(value) -> np.ndarray:
    """A numpy float64 array of a numpy array or a torch tensor (on any device)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
