"""FedProx (Li et al. 2020, Federated Optimization in Heterogeneous Networks): FedAvg's
aggregation on the server, and on the clients a proximal term (mu/2)·||w − w_global||²
added to the local loss, which keeps a client near the model it received when its
data differ from the others'.

The server sends mu to every client as a per-client setting in ASSIGN (`prox_mu`),
so the worker needs no strategy config of its own; `local_options` turns it into
`fedmpi.train.train_local(prox_mu=...)`. mu = 0 trains exactly as FedAvg.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fedmpi.params import BadParam
from fedmpi.strategies.base import register
from fedmpi.strategies.fedavg import FedAvg


@register("fedprox")
@dataclass(kw_only=True)
class FedProx(FedAvg):
    paper = "Li et al. 2020, Federated Optimization in Heterogeneous Networks"
    client_settings = ("prox_mu",)

    mu: float = 0.01

    def check(self) -> None:
        if not 0 <= self.mu <= 100:
            raise BadParam("mu", self.mu, "a number in [0, 100]")

    def settings(self, round: int, client: int) -> dict[str, float]:
        return {"prox_mu": self.mu}

    def local_options(self, settings: Mapping[str, float]) -> dict:
        mu = settings.get("prox_mu")
        if mu is None:
            raise ValueError(f"strategy fedprox: the client settings lack 'prox_mu' "
                             f"(got {sorted(settings)})")
        mu = float(mu)
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"strategy fedprox: client setting prox_mu = {mu}; "
                             "expected a finite number >= 0")
        return {"prox_mu": mu}
