"""QSGD (compressors/qsgd.py): unbiased, levels in 0..s, the paper's variance bound,
reproducible randomness from the context, strict decoding, both level codings."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from method_checks import (assert_wire_round_trip, fuzz, fuzz_framed, fuzz_sections, model,
                           repack, same_bits, sections)

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import Context, build_compressor, coding
from fedmpi.compressors.qsgd import bucket_norms
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

FIELD = "compression.uplink"


def qsgd(**params):
    return build_compressor({"qsgd": params}, field=FIELD)


def ctx(seed=7, rnd=3, client=2, link="up"):
    return Context(seed, rnd, client, link)


def expected_moments(x, bucket, s):
    """Per entry: the float32-rounded-up bucket norm, and the exact variance of Q(x_i)."""
    norms = np.repeat(bucket_norms(x, bucket).astype(np.float64), bucket)[:x.size]
    r = np.abs(x.astype(np.float64)) / norms * s
    f = r - np.floor(r)
    return norms, (norms / s) ** 2 * f * (1 - f)


def draws(comp, x, trials):
    return np.stack([comp.encode({"x": x}, ctx(seed=k)).reconstructed["x"].astype(np.float64)
                     for k in range(trials)])


def test_unbiased_in_expectation():
    """Mean of many draws (different seeds) is within a few standard errors of x for every
    entry, with the exact per-entry variance; nearest rounding (biased) fails the same test."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 150).astype(np.float32)
    comp, trials = qsgd(levels=2, bucket=50), 3000
    q = draws(comp, x, trials)
    norms, var = expected_moments(x, 50, 2)
    se = np.sqrt(var / trials) + 1e-7 * np.abs(x)  # + float32 rounding of the output
    z = (q.mean(axis=0) - x) / se
    assert np.abs(z).max() < 5.5
    assert 0.7 < np.mean(z ** 2) < 1.3  # standardised errors look like N(0, 1)
    nearest = np.sign(x) * norms * np.rint(np.abs(x) / norms * 2) / 2
    assert np.abs((nearest - x) / se).max() > 50  # the test can tell a biased rounding


