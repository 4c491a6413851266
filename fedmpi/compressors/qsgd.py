"""QSGD: unbiased stochastic quantization of each bucket to `levels` levels of its norm.

Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, "QSGD: Communication-efficient SGD via
gradient quantization and encoding" (NeurIPS). Per bucket v of `bucket` consecutive
entries of a tensor (the last one shorter), with s = levels:

    Q(v_i) = ||v||_2 * sign(v_i) * l_i / s,
    l_i = floor(r_i) + Bernoulli(r_i - floor(r_i)),   r_i = s |v_i| / ||v||_2,

so E[Q(v)] = v and E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2 with n the
bucket size (the paper's Lemma 3.1). The Bernoulli draws come from
`ctx.rng(tensor index)`: a pure function of (seed, round, client, link), so a run
is reproducible and another round or client rounds differently.

What differs from the paper:
- the norm travels as float32, rounded *up* (so r_i <= s whatever the rounding);
  a bucket whose norm exceeds float32 (entries near 1e19 and above) is refused
  with ValueError instead of being sent;
- coding (`coding`): the paper codes the positions of the non-zero levels and the
  levels with Elias recursive (omega) codes and a sign bit each. Here, per tensor,
  the non-zero entries in order, each as (d, l) with d = its distance from the
  previous one (from position -1 for the first) and l its level, both >= 1:
  `elias` = Elias gamma codes (the classic size, plus at most one byte of padding:
  stored as two streams, see coding.py), `varint` = LEB128 bytes (byte-aligned, cheaper to decode, larger);
  the signs are a bit section of their own, one bit per non-zero (1 = negative);
- reconstruction: float64 norm * l / s rounded once to float32, the same function
  on both sides (`Encoded.reconstructed` == decode, bit for bit); unbiased up to
  that rounding (half a float32 ulp).

Payload (after the 12-byte method header, sections of base.Sections):
  [0] u64 per tensor: number of non-zero levels;  [1] f32 per bucket: norm (>= +0);
  [2] sign bits, one per non-zero, little-endian bit order, zero padding;
  elias: [3] unary length parts, [4] mantissa bits (both little-endian bit order);
  varint: [3] the varints d_0, l_0, d_1, l_1, ... of every tensor in spec order.
`Encoded.nnz` is the number of non-zero levels sent.
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

MAX_LEVELS = 1 << 16
MAX_BUCKET = 1 << 24


def bucket_norms(flat: np.ndarray, bucket: int) -> np.ndarray:
    """float32 L2 norm of each bucket, rounded up (never below the float64 norm)."""
    if flat.size == 0:
        return np.empty(0, np.float32)
    exact = np.sqrt(np.add.reduceat(np.square(flat.astype(np.float64)),
                                    coding.bucket_starts(flat.size, bucket)))
    with np.errstate(over="ignore"):  # refused below
        norms = exact.astype(np.float32)
    low = norms.astype(np.float64) < exact
    norms[low] = np.nextafter(norms[low], np.float32(np.inf))
    if not np.isfinite(norms).all():
        raise ValueError("a QSGD bucket's norm exceeds float32 (entries near 1e19 or above)")
    return norms


def dequantize(norm_per_entry: np.ndarray, levels: np.ndarray, negative: np.ndarray,
               s: int) -> np.ndarray:
    """norm * l / s, rounded once to float32, with the sign: what both sides compute."""
    mag = (norm_per_entry.astype(np.float64) * levels / s).astype(np.float32)
    return np.where(negative, -mag, mag)


@register("qsgd")
@dataclass(frozen=True, kw_only=True)
class QSGD(Compressor):
    """QSGD with `levels` levels per bucket of `bucket` entries (see the module)."""

    levels: int = 16
    bucket: int = 512
    coding: str = "elias"

    paper = ("Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, QSGD: Communication-efficient "
             "SGD via gradient quantization and encoding")
    choices = {"coding": ("elias", "varint")}

    def check(self) -> None:
        if not 1 <= self.levels <= MAX_LEVELS:
            raise BadParam("levels", self.levels, f"an integer in 1..{MAX_LEVELS}")
        if not 1 <= self.bucket <= MAX_BUCKET:
            raise BadParam("bucket", self.bucket, f"an integer in 1..{MAX_BUCKET}")

    # ------------------------------------------------------------------ encode

    def quantize(self, flat: np.ndarray, rng: np.random.Generator):
        """(norms, levels) of one flat float32 tensor: the stochastic rounding."""
        norms = bucket_norms(flat, self.bucket)
        per = coding.per_entry(norms.astype(np.float64), flat.size, self.bucket)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(per > 0, np.abs(flat.astype(np.float64)) / per, 0.0) * self.levels
        low = np.floor(r)
        lev = low + (rng.random(flat.size) < r - low)
        return norms, np.minimum(lev, self.levels).astype(np.int64)

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        recon, norms_all, counts, signs, codes = {}, [], [], [], []
        for i, (name, x) in enumerate(tensors.items()):
            x = np.asarray(x, dtype=np.float32)
            flat = x.reshape(-1)
            norms, lev = self.quantize(flat, ctx.rng(i))
            pos = np.flatnonzero(lev)
            neg = flat < 0
            per = coding.per_entry(norms, flat.size, self.bucket)
            recon[name] = dequantize(per, lev, neg & (lev > 0), self.levels).reshape(x.shape)
            norms_all.append(norms)
            counts.append(pos.size)
            signs.append(neg[pos])
            codes.append(np.stack([np.diff(pos, prepend=-1), lev[pos]], axis=1).reshape(-1))
        codes = np.concatenate(codes) if codes else np.empty(0, np.int64)
        stream = ([list(coding.gamma_encode(codes))] if self.coding == "elias"
                  else [[coding.varint_encode(codes)]])
        sign_bits = coding.pack_bits(np.concatenate(signs) if signs else np.empty(0, bool), 1)
        payload = Sections().pack(self, spec_of(tensors), [
            ([np.asarray(counts, "<u8")], 8),
            ([np.concatenate(norms_all) if norms_all else np.empty(0, np.float32)], 4),
            ([sign_bits], 1),
            *(([part], 1) for part in stream[0])])
        return encoded(payload, recon, sum(counts))

    # ------------------------------------------------------------------ decode

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        numels = numel_of(spec)
        total = sum(numels)
        nbs = [-(-n // self.bucket) for n in numels]
        top = max([self.levels, *numels])  # the largest distance or level
        n_codes = 2 * total
        if self.coding == "elias":
            stream = list(zip((1, 1), coding.gamma_bytes_most(n_codes, top)))
        else:
            stream = [(1, coding.varint_bytes_most(n_codes, top))]
        counts, norms, signs, *parts = Sections().unpack(self, payload, spec, [
            (8, 8 * len(spec)), (4, 4 * sum(nbs)), (1, (total + 7) // 8), *stream])
        if counts.nbytes != 8 * len(spec) or norms.nbytes != 4 * sum(nbs):
            raise WireFormatError(f"qsgd: {counts.nbytes // 8} counts and {norms.nbytes // 4} "
                                  f"norms, expected {len(spec)} and {sum(nbs)}")
        counts = counts.view("<u8")
        over = counts > np.asarray(numels, np.uint64)  # compared unsigned: no wrap-around
        if over.any():
            bad = int(np.flatnonzero(over)[0])
            raise WireFormatError(f"qsgd: tensor {spec[bad][0]!r} declares {counts[bad]} "
                                  f"non-zero levels, it has {numels[bad]} entries")
        counts = counts.astype(np.int64)
        norms = norms.view("<f4")
        if not np.isfinite(norms).all() or np.any(np.signbit(norms)):
            raise WireFormatError("qsgd: a bucket norm is not finite or is negative "
                                  "(norms are finite and >= +0.0)")
        nnz = int(counts.sum())
        neg = coding.unpack_bits(signs, nnz, 1, "qsgd sign bits").astype(bool)
        if self.coding == "elias":
            codes = coding.gamma_decode(parts[0], parts[1], 2 * nnz, top, "qsgd codes")
        else:
            codes = coding.varint_decode(parts[0], 2 * nnz, top, "qsgd codes")
        out, c0, b0 = {}, 0, 0
        for (name, shape), n, nb, cnt in zip(spec, numels, nbs, counts.tolist()):
            dist, lev = codes[2 * c0: 2 * (c0 + cnt): 2], codes[2 * c0 + 1: 2 * (c0 + cnt): 2]
            if cnt and (int(dist.min()) < 1 or int(lev.min()) < 1 or int(lev.max()) > self.levels):
                raise WireFormatError(f"qsgd: tensor {name!r} has a distance < 1 or a level "
                                      f"outside 1..{self.levels}")
            pos = np.cumsum(dist) - 1
            if cnt and int(pos[-1]) >= n:
                raise WireFormatError(f"qsgd: tensor {name!r} has a non-zero at position "
                                      f"{int(pos[-1])}, it has {n} entries")
            tnorms = norms[b0: b0 + nb]
            if cnt and np.any(tnorms[pos // self.bucket] == 0):
                raise WireFormatError(f"qsgd: tensor {name!r} has a non-zero level in a bucket "
                                      "of norm 0")
            flat = np.zeros(n, np.float32)
            flat[pos] = dequantize(tnorms[pos // self.bucket], lev, neg[c0: c0 + cnt],
                                   self.levels)
            out[name] = flat.reshape(shape)
            c0, b0 = c0 + cnt, b0 + nb
        return out
