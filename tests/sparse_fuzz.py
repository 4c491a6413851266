"""Decoder fuzzing for method payloads (`compressors.base.Sections`: a 12-byte header,
then a container of sections), shared by the tests of the sparsifying methods.

Two modes, as in test_compress_fuzz.py. Raw mode damages the payload bytes (the
decoder behind the wire crc must still raise only WireFormatError). Container mode
plays a sender that is wrong on purpose: it takes the payload apart into its raw
sections (zstd undone), changes fields inside them, and puts it back together with
valid zstd frames, so only the decoder's field checks can catch what changed.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import zstandard
from forgery import assert_model, fuzz_model  # noqa: F401  (re-exported)

from fedmpi.compress.zstd import Zstd, shuffle, unshuffle
from fedmpi.wire import WireFormatError

HEAD = 12
_SECTION = struct.Struct("<B3sQQ")
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4e38, -1.0, 1e-3, 2e-3]
COUNTS = [0, 1, 2, 3, 7, 8, 255, 256, 2**16, 2**31, 2**32 - 1]


def take_apart(payload: np.ndarray, container) -> tuple[bytes, list[list]]:
    """(12-byte header, [[itemsize, raw bytes], ...]) of a well-formed payload."""
    p = bytes(payload)
    head, body = p[:HEAD], p[HEAD:]
    (n,) = struct.unpack_from("<I", body, 0)
    pos, out = 4 + n * _SECTION.size, []
    for i in range(n):
        size, _, _, st = _SECTION.unpack_from(body, 4 + i * _SECTION.size)
        raw = body[pos: pos + st]
        pos += st
        if isinstance(container, Zstd):
            raw = zstandard.ZstdDecompressor().decompress(raw)
            if container.shuffle:
                raw = unshuffle(np.frombuffer(raw, np.uint8), size).tobytes()
        out.append([size, raw])
    return head, out


def put_together(head: bytes, sections: list[list], container) -> np.ndarray:
    stored = []
    for size, raw in sections:
        data = raw
        if isinstance(container, Zstd):
            if container.shuffle and size > 1 and len(data) % size == 0:
                data = shuffle(np.frombuffer(data, np.uint8), size).tobytes()
            data = zstandard.ZstdCompressor(level=container.level,
                                            write_content_size=True).compress(data)
        stored.append(data)
    table = b"".join(_SECTION.pack(size, b"\0\0\0", len(raw), len(st))
                     for (size, raw), st in zip(sections, stored))
    return np.frombuffer(head + struct.pack("<I", len(sections)) + table + b"".join(stored),
                         np.uint8).copy()


# ------------------------------------------------------------------ mutations


def _section(secs, rng):
    return secs[int(rng.integers(len(secs)))] if secs else None


def m_bits(head, secs, rng):
    s = _section(secs, rng)
    if s and s[1]:
        b = bytearray(s[1])
        for pos in rng.integers(0, len(b) * 8, size=rng.integers(1, 4)):
            b[pos // 8] ^= 1 << (pos % 8)
        s[1] = bytes(b)
    return head, secs


def m_byte(head, secs, rng):
    s = _section(secs, rng)
    if s and s[1]:
        b = bytearray(s[1])
        b[int(rng.integers(len(b)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF,
                                                      rng.integers(256)]))
        s[1] = bytes(b)
    return head, secs


def m_u32(head, secs, rng):
    """An extreme u32 at an aligned spot (a count, a gap, a float's bits)."""
    s = _section(secs, rng)
    if s and len(s[1]) >= 4:
        pos = 4 * int(rng.integers(len(s[1]) // 4))
        s[1] = s[1][:pos] + struct.pack("<I", int(rng.choice(COUNTS))) + s[1][pos + 4:]
    return head, secs


def m_float(head, secs, rng):
    """A special float32 among the values (the 4-byte section)."""
    vals = [s for s in secs if s[0] == 4 and len(s[1]) >= 4]
    if vals:
        s = vals[0]
        pos = 4 * int(rng.integers(len(s[1]) // 4))
        s[1] = s[1][:pos] + np.float32(rng.choice(SPECIALS)).tobytes() + s[1][pos + 4:]
    return head, secs


def m_length(head, secs, rng):
    """A section cut short or grown (by whole items or not)."""
    s = _section(secs, rng)
    if s:
        d = int(rng.choice([-8, -4, -3, -1, 1, 3, 4, 8]))
        s[1] = s[1][:max(0, len(s[1]) + d)] if d < 0 else \
            s[1] + rng.integers(0, 256, d).astype(np.uint8).tobytes()
    return head, secs


def m_structure(head, secs, rng):
    """Sections swapped, dropped, added, or their item size changed."""
    kind = int(rng.integers(4))
    if kind == 0 and len(secs) > 1:
        i, j = rng.choice(len(secs), 2, replace=False)
        secs[i], secs[j] = secs[j], secs[i]
    elif kind == 1 and secs:
        secs.pop(int(rng.integers(len(secs))))
    elif kind == 2:
        secs.append([int(rng.choice([1, 4])), b""])
    elif secs:
        s = _section(secs, rng)
        s[0] = 5 - s[0] if s[0] in (1, 4) else 1
    return head, secs


def m_head(head, secs, rng):
    b = bytearray(head)
    b[int(rng.integers(HEAD))] ^= 1 << int(rng.integers(8))
    return bytes(b), secs


MUTATIONS = [m_bits, m_byte, m_u32, m_float, m_length, m_structure, m_head]


def raw_mutation(buf: np.ndarray, rng) -> np.ndarray:
    kind = int(rng.integers(4))
    if kind == 0:
        return buf[: int(rng.integers(0, buf.nbytes))].copy()
    if kind == 1:
        bad = buf.copy()
        for pos in rng.integers(0, bad.nbytes * 8, size=rng.integers(1, 4)):
            bad[pos // 8] ^= np.uint8(1 << (pos % 8))
        return bad
    if kind == 2:
        return np.concatenate([buf, rng.integers(0, 256, rng.integers(1, 16)).astype(np.uint8)])
    bad = buf.copy()
    start = int(rng.integers(0, bad.nbytes))
    bad[start: start + 8] = rng.integers(0, 256, min(8, bad.nbytes - start))
    return bad


def _decode_bounded(comp, spec, payload, ctx):
    """Decode with tracemalloc on: the peak stays within what the model spec allows
    (64 x the dense model + 1 MiB), whatever the payload declares."""
    limit = 64 * 4 * sum(int(np.prod(s)) for _, s in spec) + (1 << 20)
    tracemalloc.start()
    try:
        return comp.decode(payload, spec, ctx)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= limit, f"decoding allocated {peak} bytes, more than {limit}"


def fuzz(comp, spec, payload, ctx, *, container, n=1500, seed=0, extra=None) -> dict:
    """Decode `n` mutated payloads (half raw, half re-packed with 1-3 field mutations):
    WireFormatError, or a well-formed model (`extra(out)` checks more), with bounded
    memory (traced for the first 40, tracing is slow). Returns counts."""
    rng = np.random.default_rng(seed)
    counts = {"refused": 0, "accepted": 0, "unchanged": 0}
    for i in range(n):
        if i % 2:
            bad = raw_mutation(payload, rng)
        else:
            head, secs = take_apart(payload, container)
            for _ in range(int(rng.integers(1, 4))):
                head, secs = MUTATIONS[int(rng.integers(len(MUTATIONS)))](head, secs, rng)
            bad = put_together(head, secs, container)
        if bad.nbytes == payload.nbytes and np.array_equal(bad, payload):
            counts["unchanged"] += 1
            continue
        try:
            out = _decode_bounded(comp, spec, bad, ctx) if i < 40 else comp.decode(bad, spec, ctx)
        except WireFormatError:
            counts["refused"] += 1
            continue
        assert_model(out, spec)
        if extra is not None:
            extra(out)
        counts["accepted"] += 1
    return counts
