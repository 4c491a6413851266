"""The fused numba codec gives the numpy reference path's bytes, tensors and errors."""

import logging

import numpy as np
import pytest
from forgery import (FOCUSED, PAYLOAD_MUTATIONS, VARIANTS, crafted, forge, make_corpus,
                     mutation_outcomes, same_outcome)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmpi.compress import build_pipeline, fused, spec_of
from fedmpi.wire import HEADER_SIZE, WireFormatError

pytestmark = pytest.mark.skipif(fused.K is None, reason="numba is not installed")

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tied32 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 3e-39, -3e-39])
FORMATS = ("auto", "bitmap", "delta", "dense")


def stages(rate, scope="global", tensors="all", fmt="auto", zstd=False, memory=False):
    out = [{"prune": {"rate": rate, "scope": scope, "tensors": tensors}}] if rate is not None \
        else []
    out += [{"memory": {}}] if memory else []
    out += [{"sparse": {"format": fmt}}]
    return out + ([{"zstd": {"level": 1}}] if zstd else [])


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_same(pipe, tensors, memory=False):
    """Fused and reference: same payload, nnz, reconstruction, decode (bit for bit)."""
    mem_f, mem_r = (pipe.new_memory(), pipe.new_memory()) if memory else (None, None)
    for _ in range(2 if memory else 1):  # a second round sees the residual
        got = fused.encode(pipe, tensors, memory=mem_f)
        with fused.disabled():
            want = pipe.encode(tensors, memory=mem_r)
            ref_dec = pipe.decode(want.payload, spec_of(tensors))
        assert np.array_equal(got.payload, want.payload)
        assert (got.nnz, got.numel, got.dense_bytes) == (want.nnz, want.numel, want.dense_bytes)
        dec = fused.decode(pipe, got.payload, spec_of(tensors))
        for k in tensors:
            assert dec[k].shape == want.reconstructed[k].shape
            assert np.array_equal(bits(got.reconstructed[k]), bits(want.reconstructed[k]))
            assert np.array_equal(bits(dec[k]), bits(ref_dec[k]))
        if memory:
            for k in tensors:
                assert np.array_equal(bits(mem_f.residual[k]), bits(mem_r.residual[k]))


@settings(max_examples=200, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(0, 150), elements=finite32 | tied32),
                min_size=1, max_size=4),
       st.one_of(st.none(), st.floats(0, 0.999)), st.sampled_from(FORMATS),
       st.sampled_from(("global", "tensor")), st.booleans())
def test_fused_matches_reference(flats, rate, fmt, scope, zstd):
    tensors = {f"t{i}": f for i, f in enumerate(flats)}
    assert_same(build_pipeline(stages(rate, scope=scope, fmt=fmt, zstd=zstd)), tensors)


@settings(max_examples=40, deadline=None)
@given(st.lists(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2, max_side=20),
                           elements=finite32 | tied32), min_size=1, max_size=3),
       st.floats(0, 0.99))
def test_weights_only_and_error_feedback(flats, rate):
    tensors = {f"t{i}": f for i, f in enumerate(flats)}
    assert_same(build_pipeline(stages(rate, tensors="weights")), tensors)
    assert_same(build_pipeline(stages(rate, memory=True)), tensors, memory=True)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.875, 0.9, 0.99])
@pytest.mark.parametrize("kind", ["laplace", "ties", "equal", "zeros", "signed-zeros"])
def test_large_tensors_take_the_sampled_band(rate, kind):
    """> 131,072 entries: the sample band (and, for heavy ties, the histogram fallback)."""
    rng = np.random.default_rng(7)
    n = 300_001
    if kind == "laplace":
        x = rng.laplace(size=n)
    elif kind == "ties":  # 5 magnitudes: the cut falls inside a run of ties
        x = rng.choice([0.1, -0.2, 0.3, 0.4, -0.5], size=n)
    elif kind == "equal":
        x = np.full(n, 0.25)
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.6, 0.0, rng.normal(size=n))
    else:
        x = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    x = x.astype(np.float32)
    tensors = {"a": x[:70_000].reshape(700, 100), "b": x[70_000:70_003], "c": x[70_003:]}
    for fmt in ("auto", "bitmap", "delta"):
        assert_same(build_pipeline(stages(rate, fmt=fmt)), tensors)
    pipe = build_pipeline(stages(rate))
    kept = fused.encode(pipe, tensors).nnz
    drop = int(np.floor(rate * n + 1e-6))
    if kind in ("laplace", "ties", "equal"):  # no zeros: exactly n - floor(rate n) stay
        assert kept == n - drop


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 65, 127, 129])
def test_tiny_and_odd_sizes(n):
    rng = np.random.default_rng(n)
    t = {"w": rng.normal(size=n).astype(np.float32), "b": np.zeros(3, np.float32)}
    for rate in (None, 0.0, 0.5):
        for fmt in FORMATS:
            assert_same(build_pipeline(stages(rate, fmt=fmt)), t)


