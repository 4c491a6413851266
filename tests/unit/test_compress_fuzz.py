"""Decoder fuzzing: damaged messages raise WireFormatError and nothing else."""

import numpy as np
import pytest

from fedmpi.bench.codec import make_model
from fedmpi.compress import build_pipeline, spec_of
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError, frame, parse

PIPELINES = [
    [],
    [{"prune": {"rate": 0.5}}, {"sparse": {}}, {"zstd": {}}],
    [{"prune": {"rate": 0.9}}, {"quantize": {"bits": 5}}, {"sparse": {"format": "delta"}}],
    [{"quantize": {"method": "pow2", "bits": 3}}, {"sparse": {"format": "bitmap"}},
     {"zstd": {"level": 1, "shuffle": False}}],
    [{"quantize": {"method": "bfloat16"}}, {"zstd": {}}],
]


@pytest.fixture(scope="module")
def messages():
    ts = make_model(400, seed=3)
    out = []
    for stages in PIPELINES:
        pipe = build_pipeline(stages)
        enc = pipe.encode(ts, memory=pipe.new_memory())
        buf = frame(Kind.UPDATE, round=5, client=9, payload=enc.payload,
                    codec_id=pipe.codec_id, n_tensors=len(ts))
        out.append((pipe, buf, enc))
    return spec_of(ts), out


def mutate(rng, buf):
    kind = rng.integers(5)
    if kind == 0:  # truncation
        return buf[: rng.integers(0, buf.nbytes)].copy()
    if kind == 1:  # 1..3 bit flips anywhere
        bad = buf.copy()
        for pos in rng.integers(0, bad.nbytes * 8, size=rng.integers(1, 4)):
            bad[pos // 8] ^= np.uint8(1 << (pos % 8))
        return bad
    if kind == 2:  # random header bytes
        bad = buf.copy()
        pos = rng.integers(0, HEADER_SIZE, size=rng.integers(1, 6))
        bad[pos] = rng.integers(0, 256, size=pos.size)
        return bad
    if kind == 3:  # garbage appended
        return np.concatenate([buf, rng.integers(0, 256, rng.integers(1, 64)).astype(np.uint8)])
    bad = buf.copy()  # a burst of random payload bytes
    start = rng.integers(HEADER_SIZE, bad.nbytes)
    bad[start: start + 8] = rng.integers(0, 256, min(8, bad.nbytes - start))
    return bad


def test_damaged_messages_are_refused(messages):
    spec, msgs = messages
    rng = np.random.default_rng(2024)
    refused = 0
    for i in range(10_000):
        pipe, buf, _ = msgs[i % len(msgs)]
        bad = mutate(rng, buf)
        if bad.nbytes == buf.nbytes and np.array_equal(bad, buf):
            continue  # the mutation happened to change nothing
        with pytest.raises(WireFormatError):
            _, payload = parse(bad, expect_kind=Kind.UPDATE)
            pipe.decode(payload, spec)  # not reached: the checksums catch every change
        refused += 1
    assert refused > 9_900


def test_decoder_survives_damaged_payloads_without_checksum(messages):
    """Behind the crc the decoder itself must never crash on garbage: it raises
    WireFormatError or returns tensors of the right shapes."""
    spec, msgs = messages
    rng = np.random.default_rng(7)
    shapes = dict(spec)
    for i in range(3_000):
        pipe, _, enc = msgs[i % len(msgs)]
        bad = mutate(rng, np.concatenate([np.zeros(HEADER_SIZE, np.uint8), enc.payload]))
        try:
            out = pipe.decode(bad[HEADER_SIZE:], spec)
        except WireFormatError:
            continue
        assert {k: v.shape for k, v in out.items()} == shapes
        assert all(v.dtype == np.float32 for v in out.values())


def test_valid_messages_still_decode(messages):
    spec, msgs = messages
    for pipe, buf, enc in msgs:
        out = pipe.decode(parse(buf)[1], spec)
        assert all(np.array_equal(out[k], enc.reconstructed[k]) for k in out)
