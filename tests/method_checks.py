"""Checks every compression method must pass (compressors/base.py's contract), shared by
the tests/unit/test_method_<key>.py files: the wire round trip, bit-identical
reconstruction, and decoder fuzzing (damaged payloads raise WireFormatError and
nothing else, or decode to the model's shapes, float32, finite, within bounded memory).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors.base import Sections
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError, frame, parse


def model(seed: int = 0) -> dict[str, np.ndarray]:
    """A small model with the awkward cases: an empty tensor, an all-zero one, a tensor
    that does not fill its last bucket or byte, a single entry, signed zeros."""
    rng = np.random.default_rng(seed)
    odd = np.linspace(-1, 1, 13, dtype=np.float32)
    odd[[2, 5]] = [0.0, -0.0]
    return {"conv": rng.normal(0, 0.05, (8, 3, 5, 5)).astype(np.float32),
            "bias": rng.normal(0, 1, 8).astype(np.float32),
            "empty": np.zeros((0, 3), np.float32),
            "zeros": np.zeros(40, np.float32),
            "odd": odd,
            "one": np.array([-3.5], np.float32)}


def same_bits(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype == np.float32 and a[k].shape == b[k].shape
        and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)


def assert_wire_round_trip(comp, tensors, ctx):
    """encode -> frame -> parse (every header field stated) -> decode == reconstructed."""
    enc = comp.encode(tensors, ctx)
    buf = frame(Kind.UPDATE, round=ctx.round, client=ctx.client, payload=enc.payload,
                codec_id=comp.codec_id, n_tensors=len(tensors))
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=ctx.round, client=ctx.client,
                       codec_id=comp.codec_id, n_tensors=len(tensors))
    out = comp.decode(payload, spec_of(tensors), ctx.for_decode())
    assert same_bits(out, enc.reconstructed)
    assert enc.numel == sum(t.size for t in tensors.values())
    assert enc.dense_bytes == 4 * enc.numel
    assert enc.nnz == sum(int(np.count_nonzero(v)) for v in enc.reconstructed.values())
    return enc, buf


def assert_model(out, spec):
    assert [(k, v.shape) for k, v in out.items()] == [(n, tuple(s)) for n, s in spec]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


def mutate(rng: np.random.Generator, buf: np.ndarray, start: int = 0) -> np.ndarray:
    """Truncation, bit flips, random bytes, garbage appended, a byte burst (at or after
    `start`, so that a framed message can be damaged in its payload only)."""
    kind = rng.integers(5)
    if kind == 0:
        return buf[: rng.integers(0, buf.nbytes)].copy()
    bad = buf.copy()
    if kind == 1:
        for pos in rng.integers(start * 8, bad.nbytes * 8, size=rng.integers(1, 4)):
            bad[pos // 8] ^= np.uint8(1 << (pos % 8))
        return bad
    if kind == 2:
        pos = rng.integers(start, bad.nbytes, size=rng.integers(1, 4))
        bad[pos] = rng.integers(0, 256, size=pos.size)
        return bad
    if kind == 3:
        return np.concatenate([buf, rng.integers(0, 256, rng.integers(1, 16)).astype(np.uint8)])
    at = rng.integers(start, bad.nbytes)
    bad[at: at + 8] = rng.integers(0, 256, min(8, bad.nbytes - at))
    return bad


def fuzz(comp, tensors, ctx, n: int = 1500, seed: int = 1) -> tuple[int, int]:
    """Damage the payload (no checksum in the way) `n` times; returns (refused, accepted).
    The first cases run under tracemalloc: the decoder allocates within a bound set by
    the model, never by the message."""
    spec = spec_of(tensors)
    enc = comp.encode(tensors, ctx)
    dense = 4 * sum(t.size for t in tensors.values())
    limit = 64 * dense + enc.payload.nbytes * 16 + (1 << 16)
    rng = np.random.default_rng(seed)
    refused = accepted = 0
    for i in range(n):
        bad = mutate(rng, enc.payload)
        if bad.nbytes == enc.payload.nbytes and np.array_equal(bad, enc.payload):
            continue
        traced = i < 20
        if traced:
            tracemalloc.start()
        try:
            out = comp.decode(bad, spec, ctx.for_decode())
        except WireFormatError:
            refused += 1
            continue
        finally:
            if traced:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert peak <= limit, f"decoding allocated {peak} bytes, more than {limit}"
        assert_model(out, spec)
        accepted += 1
    return refused, accepted


def fuzz_framed(comp, tensors, ctx, n: int = 300, seed: int = 2) -> None:
    """Damaged framed messages: the checksums (or the decoder) refuse every change."""
    enc, buf = assert_wire_round_trip(comp, tensors, ctx)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        bad = mutate(rng, buf)
        if bad.nbytes == buf.nbytes and np.array_equal(bad, buf):
            continue
        with pytest.raises(WireFormatError):
            _, payload = parse(bad, expect_kind=Kind.UPDATE, codec_id=comp.codec_id,
                               n_tensors=len(tensors))
            comp.decode(payload, spec_of(tensors), ctx.for_decode())
    assert HEADER_SIZE < buf.nbytes


def sections(comp, payload, spec, bounds):
    """The payload's sections (copies), to forge a message field by field."""
    return [s.copy() for s in Sections().unpack(comp, payload, spec, bounds)]


