"""Adaptive federated optimization (Reddi et al. 2021, Adaptive Federated Optimization,
Algorithm 2): what FedAdam and FedYogi share; each of them only says how the second
moment moves (`second_moment`).

Per round, with Δ the mean client update (sample-weighted here; the paper averages
uniformly over the sampled clients, which is the same for equal client sizes):

    m ← β1·m + (1 − β1)·Δ
    v ← second_moment(v, Δ²)
    x ← x + lr · m / (√v + τ)

Initialisation as in the paper: m = 0 and v = τ² (its Algorithm 2 asks for
v₋₁ ≥ τ²), so the first step is bounded by lr·(1 − β1)·|Δ| / (√v + τ) and no
bias correction is applied (the paper has none). m and v are float64 and are
the checkpoint state (`m/<tensor>`, `v/<tensor>`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.params import BadParam
from fedmpi.strategies.optimizer import ServerOptimizer


@dataclass(kw_only=True)
class Adaptive(ServerOptimizer):
    paper = "Reddi et al. 2021, Adaptive Federated Optimization"
    slots = ("m", "v")

    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 0.001

    def check(self) -> None:
        if not 0 < self.lr <= 100:
            raise BadParam("lr", self.lr, "a number in (0, 100]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise BadParam(name, getattr(self, name), "a number in [0, 1)")
        if not 0 < self.tau <= 1:
            raise BadParam("tau", self.tau, "a number in (0, 1]")

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """The new second moment from the old one and the squared mean update."""
        raise NotImplementedError

    def initial(self, slot, shape):
        return np.full(shape, self.tau**2) if slot == "v" else np.zeros(shape)

    def apply(self, reference, delta):
        bufs = self.buffers(delta)
        m, v = bufs["m"], bufs["v"]
        out = {}
        for k, d in delta.items():
            m[k] = self.beta1 * m[k] + (1 - self.beta1) * d
            v[k] = self.second_moment(v[k], d * d)
            out[k] = reference[k] + self.lr * m[k] / (np.sqrt(v[k]) + self.tau)
        return out
