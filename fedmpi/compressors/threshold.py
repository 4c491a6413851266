"""Threshold sparsification with error feedback.

Strom 2015, "Scalable Distributed DNN Training Using Commodity GPU Cloud Computing":
send only the entries whose magnitude reaches a fixed threshold tau and carry the
rest over to the next message in a residual.

What differs from the paper: Strom quantizes every sent entry to +-tau (one sign bit
next to its index) and keeps the remainder in the residual; here the entries are sent
as they are (float32), as in the threshold variants of top-k that followed, so one
message moves the whole of a large entry instead of tau of it per step. The message
is a round's model update (or the global update on the downlink), not a gradient
step; with `feedback: false` the small entries are simply dropped. How many entries
go depends on the data: tau is in the units of the update (learning rate x steps).

Payload: `positions.py` (per tensor the smallest of bitmap / delta / varint
positions + float32 values, zstd). The decoder also checks the rule itself: every
value it receives has |v| >= tau.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors import feedback, positions
from fedmpi.compressors.base import Compressor, Context, encoded, numel_of, register
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError


@register("threshold")
@dataclass(frozen=True, kw_only=True)
class Threshold(Compressor):
    tau: float = 0.001
    feedback: bool = True

    paper = ("Strom 2015, Scalable Distributed DNN Training Using Commodity GPU Cloud "
             "Computing")

    def check(self) -> None:
        if not 0.0 < self.tau < float(np.finfo(np.float32).max):
            raise BadParam("tau", self.tau, "a number > 0 (and below float32's largest)")

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.feedback

    @property
    def _tau(self) -> np.float32:
        # The rule is applied in float32 on both sides, so encoder and decoder agree
        # on an entry equal to tau.
        return np.float32(self.tau)

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        spec, x = positions.inputs(self, tensors, ctx)
        picks = []
        for name, _ in spec:
            f = x[name].reshape(-1)
            idx = np.flatnonzero(np.abs(f) >= self._tau)
            picks.append((idx, f[idx]))
        payload = positions.pack(self, spec, picks)
        recon = {name: positions.scatter(shape, idx, v)
                 for (name, shape), (idx, v) in zip(spec, picks)}
        if self.feedback:
            feedback.keep(ctx, x, recon)
        return encoded(payload, recon, sum(idx.size for idx, _ in picks))

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        picks = positions.unpack(self, payload, spec, sum(numel_of(spec)))
        for (name, _), (_, v) in zip(spec, picks):
            if v.size and not (np.abs(v) >= self._tau).all():
                raise WireFormatError(f"{name}: a value below the threshold {self.tau} "
                                      "(threshold sends only |v| >= tau)")
        return {name: positions.scatter(shape, idx, v)
                for (name, shape), (idx, v) in zip(spec, picks)}