def repack(comp, spec, parts, sizes):
    """Sections -> payload, as a sender would write them (valid header)."""
    return Sections().pack(comp, spec, [([p], s) for p, s in zip(parts, sizes)])


def fuzz_sections(comp, tensors, ctx, bounds, sizes, n: int = 1500, seed: int = 3):
    """Valid-header mode: change the bytes of one section (random bytes, bit flips, a
    truncation or an extension, a u64/f32 field set to an extreme) and repack it as a
    sender would, so that only the decoder's field checks stand in the way. Returns
    (refused, accepted); accepted messages must decode to a sane model."""
    spec = spec_of(tensors)
    parts0 = sections(comp, comp.encode(tensors, ctx).payload, spec, bounds)
    extremes = [b"\xff" * 8, b"\x00\x00\x80\xff", b"\x00\x00\xc0\x7f", b"\x00\x00\x00\x80",
                b"\xff\xff\x7f\x7f", b"\x00" * 8, b"\x80\x80\x80\x80\x01"]
    rng = np.random.default_rng(seed)
    refused = accepted = 0
    for _ in range(n):
        parts = [p.copy() for p in parts0]
        i = int(rng.integers(len(parts)))
        p = parts[i]
        kind = rng.integers(4)
        if kind == 0 and p.nbytes:
            pos = rng.integers(0, p.nbytes, size=rng.integers(1, 4))
            p[pos] = rng.integers(0, 256, size=pos.size)
        elif kind == 1 and p.nbytes:
            bit = int(rng.integers(p.nbytes * 8))
            p[bit // 8] ^= np.uint8(1 << (bit % 8))
        elif kind == 2:
            cut = int(rng.integers(0, p.nbytes + 1))
            extra = rng.integers(0, 256, int(rng.integers(0, 4))).astype(np.uint8)
            p = np.concatenate([p[:cut], extra])
        else:
            e = np.frombuffer(extremes[rng.integers(len(extremes))], np.uint8)
            at = int(rng.integers(0, max(1, p.nbytes - e.nbytes + 1)))
            p = np.concatenate([p[:at], e, p[at + e.nbytes:]])
        parts[i] = p
        if all(np.array_equal(a, b) for a, b in zip(parts, parts0)):
            continue
        try:
            out = comp.decode(repack(comp, spec, parts, sizes), spec, ctx.for_decode())
        except WireFormatError:
            refused += 1
            continue
        assert_model(out, spec)
        accepted += 1
    return refused, accepted


def _set_scale(i: int, v: float):
    def edit(parts):
        parts[0].view("<f4")[i] = v
    return edit


# Damaged sections of a sign message (signsgd, randsign: float32 scales, then packed signs)
# of tensors a (scale > 0), b (scale 0) and e (empty) with 8 signs in all: each edit of
# the parts and the words its refusal must contain.
SIGN_SECTION_EDITS = [
    (_set_scale(0, -1.0), ">= \\+0.0"), (_set_scale(1, -0.0), ">= \\+0.0"),
    (_set_scale(0, np.inf), "finite"), (_set_scale(0, np.nan), "finite"),
    (_set_scale(2, 1.0), "empty tensor 'e' has scale"),
    (lambda p: p[1].__setitem__(0, p[1][0] | 0x80), "scale 0 has sign bits set"),
    (lambda p: p.__setitem__(1, p[1][:0]), "0 bytes for 8"),
    (lambda p: p.__setitem__(0, p[0][:8]), "2 scales, expected 3"),
]
