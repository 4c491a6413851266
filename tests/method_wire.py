"""Wire checks shared by the method tests (tests/unit/test_method_*.py): a round trip
through `fedmpi.wire.frame` / `parse`, damaged messages, and a sender that is wrong on
purpose (sections re-packed with valid framing around wrong contents).

Every check asks the same of a decoder: it raises WireFormatError and nothing else, or
returns the model's tensors (names, shapes, float32, finite values).
"""

from __future__ import annotations

import numpy as np

from fedmpi.compress.base import Container
from fedmpi.compressors.base import Compressor, Context, Sections
from fedmpi.wire import Kind, WireFormatError, frame, parse

ROUND, CLIENT = 7, 3


def context(comp: Compressor, *, link: str = "up", round: int = ROUND, client: int = CLIENT,
            seed: int = 1, state=None) -> Context:
    return Context(seed=seed, round=round, client=client, link=link,
                   state=(comp.new_state() or {}) if state is None else state)


def assert_model(out, spec) -> None:
    assert [(k, v.shape) for k, v in out.items()] == [(k, tuple(s)) for k, s in spec]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values())


def same_bits(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        a[k].shape == b[k].shape and np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32))
        for k in a)


def wire_round_trip(comp: Compressor, enc, spec, ctx: Context) -> dict:
    """Frame the payload as an UPDATE, parse it back stating every header field, decode."""
    buf = frame(Kind.UPDATE, round=ctx.round, client=ctx.client, payload=enc.payload,
                codec_id=comp.codec_id, n_tensors=len(spec))
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=ctx.round, client=ctx.client,
                       codec_id=comp.codec_id, n_tensors=len(spec))
    return comp.decode(payload, spec, ctx.for_decode())


def mutate(rng: np.random.Generator, buf: np.ndarray) -> np.ndarray:
    """Truncation, bit flips, random bytes, garbage appended, or a burst."""
    kind = rng.integers(5)
    if kind == 0:
        return buf[: rng.integers(0, buf.nbytes)].copy()
    bad = buf.copy()
    if kind == 1:
        for pos in rng.integers(0, bad.nbytes * 8, size=rng.integers(1, 4)):
            bad[pos // 8] ^= np.uint8(1 << (pos % 8))
    elif kind == 2:
        pos = rng.integers(0, bad.nbytes, size=rng.integers(1, 6))
        bad[pos] = rng.integers(0, 256, size=pos.size)
    elif kind == 3:
        bad = np.concatenate([bad, rng.integers(0, 256, rng.integers(1, 64)).astype(np.uint8)])
    else:
        start = rng.integers(0, bad.nbytes)
        bad[start: start + 8] = rng.integers(0, 256, min(8, bad.nbytes - start))
    return bad


def check_damaged_frames(comp, enc, spec, n: int, seed: int = 0) -> None:
    """Every damaged framed message is refused (the checksums catch any change)."""
    buf = frame(Kind.UPDATE, round=ROUND, client=CLIENT, payload=enc.payload,
                codec_id=comp.codec_id, n_tensors=len(spec))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        bad = mutate(rng, buf)
        if bad.nbytes == buf.nbytes and np.array_equal(bad, buf):
            continue
        try:
            _, payload = parse(bad, expect_kind=Kind.UPDATE, codec_id=comp.codec_id,
                               n_tensors=len(spec))
            comp.decode(payload, spec, Context(1, ROUND, CLIENT, "up"))
        except WireFormatError:
            continue
        raise AssertionError("a damaged message was accepted")


def fuzz_payload(comp, payload, spec, n: int, seed: int = 0) -> tuple[int, int]:
    """Damaged payloads straight to the decoder (no checksum): (refused, accepted)."""
    rng = np.random.default_rng(seed)
    counts = [0, 0]
    for _ in range(n):
        bad = mutate(rng, payload)
        try:
            out = comp.decode(bad, spec, Context(1, ROUND, CLIENT, "up"))
        except WireFormatError:
            counts[0] += 1
            continue
        assert_model(out, spec)
        counts[1] += 1
    return counts[0], counts[1]


def sections_of(comp, payload, spec, itemsizes, container: Container | None = None):
    """The raw sections of a valid payload (a forger's view)."""
    return Sections(container).unpack(comp, payload, spec, [(s, 1 << 40) for s in itemsizes])


def repack(comp, spec, sections, itemsizes, container: Container | None = None) -> np.ndarray:
    """A payload from (possibly wrong) raw sections, framed as a correct sender would."""
    return Sections(container).pack(comp, spec, [([np.asarray(s, np.uint8)], size)
                                                 for s, size in zip(sections, itemsizes)])


def mutate_section(rng, raw: np.ndarray, itemsize: int) -> np.ndarray:
    """One section's bytes changed: bit flips, a random byte, whole items added/removed."""
    kind = rng.integers(4)
    bad = raw.copy()
    if kind == 0 and bad.nbytes:
        for pos in rng.integers(0, bad.nbytes * 8, size=rng.integers(1, 3)):
            bad[pos // 8] ^= np.uint8(1 << (pos % 8))
    elif kind == 1 and bad.nbytes:
        bad[rng.integers(0, bad.nbytes)] = rng.integers(0, 256)
    elif kind == 2:
        extra = itemsize * int(rng.integers(1, 4))
        bad = np.concatenate([bad, rng.integers(0, 256, extra).astype(np.uint8)])
    else:
        bad = bad[: max(0, bad.nbytes - itemsize * int(rng.integers(1, 4)))].copy()
    return bad


def fuzz_sections(comp, payload, spec, itemsizes, n: int, seed: int = 0,
                  container: Container | None = None) -> tuple[int, int]:
    """Valid framing, wrong contents in one or two sections: (refused, accepted)."""
    rng = np.random.default_rng(seed)
    good = sections_of(comp, payload, spec, itemsizes, container)
    counts = [0, 0]
    for _ in range(n):
        secs = [s.copy() for s in good]
        for i in rng.choice(len(secs), size=rng.integers(1, min(2, len(secs)) + 1),
                            replace=False):
            secs[i] = mutate_section(rng, secs[i], itemsizes[i])
        bad = repack(comp, spec, secs, itemsizes, container)
        try:
            out = comp.decode(bad, spec, Context(1, ROUND, CLIENT, "up"))
        except WireFormatError:
            counts[0] += 1
            continue
        assert_model(out, spec)
        counts[1] += 1
    return counts[0], counts[1]

