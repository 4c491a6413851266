"""Sparse Ternary Compression (Sattler, Wiedemann, Müller, Samek 2019, "Robust and
Communication-Efficient Federated Learning from Non-IID Data", IEEE TNNLS; arXiv 1903.02891).

Per tensor: keep the k = ceil(fraction * n) entries of largest magnitude, replace each
by ±mu (mu = mean |kept|, one float32 per tensor), send the positions Golomb-coded and
the signs one bit each. With `feedback` (the paper's residual accumulation) what was
dropped is added back next time (compressors/feedback.py); on the uplink the residual
is the client's, on the downlink the server's: both are simply `ctx.state`, so STC
compresses both directions as the paper does.

Golomb coding of the gaps between kept positions (gap = index - previous - 1, the first
counted from -1), with the paper's parameter for a Bernoulli(p) support, p = k / n:

    b* = 1 + floor(log2(log(phi - 1) / log(1 - p))),  phi = golden ratio

a gap d is coded as its quotient q = d >> b* in unary (q ones, then a zero) and its
remainder in b* bits (M = 2^b*: the Rice case of Golomb coding, as in the paper).

What differs from the paper (no effect on the bits per position):
- the unary quotients of all codewords form one bit stream and the b*-bit remainders
  another, instead of alternating: the same number of bits, but both directions become
  whole-array numpy operations (the receiver finds the quotients as the gaps between the
  zero bits of the unary stream);
- b* travels in the payload (one byte per tensor) rather than being recomputed from p
  by the receiver: a logarithm need not round alike on every machine;
- only non-zero entries are kept: a tensor with fewer than k non-zeros sends them all
  (count <= k is in the payload), so a zero never turns into ±mu;
- ties in magnitude go to the lower index, so the kept set is a function of the values.

Payload (`Sections`, plain; the Golomb code is the entropy code):
  header (codec id, spec crc)
  table:     per tensor u32 count, u8 b, 3 pad = 0, f32 mu       (12 bytes each)
  unary:     the quotients of every tensor in order, bits MSB first, zero-padded
  remainder: count_t * b_t bits per tensor in order, MSB first, zero-padded
  signs:     one bit per sent entry (1 = negative) in position order, zero-padded
Decoding checks every field: count <= k, b within the tensor's range, mu > 0 and finite
(+0.0 with b = 0 for an empty tensor), each stream exactly as long as its codewords,
padding bits 0, every position inside its tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_of
from fedmpi.compressors import feedback
from fedmpi.compressors.base import (Compressor, Context, Sections, check_finite, encoded,
                                     numel_of, register)
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError

TABLE = np.dtype([("count", "<u4"), ("b", "u1"), ("pad", "V3"), ("mu", "<f4")])
PHI = (1 + math.sqrt(5)) / 2


def kept_count(numel: int, fraction: float) -> int:
    """k for a tensor of `numel` entries: ceil(fraction * n), at least 1 (none when empty)."""
    return 0 if numel == 0 else min(numel, max(1, math.ceil(fraction * numel)))


def top_k(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted int64 positions of the k entries of largest |x| among the non-zero ones
    (all of them when fewer); ties go to the lower index."""
    a = np.abs(flat)
    k = min(k, int(np.count_nonzero(a)))
    if k == 0:
        return np.empty(0, np.int64)
    if k == a.size:
        return np.arange(a.size, dtype=np.int64)
    thr = np.partition(a, a.size - k)[a.size - k]  # the k-th largest magnitude (> 0)
    above = np.flatnonzero(a > thr)
    tied = np.flatnonzero(a == thr)[: k - above.size]
    return np.sort(np.concatenate([above, tied]))


def max_b(numel: int) -> int:
    """Largest remainder width that can help in a tensor of `numel` entries."""
    return max(numel - 1, 0).bit_length()


def golomb_parameter(k: int, numel: int) -> int:
    """The paper's b* for sparsity p = k / n, clamped to 0..max_b(n)."""
    if k == 0 or k >= numel:
        return 0
    p = k / numel
    ratio = math.log(PHI - 1) / math.log1p(-p)
    return min(max(0, 1 + math.floor(math.log2(ratio))), max_b(numel))


