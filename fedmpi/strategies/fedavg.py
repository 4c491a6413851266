"""FedAvg (McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from
Decentralized Data): the sample-weighted mean of the clients' models or updates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.strategies.base import Strategy, register


@register("fedavg")
@dataclass(kw_only=True)
class FedAvg(Strategy):
    paper = ("McMahan et al. 2017, Communication-Efficient Learning of Deep Networks from "
             "Decentralized Data")

    def finish(self) -> dict[str, np.ndarray]:
        # The running sum's own result, float32 on the device it was summed on: the same
        # bits as before strategies existed (deterministic mode compares bits).
        return self.sum.result()

    def apply(self, reference, delta):
        return {k: reference[k] + delta[k] for k in reference}