def test_levels_and_the_papers_variance_bound():
    """Every |Q(x_i)| is norm * l / s with l in {floor(r), floor(r) + 1} within 0..s, and
    the mean squared error per bucket is within min(n/s^2, sqrt(n)/s) ||v||^2 (Lemma 3.1)
    and matches the exact variance."""
    rng = np.random.default_rng(1)
    x = (rng.standard_t(2, 400) * rng.choice([1e-3, 1, 10], 400)).astype(np.float32)
    for s, bucket in [(1, 64), (4, 64), (16, 100), (255, 400)]:
        comp, trials = qsgd(levels=s, bucket=bucket), 300
        q = draws(comp, x, trials)
        norms, var = expected_moments(x, bucket, s)
        lev = np.abs(q) / norms * s
        assert np.allclose(lev, np.rint(lev), atol=1e-3)
        lev = np.rint(lev)
        r = np.abs(x) / norms * s
        assert lev.min() >= 0 and lev.max() <= s
        assert np.all((lev == np.floor(r)) | (lev == np.floor(r) + 1))
        assert np.all(np.sign(q) * np.sign(x) >= 0)
        nb = -(-x.size // bucket)
        pad = nb * bucket - x.size
        mse = np.pad(((q - x) ** 2).mean(axis=0), (0, pad)).reshape(nb, bucket).sum(axis=1)
        sizes = np.full(nb, bucket) - np.eye(nb, dtype=int)[-1] * pad
        v2 = np.pad(x.astype(np.float64) ** 2, (0, pad)).reshape(nb, bucket).sum(axis=1)
        bound = np.minimum(sizes / s**2, np.sqrt(sizes) / s) * v2
        assert np.all(mse <= 1.25 * bound), (s, bucket)
        exact = np.pad(var, (0, pad)).reshape(nb, bucket).sum(axis=1)
        assert np.allclose(mse, exact, rtol=0.35, atol=1e-12), (s, bucket)


@pytest.mark.parametrize("coding_", ["elias", "varint"])
def test_wire_round_trip_and_fuzz(coding_):
    comp = qsgd(levels=5, bucket=16, coding=coding_)
    ts = model()
    enc, _ = assert_wire_round_trip(comp, ts, ctx())
    assert enc.nnz > 0
    refused, accepted = fuzz(comp, ts, ctx())
    assert refused > 1000
    fuzz_framed(comp, ts, ctx())


def test_codings_agree_and_elias_is_the_smaller():
    ts = model(4)
    a = qsgd(coding="elias").encode(ts, ctx())
    b = qsgd(coding="varint").encode(ts, ctx())
    assert same_bits(a.reconstructed, b.reconstructed) and a.nnz == b.nnz
    assert a.payload.nbytes < b.payload.nbytes


def test_randomness_is_a_function_of_the_context():
    comp, ts = qsgd(levels=3, bucket=32), model(5)
    base = comp.encode(ts, ctx()).payload
    assert np.array_equal(comp.encode(ts, ctx()).payload, base)
    for other in (ctx(seed=8), ctx(rnd=4), ctx(client=3), ctx(link="down")):
        enc = comp.encode(ts, other)
        assert not np.array_equal(enc.payload, base)
        # the receiver needs no randomness: any context decodes it
        assert same_bits(comp.decode(enc.payload, spec_of(ts), ctx(seed=99)), enc.reconstructed)


def test_refuses_nan_inf_and_norm_overflow():
    comp = qsgd()
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            comp.encode({"w": np.array([1.0, bad], np.float32)}, ctx())
    with pytest.raises(ValueError, match="exceeds float32"):
        comp.encode({"w": np.full(4, 3e38, np.float32)}, ctx())


def test_extremes_stay_finite():
    big = np.finfo(np.float32).max
    ts = {"w": np.array([big, 0, 1e-45, -1e-45], np.float32),
          "tiny": np.array([1e-45, -1e-45, 0], np.float32)}
    comp = qsgd(levels=1, bucket=1)
    enc, _ = assert_wire_round_trip(comp, ts, ctx())
    assert enc.reconstructed["w"][0] == big  # norm big, level 1 of 1: exact


@pytest.mark.parametrize("params, field", [
    ({"levels": 0}, "levels"), ({"levels": 1 << 17}, "levels"), ({"bucket": 0}, "bucket"),
    ({"coding": "huffman"}, "coding"), ({"levels": 2.5}, "levels"), ({"bits": 4}, "bits")])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        qsgd(**params)
    assert err.value.field == f"{FIELD}.qsgd.{field}"


# ------------------------------------------------------------ strict decoding, field by field

TS = {"a": np.array([0.5, -1.0, 0.0, 2.0, 0.25], np.float32), "b": np.zeros(3, np.float32)}
SPEC = spec_of(TS)


def forged(coding_, edit):
    comp = qsgd(levels=4, bucket=2, coding=coding_)
    enc = comp.encode(TS, ctx())
    stream = [(1, 1 << 10)] * (2 if coding_ == "elias" else 1)
    parts = sections(comp, enc.payload, SPEC, [(8, 16), (4, 20), (1, 1), *stream])
    edit(parts)
    sizes = [8, 4, 1, 1, 1][:len(parts)]
    return comp, repack(comp, SPEC, parts, sizes)


def _f32(parts, i, value):
    parts[1].view("<f4")[i] = value


def _count(parts, i, value):
    parts[0].view("<u8")[i] = value


def _codes(counts, values, coder="varint", signs=b"\x00"):
    """A whole level stream: per tensor counts, sign bytes and the (d, l) codes."""
    def edit(parts):
        parts[0] = np.asarray(counts, "<u8").view(np.uint8)
        parts[2] = np.frombuffer(signs, np.uint8).copy()
        v = np.asarray(values, np.int64)
        if coder == "varint":
            parts[3] = coding.varint_encode(v)
        else:
            parts[3], parts[4] = coding.gamma_encode(v)
    return edit


def _raw(counts, data):
    def edit(parts):
        parts[0] = np.asarray(counts, "<u8").view(np.uint8)
        parts[2] = np.zeros(1, np.uint8)
        parts[3] = np.frombuffer(data, np.uint8).copy()
    return edit


# the spec: a = 5 entries (buckets of 2: norms > 0), b = 3 zeros (norms 0)
@pytest.mark.parametrize("coding_, edit, match", [
    ("elias", lambda p: _f32(p, 0, -1.0), "finite and >= \\+0.0"),
    ("elias", lambda p: _f32(p, 3, -0.0), "finite and >= \\+0.0"),
    ("elias", lambda p: _f32(p, 2, np.inf), "finite and >= \\+0.0"),
    ("elias", lambda p: _f32(p, 2, np.nan), "finite and >= \\+0.0"),
    ("elias", lambda p: _count(p, 0, 6), "declares 6 non-zero levels"),
    ("elias", lambda p: _count(p, 1, 2**64 - 1), "declares 18446744073709551615 non-zero"),
    ("elias", lambda p: _count(p, 1, 1), "Elias codes, expected|sign bits"),
    ("elias", _codes([2, 0], [1, 1, 1, 1], "elias", b""), "sign bits: 0 bytes"),
    ("elias", _codes([2, 0], [1, 1, 1, 1], "elias", b"\x04"), "padding bits"),
    ("varint", _codes([2, 0], [1, 1, 1, 5]), "level outside 1..4"),
    ("varint", _codes([2, 0], [0, 1, 1, 1]), "distance < 1"),
    ("varint", _codes([2, 0], [1, 1, 5, 1]), "position 5, it has 5"),
    ("varint", _codes([2, 1], [1, 1, 1, 1, 3, 2]), "bucket of norm 0"),
    ("varint", _raw([2, 0], b"\x01\x01\x01\x80"), "3 varints, expected 4"),
    ("varint", _raw([2, 0], b"\x01\x01\x01\x01\x01"), "varint bytes, more than"),
    ("varint", _raw([2, 0], b"\x01\x01\x01"), "varints, expected"),
    ("elias", _codes([2, 0], [1, 5, 1, 1], "elias"), "above its bound|outside 1..4"),
    ("elias", _codes([2, 0], [1, 1, 1], "elias"), "Elias codes, expected"),
    ("elias", lambda p: p.__setitem__(3, np.append(p[3], np.uint8(0))), "zero bytes after"),
    ("elias", lambda p: p.__setitem__(4, np.append(p[4], np.uint8(0))), "mantissa"),
])
def test_malformed_fields_are_refused(coding_, edit, match):
    comp, payload = forged(coding_, edit)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(payload, SPEC, ctx())


def test_forger_without_edits_is_exact():
    for coding_ in ("elias", "varint"):
        comp, payload = forged(coding_, lambda parts: None)
        assert np.array_equal(payload, comp.encode(TS, ctx()).payload)


def test_payload_of_another_method_model_or_parameters_is_refused():
    enc = qsgd().encode(TS, ctx())
    for comp, spec in ((qsgd(levels=8), SPEC), (qsgd(coding="varint"), SPEC),
                       (build_compressor({"terngrad": {}}, field=FIELD), SPEC),
                       (qsgd(), [("a", (5,)), ("b", (4,))])):
        with pytest.raises(WireFormatError, match="codec|another model"):
            comp.decode(enc.payload, spec, ctx())


# ------------------------------------------------------------ the integer codes


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 2**40), max_size=50))
def test_elias_gamma_round_trip_and_size(values):
    v = np.asarray(values, np.int64)
    unary, mant = coding.gamma_encode(v)
    bits = sum(2 * (int(x).bit_length() - 1) + 1 for x in values)  # classic gamma size
    assert unary.nbytes + mant.nbytes <= (bits + 14) // 8 + 1
    out = coding.gamma_decode(unary, mant, len(values), max(values, default=1), "t")
    assert out.tolist() == values


