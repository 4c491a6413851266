"""Value coding: how the surviving float32 values travel.

Methods and their stated error bounds (x a transmitted value, x^ its reconstruction):

- none (no quantize stage): raw little-endian float32, bit-exact.
- uniform, bits k in 1..16: per tensor offset lo = min, scale = (max - min) / (2^k - 1),
  codes bit-packed; |x - x^| <= scale / 2 + ulp32(x^) (the last term is the final
  rounding to float32). Non-finite inputs are refused (ValueError).
- pow2, bits e in 1..8 exponent bits (e + 1 bits per value with the sign): x^ is
  +-2^E, the nearest power of two, E in [emax - 2^e + 2, emax] with emax the
  tensor's largest; smaller values become 0. |x - x^| <= max(|x| / 3, 2^emin).
  Non-finite inputs are refused.
- sign, bits 1 (sign + scale, as in scaled signSGD): per tensor one float32 scale
  s = mean |x| of the transmitted values, one bit per value (1 = negative); x^ is
  +s or -s (a 0 becomes +s). |x - x^| <= |x| + s. Non-finite inputs are refused.
  Decoding refuses a scale that is not finite or is negative (-0.0 too), and a set
  sign bit with scale 0 (-0 is never sent).
- float16: |x| clipped to 65504, round to nearest even:
  |x - x^| <= max(|x| * 2^-11, 2^-25). Non-finite inputs are refused.
- bfloat16: the top 16 bits of float32, round to nearest even, |x| clamped to the
  largest finite bfloat16 (~3.39e38): |x - x^| <= |x| * 2^-8 for normal x.
  Non-finite inputs are refused.

Reconstruction is always computed by the same function on both sides so that
the sender's copy (`Encoded.reconstructed`) is bit-identical to the receiver's.

Decoding is strict (a checksum is not validation): the code bytes fill exactly
count * k bits and the unused bits of the last byte are 0; the two per-tensor
parameters are checked (finite, in range, and +0.0 where a method does not use
them, or for an empty tensor); and every decoded value is finite: the uniform
parameters are bounded so that offset + (2^k - 1) * scale stays a float32, pow2
exponents lie in float32's range, float16/bfloat16 codes for inf/NaN are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedmpi.compress.base import BadParam, ValueCoder, register
from fedmpi.wire import WireFormatError

# float64 values from here up round to inf in float32 (half an ulp above FLT_MAX; the
# tie rounds to the even 2^128): the bound of a uniform tensor's largest decoded value.
F32_OVERFLOW = 2.0**128 - 2.0**103
EMIN_F32 = -149  # 2^-149: the smallest float32 magnitude
BF16_MAX = 0x7F7F  # bits of the largest finite bfloat16 (~3.39e38)


def pack_bits(codes: np.ndarray, k: int) -> np.ndarray:
    """Unsigned k-bit codes -> bytes, little-endian bit order."""
    if k == 8:
        return codes.astype(np.uint8)
    if k == 16:
        return codes.astype("<u2").view(np.uint8)
    bits = (codes.astype(np.uint32)[:, None] >> np.arange(k, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_bits(buf: np.ndarray, count: int, k: int) -> np.ndarray:
    if k == 8:
        return buf.astype(np.uint32)
    if k == 16:
        return buf.view("<u2").astype(np.uint32)
    bits = np.unpackbits(buf, count=count * k, bitorder="little").reshape(count, k)
    return bits.astype(np.uint32) @ (np.uint32(1) << np.arange(k, dtype=np.uint32))


def _positive_zero(p: float) -> bool:
    return p == 0 and math.copysign(1.0, p) > 0


def check_unused(label: str, count: int, **params: float) -> None:
    """Parameters a method does not use (all of them for an empty tensor) must be +0.0."""
    for name, p in params.items():
        if not _positive_zero(p):
            why = "the tensor is empty" if count == 0 else f"{label} does not use it"
            raise WireFormatError(f"parameter {name} is {p!r}, expected +0.0 ({why})")


def refuse_nonfinite(label: str, index: int, value: float) -> None:
    """The rule every decoder (numpy, fused, on-device) applies to a non-finite value."""
    raise WireFormatError(f"{label} value {index} decodes to {value} (only finite "
                          "values are sent)")


def check_finite(values: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        refuse_nonfinite(label, bad, values[bad])
    return values


class Float32(ValueCoder):
    """No quantization (the pipeline's default coder)."""

    itemsize = 4

    def nbytes(self, count):
        return 4 * count

    def encode(self, values):
        return np.ascontiguousarray(values, dtype="<f4").view(np.uint8), 0.0, 0.0

    def check_side(self, codes, count, p0, p1):
        check_unused("float32", count, p0=p0, p1=p1)
        if codes.nbytes != 4 * count:
            raise WireFormatError(f"{codes.nbytes} bytes of float32 values for {count} values")

    def decode(self, codes, count, p0, p1):
        self.check_side(codes, count, p0, p1)
        # astype copies: the caller owns it
        return check_finite(codes.view("<f4").astype(np.float32), "float32")


def _finite(values: np.ndarray, method: str) -> None:
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{method} quantization cannot represent NaN or inf values")


@register("quantize")
@dataclass(frozen=True, kw_only=True)
class Quantize(ValueCoder):
    method: str = "uniform"
    bits: int | None = None  # uniform: 8, pow2: 4 exponent bits, float16/bfloat16: 16

    rank = 20
    choices = {"method": ("uniform", "pow2", "float16", "bfloat16", "sign")}
    _RANGE: ClassVar[dict[str, tuple[int, int, int]]] = {  # method: (lo, hi, default)
        "uniform": (1, 16, 8), "pow2": (1, 8, 4), "float16": (16, 16, 16),
        "bfloat16": (16, 16, 16), "sign": (1, 1, 1)}

    def check(self):
        lo, hi, _ = self._RANGE[self.method]
        if self.bits is not None and not lo <= self.bits <= hi:
            allowed = f"{lo}..{hi}" if lo < hi else f"{lo} (or leave it out)"
            raise BadParam("bits", self.bits, f"{allowed} for method {self.method}")

    @property
    def k(self) -> int:
        """Bits of one transmitted value."""
        b = self._RANGE[self.method][2] if self.bits is None else self.bits
        return b + 1 if self.method == "pow2" else b

    @property
    def itemsize(self) -> int:
        return 2 if self.k == 16 else 1

    @property
    def lossy(self):
        return True

    def spec(self):  # defaults resolved, so `bits` left out and given hash alike
        return {"quantize": {"method": self.method, "bits": self._RANGE[self.method][2]
                             if self.bits is None else self.bits}}

    def label(self):
        return {"uniform": f"uniform{self.k}", "pow2": f"pow2({self.k - 1})",
                "float16": "fp16", "bfloat16": "bf16", "sign": "sign1"}[self.method]

    def nbytes(self, count):
        return (count * self.k + 7) // 8

    def encode(self, values):
        return getattr(self, f"_enc_{self.method}")(np.asarray(values, dtype=np.float32))

    def check_side(self, codes, count, p0, p1):
        if codes.nbytes != self.nbytes(count):
            raise WireFormatError(f"{codes.nbytes} bytes of {self.label()} codes for "
                                  f"{count} values")
        tail = count * self.k % 8
        if tail and int(codes[-1]) >> tail:
            raise WireFormatError(f"padding bits of the last {self.label()} code byte are set "
                                  f"({int(codes[-1]):#04x}, {tail} bits used)")
        if count == 0:
            check_unused(self.label(), 0, p0=p0, p1=p1)
        elif self.method == "uniform":
            lo, scale = p0, p1
            if not (math.isfinite(lo) and math.isfinite(scale)
                    and (scale > 0 or _positive_zero(scale))):
                raise WireFormatError(f"bad uniform parameters offset={lo} scale={scale} "
                                      "(finite, scale >= +0.0)")
            top = lo + ((1 << self.k) - 1) * scale  # largest decodable value (codes <= 2^k - 1)
            if top >= F32_OVERFLOW:
                raise WireFormatError(f"uniform parameters offset={lo} scale={scale} decode "
                                      f"{self.k}-bit codes up to {top:.4g}, beyond float32")
        elif self.method == "sign":
            check_unused(self.label(), count, p1=p1)
            if not (math.isfinite(p0) and (p0 > 0 or _positive_zero(p0))):
                raise WireFormatError(f"bad sign scale {p0!r} (finite, >= +0.0)")
        elif self.method == "pow2":
            check_unused(self.label(), count, p1=p1)
            emax = p0
            if not (math.isfinite(emax) and emax == int(emax) and EMIN_F32 <= emax <= 127):
                raise WireFormatError(f"bad pow2 exponent {emax} (an integer in "
                                      f"{EMIN_F32}..127)")
        else:  # float16, bfloat16
            check_unused(self.label(), count, p0=p0, p1=p1)

    def decode(self, codes, count, p0, p1):
        self.check_side(codes, count, p0, p1)
        if count == 0:
            return np.empty(0, np.float32)
        return getattr(self, f"_dec_{self.method}")(codes, count, p0, p1)

    def check_pow2_codes(self, signed_zero: bool, m_max: int, emax: float) -> None:
        """The pow2 rules on the codes themselves, given what a pass over them found:
        whether a code has a sign and no magnitude, and the largest magnitude code."""
        if signed_zero:
            raise WireFormatError("pow2 code with a sign and no magnitude (-0 is sent as 0)")
        if m_max > int(emax) - EMIN_F32 + 1:  # 2^(emax - m + 1) < 2^-149: not a float32
            raise WireFormatError(f"pow2 magnitude code {m_max} is below float32's "
                                  f"smallest value for emax {int(emax)}")

    def check_sign_codes(self, any_negative: bool, scale: float) -> None:
        """With scale 0 every value is +0: a set sign bit would decode to -0."""
        if any_negative and scale == 0:
            raise WireFormatError("sign code 1 (negative) with scale 0 (-0 is never sent)")

    # sign: p0 = scale (mean |x|), code 1 = negative
    def sign_scale(self, mean_abs: float) -> float:
        """The float32 scale of a tensor from its float64 mean |x| (both encoders)."""
        return float(np.float32(mean_abs))

    def _enc_sign(self, v):
        if v.size == 0:
            return np.empty(0, np.uint8), 0.0, 0.0
        _finite(v, "sign")
        scale = self.sign_scale(np.abs(v.astype(np.float64)).mean())
        codes = (v < 0) if scale > 0 else np.zeros(v.size, bool)
        return pack_bits(codes.astype(np.uint32), 1), scale, 0.0

    def _dec_sign(self, buf, count, scale, p1):  # scale and p1 checked by check_side
        codes = unpack_bits(buf, count, 1)
        self.check_sign_codes(bool(codes.any()), scale)
        s = np.float32(scale)
        return np.where(codes > 0, -s, s).astype(np.float32)

    # uniform: p0 = offset (min), p1 = scale
    def uniform_scale(self, lo: np.float32, hi: np.float32) -> np.float32:
        """The float32 step of k-bit codes over [lo, hi] (the torch encoder uses it too).

        ValueError where one step would exceed float32 (1 bit over a range wider than
        float32's); near +-3.4e38 one ulp less than the rounded step, so that the top
        level stays a float32 (what the decoder demands) and within the bound.
        """
        levels = (1 << self.k) - 1
        step = (np.float64(hi) - np.float64(lo)) / levels
        if step >= F32_OVERFLOW:
            raise ValueError(f"uniform {self.k}-bit quantization cannot span the range "
                             f"[{lo}, {hi}]: its step is not a float32")
        scale = np.float32(step)
        if scale == 0 and hi > lo:  # range below float32 resolution: smallest step
            scale = np.nextafter(np.float32(0), np.float32(1))
        while float(lo) + levels * float(scale) >= F32_OVERFLOW:
            scale = np.nextafter(scale, np.float32(0))
        return scale

    def _enc_uniform(self, v):
        if v.size == 0:
            return np.empty(0, np.uint8), 0.0, 0.0
        _finite(v, "uniform")
        lo, hi = np.float32(v.min()), np.float32(v.max())
        levels = (1 << self.k) - 1
        scale = self.uniform_scale(lo, hi)
        if scale > 0:
            codes = np.rint((v.astype(np.float64) - np.float64(lo)) / np.float64(scale))
            codes = np.clip(codes, 0, levels).astype(np.uint32)
        else:
            codes = np.zeros(v.size, np.uint32)
        return pack_bits(codes, self.k), float(lo), float(scale)

    def _dec_uniform(self, buf, count, lo, scale):  # parameters checked by check_side
        codes = unpack_bits(buf, count, self.k)
        return (np.float64(lo) + codes * np.float64(scale)).astype(np.float32)

    # pow2: p0 = emax; code = sign << e | m, m = 0 -> 0, m >= 1 -> 2^(emax - m + 1)
    def _enc_pow2(self, v):
        e = self.k - 1
        if v.size == 0:
            return np.empty(0, np.uint8), 0.0, 0.0
        _finite(v, "pow2")
        a = np.abs(v.astype(np.float64))
        nz = a > 0
        # nearest power of two in linear terms: 2^f when |x| < 1.5 * 2^f
        exp = np.frexp(a * (4.0 / 3.0))[1].astype(np.int64) - 1
        exp = np.minimum(exp, 127)  # 2^128 is not a float32
        emax = int(exp[nz].max()) if nz.any() else 0
        m = np.where(nz, emax - exp + 1, 0)
        m[m > (1 << e) - 1] = 0  # below emin: flushed to zero
        codes = (m | (np.signbit(v) & (m > 0)).astype(np.int64) << e).astype(np.uint32)
        return pack_bits(codes, self.k), float(emax), 0.0

    def _dec_pow2(self, buf, count, emax, p1):  # emax and p1 checked by check_side
        e = self.k - 1
        codes = unpack_bits(buf, count, self.k)
        m = (codes & ((1 << e) - 1)).astype(np.int64)
        self.check_pow2_codes(bool(np.any(codes == 1 << e)), int(m.max()), emax)
        mag = np.where(m > 0, np.ldexp(1.0, int(emax) - m + 1), 0.0).astype(np.float32)
        return np.where(codes >> e, -mag, mag)

    def _enc_float16(self, v):
        _finite(v, "float16")
        return np.clip(v, -65504, 65504).astype("<f2").view(np.uint8), 0.0, 0.0

    def _dec_float16(self, buf, count, p0, p1):  # p0, p1 checked by check_side
        return check_finite(buf.view("<f2").astype(np.float32), "float16")

    def _enc_bfloat16(self, v):
        _finite(v, "bfloat16")
        b = np.ascontiguousarray(v).view(np.uint32)
        rounded = ((b + np.uint32(0x7FFF) + ((b >> 16) & 1)) >> 16).astype("<u2")
        # rounding can carry the largest float32 values into inf: the largest bfloat16
        # (BF16_MAX) with the sign kept
        overflow = (rounded & 0x7F80) == 0x7F80
        rounded[overflow] = (rounded[overflow] & 0x8000) | BF16_MAX
        return rounded.view(np.uint8), 0.0, 0.0

    def _dec_bfloat16(self, buf, count, p0, p1):  # p0, p1 checked by check_side
        return check_finite((buf.view("<u2").astype(np.uint32) << 16).view(np.float32),
                            "bfloat16")
