"""TernGrad (compressors/terngrad.py): ternary levels {-1, 0, +1} * max|x| per bucket,
unbiased, reproducible from the context, 2 bits per entry, strict decoding."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from method_checks import (assert_wire_round_trip, fuzz, fuzz_framed, fuzz_sections, model,
                           repack, sections)

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import Context, build_compressor
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

FIELD = "compression.downlink"


def terngrad(**params):
    return build_compressor({"terngrad": params}, field=FIELD)


def ctx(seed=7, rnd=3, client=2, link="up"):
    return Context(seed, rnd, client, link)


def bucket_max(x, bucket):
    nb = -(-x.size // bucket)
    a = np.pad(np.abs(x), (0, nb * bucket - x.size)).reshape(nb, bucket).max(axis=1)
    return np.repeat(a, bucket)[:x.size].astype(np.float64)


def test_ternary_levels_and_scale():
    """Every output is 0 or sign(x) * max|x| of its bucket (exactly), the largest entry of
    each bucket is always sent, zeros stay zero."""
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 1, 1000) * rng.choice([1e-3, 1, 30], 1000)).astype(np.float32)
    x[::97] = 0
    for bucket in (1, 7, 64, 1000, 5000):
        comp = terngrad(bucket=bucket)
        s = bucket_max(x, bucket)
        for seed in range(5):
            q = comp.encode({"x": x}, ctx(seed=seed)).reconstructed["x"].astype(np.float64)
            assert np.all((q == 0) | (q == np.sign(x) * s)), bucket
            assert np.all(q[np.abs(x) == s] == x[np.abs(x) == s])
            assert np.all(q[x == 0] == 0)


def test_unbiased_in_expectation():
    """Mean of many draws is within a few standard errors of x for every entry (exact
    variance s^2 p (1 - p), p = |x| / s); deterministic ternarization fails the same test."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 120).astype(np.float32)
    comp, trials = terngrad(bucket=40), 3000
    q = np.stack([comp.encode({"x": x}, ctx(seed=k)).reconstructed["x"].astype(np.float64)
                  for k in range(trials)])
    s = bucket_max(x, 40)
    p = np.abs(x) / s
    se = np.sqrt(s**2 * p * (1 - p) / trials) + 1e-7 * np.abs(x)
    z = (q.mean(axis=0) - x) / se
    assert np.abs(z).max() < 5.5
    assert 0.7 < np.mean(z[p < 1] ** 2) < 1.3
    rounded = np.sign(x) * s * np.rint(p)
    assert np.abs((rounded - x) / se).max() > 50


def test_wire_round_trip_size_and_fuzz():
    comp, ts = terngrad(bucket=16), model()
    enc, _ = assert_wire_round_trip(comp, ts, ctx())
    n = sum(t.size for t in ts.values())
    nb = sum(-(-t.size // 16) for t in ts.values())
    assert enc.payload.nbytes == 12 + 4 + 2 * 20 + 4 * nb + (2 * n + 7) // 8
    refused, _ = fuzz(comp, ts, ctx())
    assert refused > 800
    fuzz_framed(comp, ts, ctx())


def test_randomness_is_a_function_of_the_context():
    comp, ts = terngrad(bucket=32), model(5)
    base = comp.encode(ts, ctx()).payload
    assert np.array_equal(comp.encode(ts, ctx()).payload, base)
    for other in (ctx(seed=8), ctx(rnd=4), ctx(client=3), ctx(link="down")):
        assert not np.array_equal(comp.encode(ts, other).payload, base)


def test_refuses_nan_and_inf():
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            terngrad().encode({"w": np.array([1.0, bad], np.float32)}, ctx())


@pytest.mark.parametrize("params, field", [({"bucket": 0}, "bucket"), ({"bucket": 1 << 25},
                                           "bucket"), ({"bucket": "8"}, "bucket"),
                                          ({"levels": 3}, "levels")])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        terngrad(**params)
    assert err.value.field == f"{FIELD}.terngrad.{field}"


TS = {"a": np.array([0.5, -1.0, 0.0, 2.0, 0.25], np.float32), "b": np.zeros(3, np.float32)}
SPEC = spec_of(TS)  # buckets of 2: a -> 3 scales > 0, b -> 2 scales 0; 8 codes = 2 bytes


def _scale(i, v):
    def edit(parts):
        parts[0].view("<f4")[i] = v
    return edit


def _code(entry, code):
    def edit(parts):
        byte, shift = divmod(2 * entry, 8)
        parts[1][byte] = (parts[1][byte] & ~np.uint8(3 << shift)) | np.uint8(code << shift)
    return edit


@pytest.mark.parametrize("edit, match", [
    (_scale(0, -0.5), ">= \\+0.0"), (_scale(3, -0.0), ">= \\+0.0"), (_scale(1, np.inf), "finite"),
    (_scale(2, np.nan), "finite"), (_code(1, 3), "code 3"), (_code(6, 1), "bucket of scale 0"),
    (lambda p: p.__setitem__(1, p[1][:1]), "1 bytes for 8 2-bit codes"),
    (lambda p: p.__setitem__(0, p[0][:16]), "4 scales, expected 5"),
])
def test_malformed_fields_are_refused(edit, match):
    comp = terngrad(bucket=2)
    parts = sections(comp, comp.encode(TS, ctx()).payload, SPEC, [(4, 20), (1, 2)])
    edit(parts)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, SPEC, parts, [4, 1]), SPEC, ctx())


def test_padding_bits_are_refused():
    comp, ts = terngrad(bucket=4), {"w": np.array([1.0, -1.0, 0.5], np.float32)}
    parts = sections(comp, comp.encode(ts, ctx()).payload, spec_of(ts), [(4, 4), (1, 1)])
    assert np.array_equal(repack(comp, spec_of(ts), parts, [4, 1]),
                          comp.encode(ts, ctx()).payload)  # the forger changes nothing itself
    parts[1][0] |= 0x40
    with pytest.raises(WireFormatError, match="padding bits"):
        comp.decode(repack(comp, spec_of(ts), parts, [4, 1]), spec_of(ts), ctx())


def test_section_fuzz():
    comp, ts = terngrad(bucket=16), model()
    refused, accepted = fuzz_sections(comp, ts, ctx(), [(4, 400), (1, 1000)], [4, 1])
    assert refused > 500 and accepted > 0


def test_a_bucket_larger_than_the_tensor_costs_nothing_extra():
    """Encoding padded each tensor to the bucket size: 64 MiB for 10 entries at 2^24."""
    comp, ts = terngrad(bucket=1 << 24), {"w": np.ones(10, np.float32)}
    tracemalloc.start()
    try:
        enc = comp.encode(ts, ctx())
        comp.decode(enc.payload, spec_of(ts), ctx())
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20
    assert np.array_equal(enc.reconstructed["w"], ts["w"])  # max |x| = 1: every entry sent
