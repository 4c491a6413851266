"""FedYogi (Reddi et al. 2021, Adaptive Federated Optimization): Yogi on the server; shared
rule in adaptive.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.strategies.adaptive import Adaptive
from fedmpi.strategies.base import register


@register("fedyogi")
@dataclass(kw_only=True)
class FedYogi(Adaptive):
    def second_moment(self, v, d2):
        # v ← v − (1 − β2)·Δ²·sign(v − Δ²): moves v towards Δ² by a step that does not
        # scale with v, so a large v shrinks slowly (Adam forgets it geometrically).
        return v - (1 - self.beta2) * d2 * np.sign(v - d2)
