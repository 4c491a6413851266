"""Bit and integer codes shared by the quantizing methods (QSGD, TernGrad, signSGD).

Every decoder here is strict in the way `base.Sections` is: the caller says how
many codes to expect and how large a value may be (both from the model spec and
the method's parameters, never from the message), and anything else - a wrong
length, a set padding bit, an extra or missing code, an over-long or oversized
value - is a WireFormatError. Encoders and decoders are vectorised numpy (a loop
over bit positions, never over entries), so a model of millions of entries codes
in a fraction of a second.

- `pack_bits` / `unpack_bits`: k-bit codes, little-endian bit order, zero padding.
- Elias gamma (Elias 1975) of integers v >= 1: floor(log2 v) zeros, a one, then the
  floor(log2 v) bits of v below its leading one. Here the two parts go to two
  streams (all unary length parts, then all mantissa bits, LSB first), so that
  both sides run vectorised; the size in bits is exactly that of the classic
  interleaved code (2 floor(log2 v) + 1 per value).
- LEB128 varints of integers v >= 0: 7 bits per byte, low groups first, high bit
  set on every byte but the last; the shortest form only (no trailing 0x80 00).
"""

from __future__ import annotations

import numpy as np

from fedmpi.compress.quantize import pack_bits as _pack_bits
from fedmpi.compress.quantize import unpack_bits as _unpack_bits
from fedmpi.wire import WireFormatError

__all__ = ["pack_bits", "unpack_bits", "bit_length", "gamma_encode", "gamma_decode",
           "varint_encode", "varint_decode", "gamma_bytes_most", "varint_bytes_most",
           "bucket_starts", "per_entry"]

MAX_BITS = 52  # values below 2^53: exact in float64 (bit_length uses frexp)


def pack_bits(codes: np.ndarray, k: int) -> np.ndarray:
    """Unsigned k-bit codes -> bytes, little-endian bit order, last byte zero-padded."""
    if codes.size == 0:
        return np.empty(0, np.uint8)
    return _pack_bits(np.asarray(codes), k)


def unpack_bits(buf: np.ndarray, count: int, k: int, what: str) -> np.ndarray:
    """Exactly `count` k-bit codes (uint32); WireFormatError for a wrong length or a set
    padding bit."""
    need = (count * k + 7) // 8
    if buf.nbytes != need:
        raise WireFormatError(f"{what}: {buf.nbytes} bytes for {count} {k}-bit codes, "
                              f"expected {need}")
    tail = count * k % 8
    if tail and int(buf[-1]) >> tail:
        raise WireFormatError(f"{what}: padding bits of the last byte are set "
                              f"({int(buf[-1]):#04x}, {tail} bits used)")
    if count == 0:
        return np.empty(0, np.uint32)
    if k == 1:
        return np.unpackbits(buf, count=count, bitorder="little").astype(np.uint32)
    return _unpack_bits(buf, count, k)


