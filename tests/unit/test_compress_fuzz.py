"""Decoder fuzzing: malformed messages raise WireFormatError and nothing else.

Two modes. The checksum mode damages framed messages at random: the CRCs must
catch every change. The valid-CRC mode plays a sender that is wrong on purpose
(a bug, another version, a hostile peer): it takes the message apart into its
fields (header, section table, meta prelude, per-tensor table, index and value
bytes, zstd frames), changes some of them, puts it back together and recomputes
both checksums. The decoder must then either refuse it (WireFormatError) or
return the model's tensors - right names, shapes, float32, finite values - while
allocating no more than the model spec allows, whatever the message declares.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import zstandard
from forgery import (FOCUSED, MUTATIONS, VARIANTS, ZSTD, assert_model, crafted, forge,
                     make_corpus, put_together, receive, take_apart)
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmpi.bench.codec import make_model
from fedmpi.compress import build, build_pipeline, spec_of
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
        assert all(np.isfinite(v).all() for v in out.values())


def test_valid_messages_still_decode(messages):
    spec, msgs = messages
    for pipe, buf, enc in msgs:
        out = pipe.decode(parse(buf)[1], spec)
        assert all(np.array_equal(out[k], enc.reconstructed[k]) for k in out)


# ============================================================ valid-CRC mode
# (the forger, its mutations and the pipeline variants: tests/forgery.py)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


def test_taking_apart_and_putting_together_is_exact(corpus):
    """The forger itself: with no mutation it rebuilds every message byte for byte
    (zstd frames included), so what the mutations change is all that changes."""
    spec, msgs, _ = corpus
    for name, (pipe, buf, recon) in msgs.items():
        m = take_apart(pipe, buf)
        assert np.array_equal(put_together(m), buf), name
        out = receive(pipe, spec, put_together(m))
        assert all(np.array_equal(out[k], recon[k]) for k in out), name


def _decode_bounded(pipe, spec, buf, limit):
    """Decode with tracemalloc on: the peak must stay within `limit` bytes (set from the
    model spec, never from the message)."""
    tracemalloc.start()
    try:
        return receive(pipe, spec, buf)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= limit, f"decoding allocated {peak} bytes, more than {limit}"


@pytest.mark.timeout(300)
def test_valid_crc_mutations_of_every_field_and_pipeline(corpus):
    """Each mutation on each pipeline, many times: never another exception, never a
    non-finite or misshapen model, bounded memory (traced for the first cases of
    each, tracing is slow); the structural mutations are always refused."""
    spec, msgs, dense_bytes = corpus
    limit = 64 * dense_bytes + (1 << 20)
    rng = np.random.default_rng(20261127)
    outcomes = {name: [0, 0] for name in MUTATIONS}  # refused, accepted
    for variant, (pipe, buf, _) in msgs.items():
        for name, (_, always) in MUTATIONS.items():
            for rep in range(12):
                bad = forge(pipe, buf, spec, [name], rng)
                if bad is None:
                    break  # does not apply to this pipeline
                if np.array_equal(bad, buf):
                    continue
                try:
                    out = (_decode_bounded(pipe, spec, bad, limit) if rep < 3
                           else receive(pipe, spec, bad))
                except WireFormatError:
                    outcomes[name][0] += 1
                    continue
                assert not always, f"{variant}: {name} mutation was accepted"
                assert_model(out, spec)
                outcomes[name][1] += 1
    # every mutation reached the decoder, and each was refused at least sometimes
    assert all(refused > 0 for refused, _ in outcomes.values()), outcomes


@pytest.mark.timeout(300)
@settings(max_examples=400, deadline=None, derandomize=True)
@given(variant=st.sampled_from(sorted(VARIANTS)),
       names=st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_valid_crc_mutation_combinations(variant, names, seed):
    """Several fields wrong at once (hypothesis shrinks a failure to the fewest)."""
    spec, msgs, _ = make_corpus()
    pipe, buf, _ = msgs[variant]
    bad = forge(pipe, buf, spec, names, np.random.default_rng(seed))
    if bad is None:
        return
    try:
        out = receive(pipe, spec, bad)
    except WireFormatError:
        return  # (two mutations may undo each other, so acceptance is not an error here)
    assert_model(out, spec)


# ============================================================ focused regressions
# One crafted message per rule (forgery.FOCUSED), checksums valid: each was accepted
# (or raised another exception) before the decoders checked it.


@pytest.mark.parametrize("stages, edit, match, model", FOCUSED)
def test_malformed_fields_are_refused(stages, edit, match, model):
    pipe, spec, buf = crafted(stages, edit, model)
    with pytest.raises(WireFormatError, match=match):
        receive(pipe, spec, buf)


@pytest.mark.parametrize("k", range(1, 17))
def test_uniform_extremes_stay_finite_and_within_bound(k):
    """±3.4e38 in one tensor: the rounded scale carried the top level to inf for
    k = 5, 7, 9, ... (the encoder now steps the scale down one ulp instead)."""
    big = np.finfo(np.float32).max
    v = np.array([-big, big, 0.0, 1.0], np.float32)
    if k == 1:  # one step cannot span twice float32's range
        with pytest.raises(ValueError, match="cannot span"):
            build_pipeline([{"quantize": {"bits": 1}}]).encode({"w": v})
        return
    pipe = build_pipeline([{"quantize": {"bits": k}}])
    enc = pipe.encode({"w": v})
    out = pipe.decode(enc.payload, [("w", (4,))])["w"]
    assert np.array_equal(out, enc.reconstructed["w"]) and np.isfinite(out).all()
    q = build("quantize", {"bits": k})
    codes, lo, scale = q.encode(v)
    got = q.decode(codes, v.size, lo, scale)
    assert np.array_equal(got, out)
    ulp32 = np.ldexp(1.0, np.frexp(got.astype(np.float64))[1] - 24)  # float32 ulp of x^
    assert np.all(np.abs(got.astype(np.float64) - v) <= scale / 2 + ulp32)


def test_bfloat16_clamps_instead_of_overflowing_to_inf():
    big = np.finfo(np.float32).max
    pipe = build_pipeline([{"quantize": {"method": "bfloat16"}}])
    v = np.array([big, -big, 3.39e38, 1.0], np.float32)
    out = pipe.decode(pipe.encode({"w": v}).payload, [("w", (4,))])["w"]
    assert np.isfinite(out).all()
    assert np.all(np.abs(out.astype(np.float64) - v) <= np.abs(v) * 2.0**-8)


def test_declared_sizes_are_bounded_by_the_model_before_anything_is_allocated():
    """A zstd section declaring (and holding) 64 MiB for a 21-entry model."""
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(64 << 20))

    def edit(m):
        m.values = b""
        m.sections[2].raw_len = 64 << 20
        m.sections[2].suffix = bomb

    pipe, spec, buf = crafted(ZSTD, edit)
    with pytest.raises(WireFormatError, match="more than this model can need"):
        _decode_bounded(pipe, spec, buf, limit=1 << 20)
