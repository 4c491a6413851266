"""Communication compression: a GRACE-like pipeline of stages built from config.

    pipe = build_pipeline(cfg.compression.uplink, field="compression.uplink")
    enc = pipe.encode(state, memory=mem)           # Encoded: payload + accounting
    buf = wire.frame(Kind.UPDATE, round=r, client=c, payload=enc.payload,
                     codec_id=pipe.codec_id, n_tensors=len(state))
    state2 = pipe.decode(payload, spec)            # == enc.reconstructed, bit for bit

Stages (one file each, file name = config key): prune, quantize, memory, sparse, zstd.
"""

from fedmpi.compress import memory, prune, quantize, sparse, zstd  # noqa: F401  (registers)
from fedmpi.compress.base import REGISTRY, build
from fedmpi.compress.memory import Memory
from fedmpi.compress.pipeline import Encoded, ModelSpec, Pipeline, build_pipeline, spec_of

__all__ = ["REGISTRY", "Encoded", "Memory", "ModelSpec", "Pipeline", "build", "build_pipeline",
           "spec_of"]
