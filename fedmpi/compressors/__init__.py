"""Compression methods behind one interface (see base.py); one file per method.

A method is chosen per link in config: `compression.uplink: {topk: {fraction: 0.01}}`,
or a list of stages for the paper's pipeline (`fedmpi.compress`).
"""

from fedmpi.compressors import stages  # noqa: F401
from fedmpi.compressors.base import REGISTRY, Compressor, Context, Fold, build_compressor

# One line per method (its file registers it under its key):
from fedmpi.compressors import stc  # noqa: F401
from fedmpi.compressors import fedzip  # noqa: F401
from fedmpi.compressors import powersgd  # noqa: F401
from fedmpi.compressors import efsignsgd  # noqa: F401
from fedmpi.compressors import qsgd  # noqa: F401
from fedmpi.compressors import signsgd  # noqa: F401
from fedmpi.compressors import terngrad  # noqa: F401
from fedmpi.compressors import randk  # noqa: F401
from fedmpi.compressors import randsign  # noqa: F401
from fedmpi.compressors import threshold  # noqa: F401
from fedmpi.compressors import topk  # noqa: F401

__all__ = ["REGISTRY", "Compressor", "Context", "Fold", "build_compressor"]
