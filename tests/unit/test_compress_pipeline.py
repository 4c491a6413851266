"""Pipeline contract: round trips, error bounds, error feedback, config validation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmpi.compress import build, build_pipeline, spec_of
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

# every finite float32: -0.0, subnormals and +-3.4e38 included (NaN and inf are never sent)
any32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
weights32 = st.floats(-4.0, 4.0, width=32) | st.sampled_from([0.0, -0.0])

LOSSLESS = [
    [],
    [{"sparse": {}}],
    [{"sparse": {"format": "bitmap"}}],
    [{"sparse": {"format": "delta"}}],
    [{"zstd": {"level": 1}}],
    [{"zstd": {"level": 3, "shuffle": False}}],
    [{"sparse": {"format": "auto"}}, {"zstd": {}}],
    [{"prune": {"rate": 0}}, {"sparse": {}}, {"zstd": {}}],
]
LOSSY = [
    [{"prune": {"rate": 0.5}}, {"sparse": {}}, {"zstd": {}}],
    [{"prune": {"rate": 0.9, "scope": "tensor"}}, {"quantize": {"bits": 3}}, {"sparse": {}}],
    [{"quantize": {"method": "uniform", "bits": 16}}, {"memory": {}}, {"zstd": {}}],
    [{"quantize": {"method": "pow2", "bits": 3}}, {"sparse": {"format": "delta"}}],
    [{"prune": {"rate": 0.3}}, {"quantize": {"method": "float16"}}, {"sparse": {}}],
    [{"quantize": {"method": "bfloat16"}}, {"sparse": {"format": "bitmap"}}, {"zstd": {}}],
]


def model(arrays):
    return {f"layer{i}.weight": a for i, a in enumerate(arrays)}


shapes = st.sampled_from([(0,), (1,), (7,), (3, 5), (2, 3, 4), (4, 1, 3, 3)])
tensors = st.lists(shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=any32)),
                   min_size=1, max_size=4).map(model)
finite_tensors = st.lists(
    shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=weights32)),
    min_size=1, max_size=4).map(model)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


@settings(max_examples=40, deadline=None)
@given(tensors, st.sampled_from(range(len(LOSSLESS))))
def test_lossless_round_trip_is_bit_exact(ts, which):
    pipe = build_pipeline(LOSSLESS[which])
    assert not pipe.lossy
    enc = pipe.encode(ts)
    out = pipe.decode(enc.payload, spec_of(ts))
    assert list(out) == list(ts)
    for k in ts:
        assert out[k].dtype == np.float32 and out[k].shape == ts[k].shape
        assert np.array_equal(bits(out[k]), bits(ts[k]))
        assert np.array_equal(bits(enc.reconstructed[k]), bits(ts[k]))
    assert enc.numel == sum(t.size for t in ts.values()) and enc.dense_bytes == 4 * enc.numel


@settings(max_examples=40, deadline=None)
@given(finite_tensors, st.sampled_from(range(len(LOSSY))))
def test_reconstructed_is_what_the_decoder_returns(ts, which):
    pipe = build_pipeline(LOSSY[which])
    enc = pipe.encode(ts, memory=pipe.new_memory())
    out = pipe.decode(memoryview(enc.payload.tobytes()), spec_of(ts))
    for k in ts:
        assert np.array_equal(bits(out[k]), bits(enc.reconstructed[k]))


values = hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=60, deadline=None)
@given(values, st.integers(1, 16))
def test_uniform_within_half_a_step(v, k):
    q = build("quantize", {"method": "uniform", "bits": k})
    codes, lo, scale = q.encode(v)
    got = q.decode(codes, v.size, lo, scale)
    if v.size:
        ulp = np.spacing(np.float32(np.abs(v).max()))
        assert np.all(np.abs(got.astype(np.float64) - v) <= scale / 2 + ulp)


@settings(max_examples=60, deadline=None)
@given(values)
def test_float16_and_bfloat16_relative_bounds(v):
    for method, rel, floor in (("float16", 2.0**-11, 2.0**-25), ("bfloat16", 2.0**-8, 2e-38)):
        q = build("quantize", {"method": method})
        got = q.decode(q.encode(v)[0], v.size, 0, 0).astype(np.float64)
        assert np.all(np.abs(got - v) <= np.maximum(np.abs(v) * rel, floor))


@settings(max_examples=60, deadline=None)
@given(values, st.integers(1, 8))
def test_pow2_bound(v, e):
    q = build("quantize", {"method": "pow2", "bits": e})
    codes, emax, _ = q.encode(v)
    got = q.decode(codes, v.size, emax, 0).astype(np.float64)
    nz = got != 0
    assert np.all(np.log2(np.abs(got[nz])) == np.round(np.log2(np.abs(got[nz]))))
    emin = emax - (2**e - 2)
    assert np.all(np.abs(got - v) <= np.maximum(np.abs(v) / 3, 2.0**emin) * (1 + 1e-6))


@settings(max_examples=30, deadline=None)
@given(st.lists(finite_tensors, min_size=1, max_size=3), st.sampled_from([0, 2, 3]))
def test_error_feedback_conserves_mass(rounds, which):
    stages = [s for s in LOSSY[which] if "memory" not in s]
    stages.insert(next(i for i, s in enumerate(stages)
                       if next(iter(s)) in ("sparse", "zstd")) if any(
        next(iter(s)) in ("sparse", "zstd") for s in stages) else len(stages), {"memory": {}})
    pipe = build_pipeline(stages)
    mem = pipe.new_memory()
    spec = spec_of(rounds[0])
    sent = {k: np.zeros(s, np.float64) for k, s in spec}
    given_ = {k: np.zeros(s, np.float64) for k, s in spec}
    for ts in rounds:
        ts = {k: np.resize(v, dict(spec)[k]).astype(np.float32) for k, v in
              zip(dict(spec), list(ts.values()) + [np.zeros(1)] * len(spec))}
        before = {k: v.copy() for k, v in mem.state().items()}
        enc = pipe.encode(ts, memory=mem)
        after = mem.state()
        for k in ts:
            comp = ts[k] + before.get(k, np.zeros_like(ts[k]))
            r = enc.reconstructed[k]
            # residual + sent == compensated input, up to one float32 rounding
            tol = np.spacing(np.maximum(np.abs(comp), np.abs(r)))
            assert np.all(np.abs(after[k].astype(np.float64) + r - comp) <= tol)
            sent[k] += r
            given_[k] += ts[k]
    for k in sent:  # over rounds: everything given is sent or still owed
        err = np.abs(sent[k] + mem.state()[k] - given_[k])
        assert np.all(err <= 1e-5 * (1 + np.abs(given_[k])) * len(rounds))


def test_memory_state_round_trips():
    pipe = build_pipeline([{"prune": {"rate": 0.5}}, {"memory": {}}])
    ts = {"w": np.arange(1, 9, dtype=np.float32).reshape(2, 4)}
    mem = pipe.new_memory()
    pipe.encode(ts, memory=mem)
    other = pipe.new_memory()
    other.load(mem.state())
    a, b = pipe.encode(ts, memory=mem), pipe.encode(ts, memory=other)
    assert np.array_equal(a.payload, b.payload)
    with pytest.raises(ValueError, match="memory"):
        pipe.encode(ts)
    assert build_pipeline([]).new_memory() is None


def test_pruned_weights_compress_well():
    rng = np.random.default_rng(0)
    ts = {f"conv{i}.weight": rng.normal(0, 0.05, (64, 64, 3, 3)).astype(np.float32)
          for i in range(3)}
    size = {}
    for rate in (0.0, 0.5, 0.9):
        pipe = build_pipeline([{"prune": {"rate": rate}}, {"sparse": {}}, {"zstd": {}}])
        enc = pipe.encode(ts)
        size[rate] = enc.payload.nbytes
        assert enc.nnz == enc.numel - int(np.floor(rate * enc.numel + 1e-6))
    assert size[0.5] < 0.5 * enc.dense_bytes  # the paper's headline: half the weights, < half the bytes
    assert size[0.9] < 0.2 * size[0.0]
    q = build_pipeline([{"prune": {"rate": 0.9}}, {"quantize": {"bits": 8}}, {"sparse": {}},
                        {"zstd": {}}])
    assert q.encode(ts).payload.nbytes < 0.05 * 4 * 3 * 64 * 64 * 9


def test_codec_ids_and_names():
    a = build_pipeline([{"prune": {"rate": 0.5}}, {"sparse": {}}, {"zstd": {"level": 3}}])
    b = build_pipeline([{"prune": {"rate": 0.5, "scope": "global"}}, {"sparse": {}},
                        {"zstd": {}}])
    c = build_pipeline([{"prune": {"rate": 0.6}}, {"sparse": {}}, {"zstd": {"level": 3}}])
    assert a.codec_id == b.codec_id != c.codec_id  # defaults spelled out or not: same codec
    assert a.name == "prune(0.5)+sparse(auto)+zstd(3)" and build_pipeline([]).name == "dense"
    assert a.lossy and not build_pipeline([{"prune": {"rate": 0}}]).lossy
    ts = {"w": np.ones((3, 3), np.float32)}
    with pytest.raises(WireFormatError, match="codec"):
        c.decode(a.encode(ts).payload, spec_of(ts))
    with pytest.raises(WireFormatError, match="another model"):
        a.decode(a.encode(ts).payload, [("w", (9,))])


@pytest.mark.parametrize("stages, field, needle", [
    ([{"prune": {"rate": 1.0}}], "compression.uplink[0].prune.rate", "[0, 1)"),
    ([{"prune": {"rate": -0.1}}], "compression.uplink[0].prune.rate", "[0, 1)"),
    ([{"prune": {"rate": "half"}}], "compression.uplink[0].prune.rate", "float"),
    ([{"prune": {"scope": "layer"}}], "compression.uplink[0].prune.scope", "global | tensor"),
    ([{"prune": {"rate": 0.5}}, {"quantize": {"bits": 17}}],
     "compression.uplink[1].quantize.bits", "1..16"),
    ([{"quantize": {"method": "pow2", "bits": 9}}], "compression.uplink[0].quantize.bits", "1..8"),
    ([{"quantize": {"method": "float16", "bits": 8}}], "compression.uplink[0].quantize.bits",
     "16"),
    ([{"quantize": {"method": "int4"}}], "compression.uplink[0].quantize.method", "uniform"),
    ([{"quantize": {"bits": True}}], "compression.uplink[0].quantize.bits", "int"),
    ([{"zstd": {"level": 0}}], "compression.uplink[0].zstd.level", "1..22"),
    ([{"zstd": {"shuffle": 1}}], "compression.uplink[0].zstd.shuffle", "bool"),
    ([{"sparse": {"format": "csr"}}], "compression.uplink[0].sparse.format", "bitmap"),
    ([{"sparse": {"fmt": "auto"}}], "compression.uplink[0].sparse.fmt", "format"),
    ([{"topk": {}}], "compression.uplink[0]", "prune"),
    ([{"prune": {}, "sparse": {}}], "compression.uplink[0]", "one-key"),
    ([{"sparse": {}}, {"prune": {}}], "compression.uplink[1]", "in the order"),
    ([{"zstd": {}}, {"zstd": {}}], "compression.uplink[1]", "at most once"),
    ([{"memory": {}}, {"quantize": {}}], "compression.uplink[1]", "in the order"),
    ({"prune": {}}, "compression.uplink", "list"),
    ([{"prune": 0.5}], "compression.uplink[0].prune", "mapping"),
])
def test_config_errors_name_the_field(stages, field, needle):
    with pytest.raises(ConfigError) as err:
        build_pipeline(stages, field="compression.uplink")
    assert err.value.field == field
    assert f"'{field}'" in str(err.value) and needle in str(err.value)


def test_empty_and_none_stage_params():
    assert build_pipeline([{"sparse": None}, {"zstd": {}}]).name == "sparse(auto)+zstd(3)"


def test_non_finite_values_are_refused_by_uniform():
    pipe = build_pipeline([{"quantize": {}}])
    with pytest.raises(ValueError, match="NaN or inf"):
        pipe.encode({"w": np.array([1.0, np.nan], np.float32)})


@pytest.mark.parametrize("stages", LOSSLESS + LOSSY)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_pipeline_refuses_non_finite_values(stages, bad):
    """Decoders refuse non-finite values, so no encoder may produce them."""
    pipe = build_pipeline(stages)
    with pytest.raises(ValueError, match="'b' holds NaN or inf"):
        pipe.encode({"a": np.ones(3, np.float32), "b": np.array([0.0, bad], np.float32)},
                    memory=pipe.new_memory())
