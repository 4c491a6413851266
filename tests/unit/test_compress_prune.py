"""Pruning keeps exactly the largest ceil((1 - rate) n) magnitudes, ties by index."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmpi.compress import build_pipeline
from fedmpi.compress.prune import abs_bits, keep_mask, n_drop

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# few distinct magnitudes make ties (and zeros) common
tied32 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 3e-39])


def reference(flats, rate):
    """Brute force: sort by (|x|, global index), zero the first floor(rate * n)."""
    x = np.concatenate(flats)
    order = np.lexsort((np.arange(x.size), np.abs(x.astype(np.float64))))
    keep = np.ones(x.size, bool)
    keep[order[: n_drop(rate, x.size)]] = False
    out = np.where(keep, x, 0).astype(np.float32)
    return np.split(out, np.cumsum([f.size for f in flats])[:-1])


def pruned(flats, rate, **params):
    pipe = build_pipeline([{"prune": {"rate": rate, **params}}, {"sparse": {}}])
    tensors = {f"t{i}": f for i, f in enumerate(flats)}
    return [pipe.encode(tensors).reconstructed[f"t{i}"] for i in range(len(flats))]


@settings(max_examples=150, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(0, 60), elements=finite32 | tied32),
                min_size=1, max_size=4),
       st.floats(0, 0.999))
def test_global_matches_reference(flats, rate):
    got, want = pruned(flats, rate), reference(flats, rate)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)  # numeric: a dropped -0.0 may come back as +0.0
    kept = sum(int(np.count_nonzero(g)) for g in got)
    n = sum(f.size for f in flats)
    assert kept <= n - n_drop(rate, n)


@settings(max_examples=60, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 40), elements=finite32 | tied32),
                min_size=1, max_size=3),
       st.floats(0, 0.999))
def test_tensor_scope_matches_reference_per_tensor(flats, rate):
    got = pruned(flats, rate, scope="tensor")
    for g, f in zip(got, flats):
        assert np.array_equal(g, reference([f], rate)[0])


def test_weights_only_leaves_vectors_alone():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(8, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    pipe = build_pipeline([{"prune": {"rate": 0.75, "tensors": "weights"}}])
    out = pipe.encode({"w": w, "b": b}).reconstructed
    assert np.array_equal(out["b"], b)
    assert np.count_nonzero(out["w"]) == 16


def test_exact_counts_for_decimal_rates():
    assert n_drop(0.3, 10) == 3 and n_drop(0.9, 10) == 9 and n_drop(0.5, 11) == 5


def test_sampled_path_is_exact_on_large_inputs():
    """Above the exact-sort size the threshold comes from a sample; it must stay exact."""
    rng = np.random.default_rng(1)
    x = rng.laplace(size=300_000).astype(np.float32)
    x[::7] = 0.25  # a large tie block right where a cut may fall
    a = abs_bits([x])
    for rate in (0.1, 0.5, 0.9, 0.99):
        m = n_drop(rate, x.size)
        keep = keep_mask(a, m)
        ref = reference([x], rate)[0]
        assert np.array_equal(np.where(keep, x, 0), ref)


def test_fallback_when_the_sample_misleads():
    """Nearly all entries equal: the band holds the cut only via the exact fallback."""
    x = np.ones(200_000, np.float32)
    x[:5] = 0.5
    a = abs_bits([x])
    keep = keep_mask(a, 100_000)
    assert np.array_equal(np.where(keep, x, 0), reference([x], 0.5)[0])
