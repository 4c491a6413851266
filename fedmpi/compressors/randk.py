"""Random-k sparsification with a shared seed: the positions never travel.

Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory" (rand-k with error
feedback); Konečný & Richtárik 2018, "Randomized Distributed Mean Estimation:
Accuracy vs. Communication" (random sparsification scaled by n/k: an unbiased
estimate of the vector).

Per tensor, k = round(fraction * n) (at least 1) positions are drawn without
replacement from `ctx.rng(SALT, i)` (tensor i in spec order): a pure function of
(seed, round, client, link), so the receiver draws the very same positions and only
the k values are sent.

- `feedback: true` (Stich et al.): the values of x + residual are sent as they are
  and the rest becomes the next residual;
- `feedback: false` (Konečný & Richtárik): the values are sent multiplied by n / k
  (in float32), so E[decoded] = x; the encoder refuses an update whose scaled values
  would overflow float32.

What differs from the papers: the message is a round's model update (or the global
update on the downlink), not a gradient step; the positions are drawn per tensor
rather than over the flattened model, so every tensor keeps its share.

Payload (after the 12-byte method header, `base.Sections`, zstd container): one
section of float32 values (item 4), the k values of every tensor in spec order,
each tensor's in increasing position order. Its length is fixed by the spec and the
fraction, and checked exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors import feedback, positions
from fedmpi.compressors.base import Compressor, Context, encoded, register
from fedmpi.compressors.topk import k_of
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError

SALT = 0x72616E6B  # "rank": this method's draws, apart from other methods' on one ctx


def shared_positions(spec: ModelSpec, fraction: float, ctx: Context, salt: int
                     ) -> list[np.ndarray]:
    """Per tensor i, k = round(fraction * n) (at least 1) sorted positions drawn without
    replacement from `ctx.rng(salt, i)`: the receiver draws the same, so none travel."""
    out = []
    for i, (_, shape) in enumerate(spec):
        n = int(np.prod(shape, dtype=np.int64))
        k = k_of(n, fraction, None)
        idx = ctx.rng(salt, i).choice(n, size=k, replace=False, shuffle=False) if k else \
            np.zeros(0, np.int64)
        out.append(np.sort(idx.astype(np.int64, copy=False)))
    return out


@register("randk")
@dataclass(frozen=True, kw_only=True)
class RandK(Compressor):
    fraction: float = 0.01
    feedback: bool = True

    paper = ("Stich et al. 2018, Sparsified SGD with Memory; Konečný & Richtárik 2018, "
             "Randomized Distributed Mean Estimation")

    def check(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise BadParam("fraction", self.fraction, "a number in (0, 1]")

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.feedback

    salt = SALT  # a subclass draws its own positions (randsign.py)

    def draw(self, spec: ModelSpec, ctx: Context) -> list[np.ndarray]:
        """Per tensor the sorted positions to send: the same on both sides of a link."""
        return shared_positions(spec, self.fraction, ctx, self.salt)

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        spec, x = positions.inputs(self, tensors, ctx)
        idxs = self.draw(spec, ctx)
        values = []
        for (name, _), idx in zip(spec, idxs):
            v = x[name].reshape(-1)[idx]
            if not self.feedback and idx.size:
                with np.errstate(over="ignore"):  # refused just below, with the tensor's name
                    v = v * np.float32(x[name].size / idx.size)
                if not np.isfinite(v).all():
                    raise ValueError(f"tensor {name!r}: values scaled by n/k = "
                                     f"{x[name].size / idx.size:g} overflow float32 "
                                     f"({self.name} without feedback)")
            values.append(v.astype("<f4", copy=False))
        payload = positions.SECTIONS.pack(self, spec, [(values, 4)])
        recon = {name: positions.scatter(shape, idx, v)
                 for (name, shape), idx, v in zip(spec, idxs, values)}
        if self.feedback:
            feedback.keep(ctx, x, recon)
        return encoded(payload, recon, sum(idx.size for idx in idxs))

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        idxs = self.draw(spec, ctx)
        total = sum(idx.size for idx in idxs)
        (values,) = positions.SECTIONS.unpack(self, payload, spec, [(4, 4 * total)])
        if values.nbytes != 4 * total:
            raise WireFormatError(f"{values.nbytes} value bytes, random-k sends {total} "
                                  "float32 values for this model")
        values = values.view("<f4")
        if not np.isfinite(values).all():
            raise WireFormatError("a value is NaN or inf (never sent)")
        out, pos = {}, 0
        for (name, shape), idx in zip(spec, idxs):
            out[name] = positions.scatter(shape, idx, values[pos: pos + idx.size])
            pos += idx.size
        return out
