"""Today's stage pipeline (prune, quantize, memory, sparse, zstd) as a Compressor.

Unchanged on the wire: the payload, the codec id and the fast paths (fused numba
codec, on-device torch codec) are those of `fedmpi.compress.Pipeline`; this
adapter only maps the interface. Its error-feedback residual is `ctx.state`
(the pipeline's `Memory` works on that very dict).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedmpi.compress import Memory, Pipeline, build_pipeline
from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors.base import Compressor, Context


class StagePipeline(Compressor):
    """A `compression.uplink` / `downlink` given as a list of stages."""

    key = "stages"
    paper = ("Sun, Li, Moreno et al. 2023, Federated learning compression designed for "
             "lightweight communications (arXiv 2310.14693): magnitude pruning + coding")

    def __init__(self, pipeline: Pipeline, device=None):
        object.__setattr__(self, "pipeline", pipeline)
        object.__setattr__(self, "device", device)  # torch device to decode to, or None

    @classmethod
    def from_config(cls, stages: list | None, *, field: str, device=None) -> "StagePipeline":
        return cls(build_pipeline(stages, field=field), device)

    def __repr__(self) -> str:
        return f"StagePipeline({self.pipeline!r})"

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.pipeline.feedback

    @property
    def lossy(self) -> bool:
        return self.pipeline.lossy

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def codec_id(self) -> int:
        return self.pipeline.codec_id

    def spec(self) -> dict:
        return {"stages": [s.spec() for s in self.pipeline.stages]}

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        memory = None
        if self.pipeline.feedback:
            memory = Memory()
            memory.residual = ctx.state  # the pipeline updates the caller's dict in place
        return self.pipeline.encode(tensors, memory=memory)

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        return self.pipeline.decode(payload, spec, device=self.device)
