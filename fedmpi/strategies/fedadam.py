"""FedAdam (Reddi et al. 2021, Adaptive Federated Optimization): Adam on the server, with
the mean client update as its pseudo-gradient; shared rule in adaptive.py."""

from __future__ import annotations

from dataclasses import dataclass

from fedmpi.strategies.adaptive import Adaptive
from fedmpi.strategies.base import register


@register("fedadam")
@dataclass(kw_only=True)
class FedAdam(Adaptive):
    def second_moment(self, v, d2):
        # v ← β2·v + (1 − β2)·Δ²: an exponential average of Δ².
        return self.beta2 * v + (1 - self.beta2) * d2
