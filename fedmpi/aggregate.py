"""Streaming FedAvg: fold each client's tensors in as they arrive.

The server never holds all updates of a round at once, only a float64 running
sum. Summation order is the caller's choice: in deterministic mode the server
receives clients in a fixed order, so the float64 sums (and the float32 result)
are bit-identical whatever the number of worker ranks.

The tensors may be numpy arrays or torch tensors (a server with a GPU decodes
updates there and aggregates on the device); the arithmetic is the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class StreamingFedAvg:
    """Sample-weighted average of client tensors, optionally around a reference.

    With `reference` (the model the clients started from) the inputs are
    updates Δ_i and the result is reference + Σ p_i Δ_i; without it the inputs
    are weights and the result is Σ p_i w_i, with p_i = n_i / Σ n.
    """

    def __init__(self, reference: Mapping[str, np.ndarray] | None = None):
        self.reference = reference
        self.sums: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"client weight must be > 0, got {weight}")
        if self.sums and set(tensors) != set(self.sums):
            raise ValueError("client tensors do not match the tensors aggregated so far")
        for name, value in tensors.items():
            acc = self.sums.get(name)
            if acc is None:
                self.sums[name] = _f64(value) * weight
            else:
                acc += _f64(value) * weight
        self.total_weight += weight
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        if not self.count:
            raise ValueError("no client tensors were aggregated")
        out = {}
        for name, acc in self.sums.items():
            mean = acc / self.total_weight
            if self.reference is not None:
                mean = _f64(self.reference[name]) + mean
            out[name] = mean.astype(np.float32) if isinstance(mean, np.ndarray) else mean.float()
        return out


def _f64(value):
    """float64 copy of a numpy array or torch tensor (on its device)."""
    return value.astype(np.float64) if isinstance(value, np.ndarray) else value.double()