# --------------------------------------------------------------------- Golomb bit streams


def _pack_bits(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits.astype(np.uint8, copy=False))  # MSB first, zero-padded


def _unpack_exact(stream: np.ndarray, nbits: int, what: str) -> np.ndarray:
    """The first `nbits` bits of `stream`, which must be exactly that long, padding 0."""
    if stream.nbytes != (nbits + 7) // 8:
        raise WireFormatError(f"{what} stream has {stream.nbytes} bytes, its codewords "
                              f"need {(nbits + 7) // 8}")
    bits = np.unpackbits(stream)
    if bits[nbits:].any():
        raise WireFormatError(f"{what} stream padding bits are set")
    return bits[:nbits]


def golomb_write(gaps: list[np.ndarray], bs: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Gap sequences (non-negative ints) with their remainder widths -> (unary stream,
    remainder stream) as uint8 arrays."""
    gaps = [np.asarray(g, dtype=np.int64) for g in gaps]
    q = np.concatenate([g >> b for g, b in zip(gaps, bs)]) if gaps else np.empty(0, np.int64)
    unary = np.ones(int(q.sum()) + q.size, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0  # each quotient's terminating zero
    rem = [((g[:, None] >> np.arange(b - 1, -1, -1)) & 1).ravel()
           for g, b in zip(gaps, bs) if b]
    rem_bits = np.concatenate(rem) if rem else np.empty(0, np.int64)
    return _pack_bits(unary), _pack_bits(rem_bits)


def golomb_read(unary: np.ndarray, rem: np.ndarray, counts: list[int], bs: list[int],
                limits: list[int]) -> list[np.ndarray]:
    """Inverse of golomb_write, strict: per sequence `counts[i]` gaps, each at most
    `limits[i]`; both streams exactly as long as their codewords, padding bits 0.
    The streams must already be bounded in size by the caller."""
    total = sum(counts)
    bits = np.unpackbits(unary)
    zeros = np.flatnonzero(bits == 0)[:total]
    if zeros.size < total:
        raise WireFormatError(f"unary stream ends after {zeros.size} of {total} codewords")
    used = int(zeros[-1]) + 1 if total else 0
    if unary.nbytes != (used + 7) // 8:
        raise WireFormatError(f"unary stream has {unary.nbytes} bytes, its codewords need "
                              f"{(used + 7) // 8}")
    if bits[used:].any():
        raise WireFormatError("unary stream padding bits are set")
    q_all = np.diff(zeros, prepend=-1) - 1
    rbits = _unpack_exact(rem, sum(c * b for c, b in zip(counts, bs)), "remainder")
    out, qpos, rpos = [], 0, 0
    for count, b, limit in zip(counts, bs, limits):
        q = q_all[qpos: qpos + count]
        qpos += count
        if count and int(q.max()) > limit >> b:  # checked before shifting: no overflow
            raise WireFormatError(f"Golomb quotient {int(q.max())} exceeds the largest "
                                  f"gap {limit} (b = {b})")
        r = rbits[rpos: rpos + count * b].reshape(count, b).astype(np.int64)
        rpos += count * b
        gaps = (q << b) | (r @ (np.int64(1) << np.arange(b - 1, -1, -1, dtype=np.int64)))
        out.append(gaps)
    return out


# ------------------------------------------------------------------------------ method


@register("stc")
@dataclass(frozen=True, kw_only=True)
class STC(Compressor):
    fraction: float = 0.01
    feedback: bool = True

    paper = ("Sattler et al. 2019, Robust and Communication-Efficient Federated Learning "
             "from Non-IID Data (sparse ternary compression)")

    def check(self) -> None:
        if not 0 < self.fraction <= 1:
            raise BadParam("fraction", self.fraction, "a number in (0, 1]")

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.feedback

    def _bounds(self, spec: ModelSpec) -> list[tuple[int, int]]:
        numel = numel_of(spec)
        ks = [kept_count(n, self.fraction) for n in numel]
        return [(4, len(spec) * TABLE.itemsize),
                (1, (sum(numel) + sum(ks) + 7) // 8),  # sum(q) <= n, plus the terminators
                (1, (sum(k * max_b(n) for k, n in zip(ks, numel)) + 7) // 8),
                (1, (sum(ks) + 7) // 8)]

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        x = (feedback.compensate(tensors, ctx) if self.feedback
             else {k: np.asarray(v, np.float32) for k, v in tensors.items()})
        spec = spec_of(tensors)
        table = np.zeros(len(spec), TABLE)
        gaps, bs, signs, recon = [], [], [], {}
        for i, (name, shape) in enumerate(spec):
            flat = x[name].reshape(-1)
            k = kept_count(flat.size, self.fraction)
            if k >= 1 << 32:
                raise ValueError(f"tensor {name!r} has too many entries for STC ({flat.size})")
            idx = top_k(flat, k)
            vals = flat[idx]
            mu = np.float32(np.abs(vals, dtype=np.float64).mean()) if idx.size else np.float32(0)
            b = golomb_parameter(k, flat.size) if idx.size else 0
            table[i] = (idx.size, b, b"\0\0\0", mu)
            gaps.append(np.diff(idx, prepend=-1) - 1)
            bs.append(b)
            neg = np.signbit(vals)
            signs.append(neg)
            recon[name] = _ternary(flat.size, idx, neg, mu).reshape(shape)
        unary, rem = golomb_write(gaps, bs)
        sign_bytes = _pack_bits(np.concatenate(signs) if signs else np.empty(0, bool))
        payload = Sections().pack(self, spec, [([table.view(np.uint8)], 4), ([unary], 1),
                                               ([rem], 1), ([sign_bytes], 1)])
        if self.feedback:
            feedback.keep(ctx, x, recon)
        return encoded(payload, recon, int(table["count"].sum()))

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        raw, unary, rem, sign_bytes = Sections().unpack(self, payload, spec, self._bounds(spec))
        if raw.nbytes != len(spec) * TABLE.itemsize:
            raise WireFormatError(f"STC table has {raw.nbytes} bytes, expected "
                                  f"{len(spec) * TABLE.itemsize} for {len(spec)} tensors")
        table = raw.view(TABLE)
        numel = numel_of(spec)
        for (name, _), n, row in zip(spec, numel, table):
            count, b, mu = int(row["count"]), int(row["b"]), float(row["mu"])
            if row["pad"].tobytes() != b"\0\0\0":
                raise WireFormatError(f"STC table padding of {name!r} is not zero")
            if count > kept_count(n, self.fraction):
                raise WireFormatError(f"{name!r} carries {count} entries, more than k = "
                                      f"{kept_count(n, self.fraction)}")
            if b > max_b(n):
                raise WireFormatError(f"{name!r}: Golomb parameter {b} exceeds {max_b(n)}")
            if count and not (math.isfinite(mu) and mu > 0):
                raise WireFormatError(f"{name!r}: mu = {mu} is not a positive finite number")
            if not count and (b or row["mu"].view(np.uint32)):
                raise WireFormatError(f"{name!r} sends nothing but has b = {b}, mu = {mu}")
        counts = [int(c) for c in table["count"]]
        gaps = golomb_read(unary, rem, counts, [int(b) for b in table["b"]],
                           [max(n - 1, 0) for n in numel])
        neg = _unpack_exact(sign_bytes, sum(counts), "sign").view(bool)
        out, pos = {}, 0
        for (name, shape), n, g, row in zip(spec, numel, gaps, table):
            idx = np.cumsum(g + 1) - 1
            if idx.size and int(idx[-1]) >= n:
                raise WireFormatError(f"{name!r}: position {int(idx[-1])} is outside its "
                                      f"{n} entries")
            out[name] = _ternary(n, idx, neg[pos: pos + idx.size], row["mu"]).reshape(shape)
            pos += idx.size
        return out


def _ternary(numel: int, idx: np.ndarray, neg: np.ndarray, mu: np.float32) -> np.ndarray:
    out = np.zeros(numel, np.float32)
    out[idx] = np.where(neg, -mu, mu).astype(np.float32)
    return out