def test_decoder_refuses_what_the_reference_refuses():
    """Random corruptions: both raise WireFormatError, or both return the same tensors."""
    rng = np.random.default_rng(3)
    x = rng.laplace(size=5000).astype(np.float32)
    tensors = {"a": x[:4000].reshape(40, 100), "b": x[4000:]}
    for rate, fmt in ((0.5, "bitmap"), (0.95, "delta"), (0.0, "dense"), (0.7, "auto")):
        pipe = build_pipeline(stages(rate, fmt=fmt))
        payload = fused.encode(pipe, tensors).payload
        spec = spec_of(tensors)
        for trial in range(300):
            bad = payload.copy()
            if trial % 3 == 0:
                bad = bad[: rng.integers(0, bad.size)]
            else:
                for _ in range(1 + trial % 4):
                    i = rng.integers(0, bad.size)
                    bad[i] ^= np.uint8(1 << rng.integers(0, 8))
            outcomes = []
            for decode in (lambda b, p=pipe, s=spec: fused.decode(p, b, s),
                           lambda b, p=pipe, s=spec: _reference_decode(p, b, s)):
                try:
                    outcomes.append(decode(bad))
                except WireFormatError as exc:
                    outcomes.append(type(exc))
            f, r = outcomes
            if isinstance(r, dict) and isinstance(f, dict):
                assert all(np.array_equal(bits(f[k]), bits(r[k])) for k in r)
            else:
                assert f is r is WireFormatError, (trial, f, r)


def _reference_decode(pipe, payload, spec):
    with fused.disabled():
        return pipe.decode(payload, spec)


# ------------------------------------------------- valid-CRC forgeries (tests/forgery.py)
# The checksums say nothing about a wrong sender: each forged message is refused by
# both decoders or decoded by both to the same bits.

FUSED_VARIANTS = sorted(v for v, st_ in VARIANTS.items() if fused.applies(build_pipeline(st_)))


def _fused(pipe, spec):
    return lambda payload: fused.decode(pipe, payload, spec)


def _numpy(pipe, spec):
    return lambda payload: _reference_decode(pipe, payload, spec)


@pytest.mark.timeout(300)
def test_valid_crc_mutations_are_refused_or_decoded_alike():
    assert {"dense", "dense+zstd", "bitmap", "delta", "auto+zstd", "sparse-dense"} <= \
        set(FUSED_VARIANTS)
    outcomes = mutation_outcomes(FUSED_VARIANTS, _fused, _numpy)
    applied = {k: v for k, v in outcomes.items() if sum(v)}  # (k-bit padding: no float32)
    assert len(applied) >= len(outcomes) - 1 and all(r > 0 for r, _ in applied.values()), \
        outcomes
    assert sum(accepted for _, accepted in outcomes.values()) > 0, outcomes


