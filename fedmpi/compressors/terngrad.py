"""TernGrad: unbiased stochastic ternarization {-1, 0, +1} * scale, per bucket.

Wen, Xu, Yan, Wu, Wang, Chen, Li 2017, "TernGrad: Ternary gradients to reduce
communication in distributed deep learning" (NeurIPS). Per bucket v of `bucket`
consecutive entries of a tensor (the last one shorter), with s = max_i |v_i|:

    T(v_i) = s * sign(v_i) * b_i,   b_i ~ Bernoulli(|v_i| / s),

so E[T(v)] = v. The draws come from `ctx.rng(tensor index)` (pure in seed, round,
client, link). The reconstruction is exact: +-s or 0, s a float32 taken from the
input, so `Encoded.reconstructed` == decode bit for bit.

What differs from the paper: the scale is per bucket of `bucket` entries (the paper's
is per layer, shared across workers, and its gradients are first clipped to 2.5
standard deviations; neither is done here: a client's update is ternarized as it is,
and `bucket` >= a tensor's size gives the per-layer scale). A bucket of zeros
sends scale +0.0 and zero codes.

Payload (after the 12-byte method header, sections of base.Sections):
  [0] f32 per bucket: scale (finite, >= +0.0);
  [1] 2 bits per entry, all tensors in spec order, little-endian bit order, zero
      padding: 0 -> 0, 1 -> +scale, 2 -> -scale (3 is refused; so is a non-zero code in
      a bucket of scale 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_of
from fedmpi.compressors import coding
from fedmpi.compressors.base import (Compressor, Context, Sections, check_finite, encoded,
                                     numel_of, register)
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError

MAX_BUCKET = 1 << 24


def ternary_values(codes: np.ndarray, scale_per_entry: np.ndarray) -> np.ndarray:
    """Codes 0/1/2 -> 0 / +scale / -scale (float32): what both sides compute."""
    out = np.where(codes == 1, scale_per_entry, np.float32(0))
    return np.where(codes == 2, -scale_per_entry, out).astype(np.float32)


@register("terngrad")
@dataclass(frozen=True, kw_only=True)
class TernGrad(Compressor):
    """TernGrad with a max-|x| scale per bucket of `bucket` entries (see the module)."""

    bucket: int = 512

    paper = ("Wen, Xu, Yan, Wu, Wang, Chen, Li 2017, TernGrad: Ternary gradients to reduce "
             "communication in distributed deep learning")

    def check(self) -> None:
        if not 1 <= self.bucket <= MAX_BUCKET:
            raise BadParam("bucket", self.bucket, f"an integer in 1..{MAX_BUCKET}")

    def scales(self, flat: np.ndarray) -> np.ndarray:
        if flat.size == 0:
            return np.empty(0, np.float32)
        return np.maximum.reduceat(np.abs(flat), coding.bucket_starts(flat.size, self.bucket))

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        recon, scales, codes = {}, [], []
        for i, (name, x) in enumerate(tensors.items()):
            x = np.asarray(x, dtype=np.float32)
            flat = x.reshape(-1)
            sc = self.scales(flat)
            per = coding.per_entry(sc, flat.size, self.bucket)
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(per > 0, np.abs(flat.astype(np.float64)) / per, 0.0)
            keep = ctx.rng(i).random(flat.size) < p
            code = np.where(keep, np.where(flat < 0, 2, 1), 0).astype(np.uint8)
            recon[name] = ternary_values(code, per).reshape(x.shape)
            scales.append(sc)
            codes.append(code)
        codes = np.concatenate(codes) if codes else np.empty(0, np.uint8)
        payload = Sections().pack(self, spec_of(tensors), [
            ([np.concatenate(scales) if scales else np.empty(0, np.float32)], 4),
            ([coding.pack_bits(codes, 2)], 1)])
        return encoded(payload, recon, int(np.count_nonzero(codes)))

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        numels = numel_of(spec)
        total = sum(numels)
        nbs = [-(-n // self.bucket) for n in numels]
        scales, codes = Sections().unpack(self, payload, spec, [
            (4, 4 * sum(nbs)), (1, (2 * total + 7) // 8)])
        if scales.nbytes != 4 * sum(nbs):
            raise WireFormatError(f"terngrad: {scales.nbytes // 4} scales, expected {sum(nbs)}")
        scales = scales.view("<f4")
        if not np.isfinite(scales).all() or np.any(np.signbit(scales)):
            raise WireFormatError("terngrad: a bucket scale is not finite or is negative "
                                  "(scales are finite and >= +0.0)")
        codes = coding.unpack_bits(codes, total, 2, "terngrad codes")
        if np.any(codes == 3):
            raise WireFormatError("terngrad: code 3 (codes are 0, 1 = +scale, 2 = -scale)")
        out, e0, b0 = {}, 0, 0
        for (name, shape), n, nb in zip(spec, numels, nbs):
            per = coding.per_entry(scales[b0: b0 + nb], n, self.bucket)
            code = codes[e0: e0 + n]
            if np.any((code != 0) & (per == 0)):
                raise WireFormatError(f"terngrad: tensor {name!r} has a non-zero code in a "
                                      "bucket of scale 0")
            out[name] = ternary_values(code, per).reshape(shape)
            e0, b0 = e0 + n, b0 + nb
        return out