def bit_length(values: np.ndarray) -> np.ndarray:
    """int.bit_length of each value in 0 .. 2^53 - 1 (int64)."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << (MAX_BITS + 1)):
        raise ValueError(f"values outside 0..2^{MAX_BITS + 1} - 1 cannot be coded")
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


# ------------------------------------------------------------------------ buckets


def bucket_starts(n: int, bucket: int) -> np.ndarray:
    """First index of each bucket of `bucket` consecutive entries (the last one shorter):
    for `np.ufunc.reduceat`, so a bucket larger than the tensor costs nothing extra."""
    return np.arange(0, n, bucket, dtype=np.int64)


def per_entry(values: np.ndarray, n: int, bucket: int) -> np.ndarray:
    """Each bucket's value repeated over its entries (n of them)."""
    return values[np.arange(n, dtype=np.int64) // bucket]


# ------------------------------------------------------------------------ Elias gamma


def gamma_encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers >= 1 -> (unary stream, mantissa stream), each packed little-endian."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and int(v.min()) < 1:
        raise ValueError("Elias gamma codes integers >= 1")
    n = bit_length(v) - 1  # bits below the leading one
    ones = np.cumsum(n + 1) - 1
    unary = np.zeros(int(ones[-1]) + 1 if v.size else 0, np.uint8)
    unary[ones] = 1
    offsets = np.cumsum(n) - n
    mant = np.zeros(int(n.sum()), np.uint8)
    for j in range(int(n.max()) if v.size else 0):
        act = n > j
        mant[offsets[act] + j] = (v[act] >> j) & 1
    return (np.packbits(unary, bitorder="little"), np.packbits(mant, bitorder="little"))


def gamma_bytes_most(count: int, max_value: int) -> tuple[int, int]:
    """The largest unary and mantissa streams of `count` codes of values <= max_value."""
    nmax = max(int(max_value), 1).bit_length() - 1
    return (count * (nmax + 1) + 7) // 8, (count * nmax + 7) // 8


def gamma_decode(unary: np.ndarray, mant: np.ndarray, count: int, max_value: int,
                 what: str) -> np.ndarray:
    """Exactly `count` values in 1..max_value (int64) from the two streams."""
    nmax = max(int(max_value), 1).bit_length() - 1
    most_u, _ = gamma_bytes_most(count, max_value)
    if unary.nbytes > most_u:
        raise WireFormatError(f"{what}: {unary.nbytes} bytes of Elias length codes, more "
                              f"than {count} codes can need ({most_u})")
    bits = np.unpackbits(unary, bitorder="little")
    ones = np.flatnonzero(bits)
    if ones.size != count:
        raise WireFormatError(f"{what}: {ones.size} Elias codes, expected {count}")
    used = int(ones[-1]) + 1 if count else 0
    if unary.nbytes != (used + 7) // 8:
        raise WireFormatError(f"{what}: {unary.nbytes} bytes of Elias length codes, the "
                              f"codes end in byte {(used + 7) // 8} (zero bytes after them)")
    n = np.diff(ones, prepend=-1) - 1
    if count and int(n.max()) > nmax:
        raise WireFormatError(f"{what}: an Elias code of {int(n.max()) + 1} bits, values "
                              f"are at most {max_value} ({nmax + 1} bits)")
    total = int(n.sum())
    mbits = unpack_bits(mant, total, 1, f"{what} (Elias mantissa bits)")
    offsets = np.cumsum(n) - n
    v = np.ones(count, np.int64) << n
    for j in range(int(n.max()) if count else 0):
        act = np.flatnonzero(n > j)
        v[act] |= mbits[offsets[act] + j].astype(np.int64) << j
    if count and int(v.max()) > max_value:
        raise WireFormatError(f"{what}: value {int(v.max())} above its bound {max_value}")
    return v


# ------------------------------------------------------------------------ varints


def varint_encode(values: np.ndarray) -> np.ndarray:
    """Integers >= 0 -> LEB128 bytes, shortest form."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and int(v.min()) < 0:
        raise ValueError("varints code integers >= 0")
    lens = np.maximum(1, (bit_length(v) + 6) // 7)
    offsets = np.cumsum(lens) - lens
    out = np.zeros(int(lens.sum()), np.uint8)
    for j in range(int(lens.max()) if v.size else 0):
        act = lens > j
        more = (lens[act] > j + 1).astype(np.int64) << 7
        out[offsets[act] + j] = ((v[act] >> (7 * j)) & 0x7F) | more
    return out


def varint_bytes_most(count: int, max_value: int) -> int:
    return count * max(1, (max(int(max_value), 1).bit_length() + 6) // 7)


def varint_decode(buf: np.ndarray, count: int, max_value: int, what: str) -> np.ndarray:
    """Exactly `count` values in 0..max_value (int64), shortest forms, nothing after."""
    most = varint_bytes_most(count, max_value)
    if buf.nbytes > most:
        raise WireFormatError(f"{what}: {buf.nbytes} varint bytes, more than {count} values "
                              f"can need ({most})")
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count:
        raise WireFormatError(f"{what}: {ends.size} varints, expected {count}")
    if count and int(ends[-1]) != buf.nbytes - 1:
        raise WireFormatError(f"{what}: {buf.nbytes - 1 - int(ends[-1])} bytes after the last "
                              "varint")
    if not count:
        return np.empty(0, np.int64)
    lens = np.diff(ends, prepend=-1)
    maxlen = (max(int(max_value), 1).bit_length() + 6) // 7
    if int(lens.max()) > maxlen:
        raise WireFormatError(f"{what}: a varint of {int(lens.max())} bytes, values are at "
                              f"most {max_value} ({maxlen} bytes)")
    if np.any((lens > 1) & (buf[ends] == 0)):
        raise WireFormatError(f"{what}: a varint in a longer form than needed (last byte 0)")
    starts = ends - lens + 1
    v = np.zeros(count, np.int64)
    for j in range(int(lens.max())):
        act = np.flatnonzero(lens > j)
        v[act] |= (buf[starts[act] + j].astype(np.int64) & 0x7F) << (7 * j)
    if int(v.max()) > max_value:
        raise WireFormatError(f"{what}: value {int(v.max())} above its bound {max_value}")
    return v
