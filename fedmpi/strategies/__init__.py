"""Server strategies behind one interface (see base.py); one file per strategy.

Chosen in config: `strategy: fedavg` or `strategy: {fedadam: {lr: 0.01}}`.
"""

from fedmpi.strategies import fedavg  # noqa: F401  (one line per strategy: registers it)
from fedmpi.strategies import fedavgm  # noqa: F401
from fedmpi.strategies import fedadam  # noqa: F401
from fedmpi.strategies import fedyogi  # noqa: F401
from fedmpi.strategies import fedprox  # noqa: F401
from fedmpi.strategies.base import REGISTRY, RunInfo, Strategy, build_strategy

__all__ = ["REGISTRY", "RunInfo", "Strategy", "build_strategy"]