@pytest.mark.parametrize("data, count, match", [
    (b"\x81\x00", 1, "longer form"), (b"\x01\x81", 1, "1 bytes after the last varint"),
    (b"\x80\x80\x01\x01\x01", 3, "a varint of 3 bytes"), (b"\x01", 2, "1 varints, expected 2")])
def test_varint_decoding_is_strict(data, count, match):
    with pytest.raises(WireFormatError, match=match):
        coding.varint_decode(np.frombuffer(data, np.uint8), count, 1000, "t")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 2**40), max_size=50))
def test_varint_round_trip_and_size(values):
    buf = coding.varint_encode(np.asarray(values, np.int64))
    assert buf.nbytes == sum(max(1, -(-int(x).bit_length() // 7)) for x in values)
    assert coding.varint_decode(buf, len(values), max(values, default=0), "t").tolist() == values


@pytest.mark.parametrize("coding_", ["elias", "varint"])
def test_section_fuzz(coding_):
    """Fields changed behind a valid header: refused, or a sane model."""
    comp, ts = qsgd(levels=5, bucket=16, coding=coding_), model()
    n = sum(t.size for t in ts.values())
    stream = [(1, 1 << 16)] * (2 if coding_ == "elias" else 1)
    refused, accepted = fuzz_sections(comp, ts, ctx(), [(8, 48), (4, 4 * 100), (1, n), *stream],
                                      [8, 4, 1, 1, 1][:3 + len(stream)])
    assert refused > 800 and accepted > 0


def test_a_bucket_larger_than_the_tensor_costs_nothing_extra():
    """Encoding padded each tensor to the bucket size: 128 MiB for 10 entries at 2^24."""
    comp, ts = qsgd(bucket=1 << 24), {"w": np.ones(10, np.float32)}
    tracemalloc.start()
    try:
        enc = comp.encode(ts, ctx())
        comp.decode(enc.payload, spec_of(ts), ctx())
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20