@pytest.mark.timeout(300)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(variant=st.sampled_from(FUSED_VARIANTS),
       names=st.lists(st.sampled_from(PAYLOAD_MUTATIONS), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_valid_crc_mutation_combinations_alike(variant, names, seed):
    spec, msgs, _ = make_corpus()
    pipe, buf, _ = msgs[variant]
    bad = forge(pipe, buf, spec, names, np.random.default_rng(seed))
    if bad is not None:
        same_outcome(_fused(pipe, spec), _numpy(pipe, spec), bad[HEADER_SIZE:])


@pytest.mark.parametrize("stages, edit, match, model",
                         [c for c in FOCUSED if fused.applies(build_pipeline(c[0]))])
def test_each_strict_rule_holds_on_the_fused_decoder(stages, edit, match, model):
    """The focused one-rule messages of the fuzz, with the reference's error."""
    pipe, spec, buf = crafted(stages, edit, model)
    for decode in (_fused(pipe, spec), _numpy(pipe, spec)):
        with pytest.raises(WireFormatError, match=match):
            decode(buf[HEADER_SIZE:])


@pytest.mark.parametrize("where", ["pruned", "unpruned", "tiny-rate", "dense"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("n", [100, 300_001])  # exact band; sampled band (the scan's max)
def test_encoder_refuses_nan_and_inf_like_the_reference(where, bad, n):
    """The fused encoder sees NaN/inf in the pruning scan (or, for tensors it does not
    scan, in a separate one) and raises the reference's ValueError for that tensor."""
    rng = np.random.default_rng(n)
    t = {"w": rng.laplace(size=(n // 100, 100)).astype(np.float32),
         "b": rng.laplace(size=n % 1000 + 9).astype(np.float32)}
    rate, tensors, fmt = {"pruned": (0.5, "all", "auto"), "unpruned": (0.5, "weights", "auto"),
                          "tiny-rate": (1e-9, "all", "delta"),
                          "dense": (None, "all", "dense")}[where]
    name = "w" if where != "unpruned" else "b"  # "b" is a vector: not pruned with weights
    t[name].reshape(-1)[[5, -1][int(rng.integers(2))]] = bad
    pipe = build_pipeline(stages(rate, tensors=tensors, fmt=fmt))
    assert fused.applies(pipe)
    with pytest.raises(ValueError, match=f"tensor '{name}' holds NaN or inf") as got:
        fused.encode(pipe, t)
    with fused.disabled(), pytest.raises(ValueError) as want:
        pipe.encode(t)
    assert str(got.value) == str(want.value)


def test_pipeline_dispatches_and_env_disables():
    pipe = build_pipeline(stages(0.5))
    assert fused.applies(pipe)
    with fused.disabled():
        assert not fused.applies(pipe)
    assert fused.applies(pipe)
    assert not fused.applies(build_pipeline([{"prune": {"rate": 0.5}},
                                             {"quantize": {"bits": 8}}, {"sparse": {}}]))


def test_without_numba_the_reference_runs_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(fused, "K", None)
    monkeypatch.setattr(fused, "_MISSING", "ImportError: No module named 'numba'", raising=False)
    monkeypatch.setattr(fused, "_noted", False)
    pipe = build_pipeline(stages(0.5))
    x = {"a": np.arange(1, 101, dtype=np.float32)}
    with caplog.at_level(logging.WARNING, logger="fedmpi.compress.fused"):
        enc = pipe.encode(x)
    assert "numba is not available" in caplog.text
    assert np.count_nonzero(enc.reconstructed["a"]) == 50


@pytest.mark.parametrize("kernels", ["portable", "avx512"])
def test_both_kernel_sets_give_the_same_bytes(monkeypatch, kernels):
    """The AVX-512 compress/expand kernels and the portable ones are interchangeable."""
    K = fused.K
    if kernels == "avx512" and not K.AVX512:
        pytest.skip("this CPU has no AVX-512: only the portable kernels run here")
    if kernels == "portable":
        monkeypatch.setattr(K, "bitmap_writer", K.write_bitmap)
        monkeypatch.setattr(K, "bitmap_scatter", K.scatter_bitmap)
    else:
        monkeypatch.setattr(K, "bitmap_writer", K.write_bitmap_avx)
        monkeypatch.setattr(K, "bitmap_scatter", K.scatter_bitmap_avx)
        monkeypatch.setattr(K, "scan", K.band_scan_avx)
    rng = np.random.default_rng(11)
    for n in (0, 5, 64, 100, 1000, 200_003):
        x = rng.laplace(size=n).astype(np.float32)
        x[rng.random(n) < 0.2] = 0.25  # ties
        t = {"a": x, "b": x[: n // 3].copy()}
        for rate in (0.3, 0.5, 0.9):
            for fmt in ("auto", "bitmap"):
                assert_same(build_pipeline(stages(rate, fmt=fmt)), t)


def test_avx512_kernels_that_misbehave_are_replaced(monkeypatch):
    K = fused.K
    if K.AVX512:  # (never run AVX-512 code on a CPU without it: LLVM would abort)
        monkeypatch.setattr(K, "bitmap_writer", K.write_bitmap_avx)
        monkeypatch.setattr(K, "bitmap_scatter", K.scatter_bitmap_avx)
        assert K.check_avx512() is True and K.bitmap_writer is K.write_bitmap_avx

    def broken(u, amask, ta, tb, split, bitmap, vals):
        raise RuntimeError("illegal instruction")

    monkeypatch.setattr(K, "write_bitmap_avx", broken)
    monkeypatch.setattr(K, "bitmap_writer", broken)
    assert K.check_avx512() is False
    assert K.bitmap_writer is K.write_bitmap and K.bitmap_scatter is K.scatter_bitmap
