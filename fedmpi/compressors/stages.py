"""Today's stage pipeline (prune, quantize, memory, sparse, zstd) as a Compressor.

Unchanged on the wire: the payload, the codec id and the fast paths (fused numba
codec, on-device torch codec) are those of `fedmpi.compress.Pipeline`; this
adapter only maps the interface. Its error-feedback residual is `ctx.state`
(the pipeline's `Memory` works on that very dict).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from fedmpi.compress import Memory, Pipeline, build_pipeline
from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors.base import Compressor, Context

PRUNE_RATE = "prune_rate"  # the client setting that overrides the prune stage's rate


class StagePipeline(Compressor):
    """A `compression.uplink` / `downlink` given as a list of stages."""

    key = "stages"
    paper = ("Sun, Li, Moreno et al. 2023, Federated learning compression designed for "
             "lightweight communications (arXiv 2310.14693): magnitude pruning + coding")

    def __init__(self, pipeline: Pipeline, device=None):
        object.__setattr__(self, "pipeline", pipeline)
        object.__setattr__(self, "device", device)  # torch device to decode to, or None
        object.__setattr__(self, "_by_rate", {})  # prune rate -> pipeline (client_rate)

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
        return self.for_rate(ctx.settings.get(PRUNE_RATE)).encode(tensors, memory=memory)

    def for_rate(self, rate: float | None) -> Pipeline:
        """The pipeline with its prune stage at `rate` (a client's `prune_rate` setting,
        see fedmpi.compressors.client_rate), or the configured one for None.

        The codec id stays the configured pipeline's: the decoder does not need the
        rate (the sparse layout carries every kept position), so one decoder reads
        the messages of every client.
        """
        if rate is None:
            return self.pipeline
        pipe = self._by_rate.get(rate)
        if pipe is None:
            pruner = self.pipeline.pruner
            if pruner is None:
                raise ValueError(f"client setting {PRUNE_RATE} = {rate} for pipeline "
                                 f"{self.name}, which has no prune stage")
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"client setting {PRUNE_RATE} = {rate}: expected a rate in "
                                 "[0, 1)")
            pipe = Pipeline([dataclasses.replace(s, rate=float(rate)) if s is pruner else s
                             for s in self.pipeline.stages])
            pipe.codec_id = self.pipeline.codec_id
            self._by_rate[rate] = pipe
        return pipe

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        return self.pipeline.decode(payload, spec, device=self.device)
