"""Server optimizers: strategies that keep per-tensor buffers between rounds.

FedAvgM keeps a momentum buffer, FedAdam and FedYogi a first and a second moment
(`slots`). What they share lives here, so each strategy file holds only its
update rule:

- the buffers, float64 (the server's running state should not lose bits every
  round), created on the first round from the shape of the mean update;
- `state()` / `load()`: the buffers as `"<slot>/<tensor>"` arrays (e.g.
  `"m/layer1.weight"`), copied both ways, so a checkpoint taken and loaded
  continues bit-identically; `load` refuses an entry of an unknown slot, slots
  that disagree on tensors or shapes, and non-float arrays;
- the check against the model: a strategy never sees the model before a round,
  so a loaded state whose tensors or shapes differ from the model's is refused
  by `begin` of the next round, before any update is folded in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedmpi.strategies.base import Strategy


@dataclass(kw_only=True)
class ServerOptimizer(Strategy):
    slots: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._buffers: dict[str, dict[str, np.ndarray]] = {}  # slot -> tensor -> float64

    # ------------------------------------------------------------ the update rule

    def initial(self, slot: str, shape: tuple[int, ...]) -> np.ndarray:
        """The value of a slot before the first round (zeros unless overridden)."""
        return np.zeros(shape, dtype=np.float64)

    def buffers(self, delta: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """The slots' buffers for `delta`'s tensors, created on the first round."""
        if not self._buffers:
            self._buffers = {s: {k: self.initial(s, np.shape(v)) for k, v in delta.items()}
                             for s in self.slots}
        self._check_model({k: np.shape(v) for k, v in delta.items()})
        return self._buffers

    # ------------------------------------------------------------ checkpoints

    def begin(self, round: int, reference: Mapping[str, np.ndarray], fold=None) -> None:
        if self._buffers:  # a loaded state must fit the model before updates arrive
            self._check_model({k: tuple(v.shape) for k, v in reference.items()})
        super().begin(round, reference, fold)

    def state(self) -> dict[str, np.ndarray]:
        return {f"{s}/{k}": v.copy() for s, bufs in self._buffers.items()
                for k, v in bufs.items()}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        where = f"strategy {self.key}: checkpoint state"
        expected = " and ".join(f"'{s}/<tensor>'" for s in self.slots)
        loaded: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        for name, value in state.items():
            slot, sep, tensor = str(name).partition("/")
            if not sep or slot not in loaded:
                raise ValueError(f"{where} has an unknown entry {name!r}; expected {expected}")
            arr = np.asarray(value)
            if arr.dtype not in (np.float32, np.float64):
                raise ValueError(f"{where}: {name!r} has dtype {arr.dtype}; expected "
                                 "float32 or float64")
            loaded[slot][tensor] = arr.astype(np.float64, copy=True)
        if not state:  # a checkpoint taken before the first round: start afresh
            self._buffers = {}
            return
        first = self.slots[0]
        shapes = {k: v.shape for k, v in loaded[first].items()}
        for slot in self.slots[1:]:
            other = {k: v.shape for k, v in loaded[slot].items()}
            if other != shapes:
                raise ValueError(f"{where}: slots {first!r} and {slot!r} differ "
                                 f"({_diff(shapes, other)})")
        self._buffers = loaded

    def _check_model(self, shapes: Mapping[str, tuple]) -> None:
        ours = {k: v.shape for k, v in self._buffers[self.slots[0]].items()}
        if ours != dict(shapes):
            raise ValueError(f"strategy {self.key}: its state does not fit the model "
                             f"({_diff(ours, shapes, 'state', 'model')})")


def _diff(a: Mapping[str, tuple], b: Mapping[str, tuple], an: str = "first",
          bn: str = "second") -> str:
    """The first few differences between two {tensor: shape} maps, for an error message."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        return f"tensors only in the {an}: {only_a[:4]}, only in the {bn}: {only_b[:4]}"
    bad = [k for k in a if tuple(a[k]) != tuple(b[k])][:4]
    return "shapes differ: " + ", ".join(f"{k} {tuple(a[k])} vs {tuple(b[k])}" for k in bad)
