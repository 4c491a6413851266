"""Sparse signSGD: the signs of a shared-seed random fraction of each tensor, majority vote.

Why it is here: signSGD with majority vote (`signsgd.py`; Bernstein et al. 2018, 2019) is
the zoo's most accurate method at CPU scale, but one bit per entry caps its uplink at
32x. Sending the signs of only a fraction f of the entries, at positions both sides draw
from the shared context (Stich, Cordonnier & Jaggi 2018's random-k with a shared seed:
positions never travel), costs f bits per entry: 32 / f x (f = 0.25 gives ~128x).
Sparsified signs with a majority vote are studied by Park & Lee 2023, "SparseSignSGD
with majority vote for communication-efficient distributed learning" (ISIT; top-k
positions, which must travel); the random shared-seed mask here is this suite's variant.

Per tensor of n entries, k = round(f * n) (at least 1) positions are drawn without
replacement from `ctx.rng(SALT, i)` (tensor i in spec order), a pure function of (seed,
round, client, link): each client votes on its own positions, so a round's clients cover
more of the model than one shared mask would. The client sends, per tensor, scale =
mean |x| over its k entries (float64, rounded once to float32) and one sign bit per drawn
entry (1 = negative; sign(0) = +1 as in signSGD); decoded, a drawn entry is +-scale and
every other entry is 0. With `vote: true` the server folds by signSGD's `MajorityVote`: an
entry a client did not draw is 0 in its decoded tensor, so that client abstains on it.

- `feedback: true` (error feedback, Karimireddy et al. 2019): the signs are taken of
  x + residual and residual <- (x + residual) - decoded, per (link, owner);
- `feedback: false`: the entries not drawn are dropped this round.

What differs from the papers: positions are random and shared (not top-k), drawn per
tensor, and the message is a round's model update rather than a gradient (so a scale
travels, as in `signsgd.py`).

Payload (after the 12-byte method header, plain `base.Sections`):
  [0] f32 per tensor: scale (finite, >= +0.0; +0.0 for a tensor whose drawn entries are
      all zero);
  [1] 1 bit per drawn entry, all tensors in spec order and each tensor's positions in
      increasing order, little-endian bit order, zero padding; a tensor of scale 0 has
      only 0 bits. Its length is fixed by the spec and f, and checked exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors import coding, feedback, positions
from fedmpi.compressors.base import Context, Fold, Sections, encoded, register
from fedmpi.compressors.randk import RandK
from fedmpi.compressors.signsgd import MajorityVote, tensor_scales
from fedmpi.wire import WireFormatError

SALT = 0x7273676E  # "rsgn": this method's draws, apart from random-k's on one ctx
SECTIONS = Sections()


@register("randsign")
@dataclass(frozen=True, kw_only=True)
class RandSign(RandK):
    """Signs of a shared-seed random fraction of the entries (see the module); the
    positions, `fraction` and `feedback` are random-k's."""

    fraction: float = 0.25
    feedback: bool = False
    vote: bool = True

    paper = ("Bernstein et al. 2018/2019, signSGD with majority vote; Stich et al. 2018, "
             "random-k with a shared seed; Park & Lee 2023, SparseSignSGD with majority vote")

    salt = SALT

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        spec, x = positions.inputs(self, tensors, ctx)
        idxs = self.draw(spec, ctx)
        recon, scales, bits, nnz = {}, [], [], 0
        for (name, shape), idx in zip(spec, idxs):
            v = x[name].reshape(-1)[idx]
            scale = np.float32(np.abs(v, dtype=np.float64).mean()) if v.size else np.float32(0)
            neg = (v < 0) & (scale > 0)
            recon[name] = positions.scatter(shape, idx, np.where(neg, -scale, scale)
                                            .astype(np.float32))
            nnz += idx.size if scale > 0 else 0
            scales.append(scale)
            bits.append(neg)
        payload = SECTIONS.pack(self, spec, [
            ([np.asarray(scales, "<f4")], 4),
            ([coding.pack_bits(np.concatenate(bits) if bits else np.empty(0, bool), 1)], 1)])
        if self.feedback:
            feedback.keep(ctx, x, recon)
        return encoded(payload, recon, nnz)

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        idxs = self.draw(spec, ctx)
        total = sum(idx.size for idx in idxs)
        scales, bits = SECTIONS.unpack(self, payload, spec, [(4, 4 * len(spec)),
                                                             (1, (total + 7) // 8)])
        scales = tensor_scales(self, scales, spec)
        neg = coding.unpack_bits(bits, total, 1, f"{self.name} sign bits").astype(bool)
        out, e0 = {}, 0
        for (name, shape), idx, scale in zip(spec, idxs, scales):
            t = neg[e0: e0 + idx.size]
            if idx.size == 0 and scale != 0:
                raise WireFormatError(f"{self.name}: empty tensor {name!r} has scale {scale}, "
                                      "expected +0.0")
            if scale == 0 and t.any():
                raise WireFormatError(f"{self.name}: tensor {name!r} of scale 0 has sign bits "
                                      "set")
            out[name] = positions.scatter(shape, idx, np.where(t, -scale, scale)
                                          .astype(np.float32))
            e0 += idx.size
        return out

    def fold(self, reference: Mapping[str, np.ndarray] | None) -> Fold | None:
        return MajorityVote(reference) if self.vote else None
