"""FedAvgM (Hsu, Qi & Brown 2019, Measuring the Effects of Non-Identical Data Distribution
for Federated Visual Classification): FedAvg with server momentum.

Each round the mean client update Δ (sample-weighted, as FedAvg's) feeds a momentum
buffer on the server, v ← momentum·v + Δ, and the model moves by x ← x + lr·v. With
momentum 0 and lr 1 it is FedAvg. The buffer (float64, zero before the first round)
is the strategy's checkpoint state (`v/<tensor>`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmpi.params import BadParam
from fedmpi.strategies.base import register
from fedmpi.strategies.optimizer import ServerOptimizer


@register("fedavgm")
@dataclass(kw_only=True)
class FedAvgM(ServerOptimizer):
    paper = ("Hsu et al. 2019, Measuring the Effects of Non-Identical Data Distribution "
             "for Federated Visual Classification")
    slots = ("v",)

    lr: float = 1.0
    momentum: float = 0.9

    def check(self) -> None:
        if not 0 < self.lr <= 100:
            raise BadParam("lr", self.lr, "a number in (0, 100]")
        if not 0 <= self.momentum < 1:
            raise BadParam("momentum", self.momentum, "a number in [0, 1)")

    def apply(self, reference, delta):
        (v,) = self.buffers(delta).values()
        out = {}
        for k, d in delta.items():
            v[k] = self.momentum * v[k] + d
            out[k] = reference[k] + self.lr * v[k]
        return out
