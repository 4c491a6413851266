"""Partitioning: exact cover, determinism, the skew that alpha controls, and config errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedmpi.data import class_histogram, partition, stratified_indices
from fedmpi.errors import ConfigError


def balanced_labels(per_class: int = 500, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=300).map(np.array),
    num_clients=st.integers(1, 25),
    method=st.sampled_from(["iid", "lda", "shards"]),
    alpha=st.floats(1e-3, 1e3),
    shards_per_client=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_sample_assigned_exactly_once_and_deterministic(
    labels, num_clients, method, alpha, shards_per_client, seed
):
    assume(num_clients <= len(labels))
    assume(method != "shards" or num_clients * shards_per_client <= len(labels))
    kw = dict(method=method, seed=seed, alpha=alpha, shards_per_client=shards_per_client)
    parts = partition(labels, num_clients, **kw)
    assert len(parts) == num_clients
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))  # disjoint and complete
    assert all(len(p) >= 1 and p.dtype == np.int64 for p in parts)
    again = partition(labels, num_clients, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_seed_changes_the_partition():
    y = balanced_labels(50)
    a = partition(y, 10, method="lda", alpha=0.5, seed=1)
    b = partition(y, 10, method="lda", alpha=0.5, seed=2)
    assert any(not np.array_equal(p, q) for p, q in zip(a, b))


def _class_fractions(y, parts):
    hist = class_histogram(y, parts, 10)
    return hist / hist.sum(axis=1, keepdims=True)


def test_small_alpha_is_skewed_large_alpha_is_near_uniform():
    y = balanced_labels(500)
    skewed = _class_fractions(y, partition(y, 10, method="lda", alpha=0.05, seed=0))
    uniform = _class_fractions(y, partition(y, 10, method="lda", alpha=1000.0, seed=0))
    # With alpha = 0.05 a client is dominated by a few classes (not by one only: sizes are
    # equal, so clients that prefer the same class share it and fill up with leftovers) ...
    assert skewed.max(axis=1).mean() > 0.4
    assert (skewed == 0).sum(axis=1).mean() >= 4
    # ... with alpha = 1000 every client is close to the global 10% per class.
    assert np.abs(uniform - 0.1).max() < 0.05
    assert (uniform == 0).sum() == 0


def test_lda_and_iid_give_equal_sizes_and_honour_min_samples():
    y = balanced_labels(30)
    for method in ("iid", "lda"):
        parts = partition(y, 7, method=method, alpha=0.01, seed=3, min_samples=42)
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 42
    with pytest.raises(ConfigError) as e:
        partition(y, 7, method="lda", seed=3, min_samples=43)
    assert e.value.field == "data.partition.min_samples"


def test_shards_give_few_classes_per_client():
    y = balanced_labels(100)
    parts = partition(y, 20, method="shards", shards_per_client=2, seed=0)
    hist = class_histogram(y, parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()  # shards of 50 never straddle 100-sample classes
    with pytest.raises(ConfigError) as e:
        partition(y, 20, method="shards", seed=0, min_samples=51)
    assert e.value.field == "data.partition.min_samples"


def test_class_histogram_counts():
    y = np.array([0, 1, 1, 2, 2, 2])
    hist = class_histogram(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], 4)
    assert hist.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(method="dirichlet"), "data.partition.method"),
        (dict(method="lda", alpha=0.0), "data.partition.alpha"),
        (dict(method="lda", alpha=-1.0), "data.partition.alpha"),
        (dict(method="lda", alpha=float("nan")), "data.partition.alpha"),
        (dict(method="shards", shards_per_client=0), "data.partition.shards_per_client"),
        (dict(method="shards", shards_per_client=60), "data.partition.shards_per_client"),
        (dict(method="iid", min_samples=0), "data.partition.min_samples"),
    ],
)
def test_bad_values_name_the_config_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        partition(balanced_labels(10), 10, seed=0, **kwargs)
    assert e.value.field == field


def test_stratified_indices_are_balanced_and_seeded():
    y = np.concatenate([np.zeros(100), np.ones(100), np.full(3, 2)]).astype(np.int64)
    idx = stratified_indices(y, 53, seed=4)
    assert len(set(idx.tolist())) == 53
    counts = np.bincount(y[idx], minlength=3)
    assert counts[2] == 3 and abs(counts[0] - counts[1]) <= 1  # a small class is taken whole
    assert np.array_equal(idx, stratified_indices(y, 53, seed=4))
    assert not np.array_equal(idx, stratified_indices(y, 53, seed=5))
    with pytest.raises(ConfigError):
        stratified_indices(y, 204, seed=0)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=200).map(np.array),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_stratified_indices_property(labels, frac, seed):
    n = max(1, round(frac * len(labels)))
    idx = stratified_indices(labels, n, seed=seed)
    assert len(np.unique(idx)) == n
    classes = np.unique(labels)
    taken = np.array([(labels[idx] == c).sum() for c in classes])
    sizes = np.array([(labels == c).sum() for c in classes])
    short = taken < sizes  # classes with more to give differ by at most one
    if short.any():
        assert taken[short].max() - taken[short].min() <= 1
        assert taken[~short].max(initial=0) <= taken[short].min() + 1


@pytest.mark.parametrize("method", ["iid", "lda", "shards"])
def test_more_clients_than_samples_blames_num_clients(method):
    """Issue 10: `clients.num_clients: 1000000` used to blame data.partition.min_samples."""
    y = balanced_labels(10)  # 100 samples
    with pytest.raises(ConfigError) as e:
        partition(y, 1_000_000, method=method, seed=0)
    assert e.value.field == "clients.num_clients"
    assert e.value.allowed.startswith("at most 100 (the number of training samples")
    parts = partition(y, 100, method=method, seed=0, shards_per_client=1)  # the bound itself
    assert [len(p) for p in parts] == [1] * 100


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 3000), k=st.integers(1, 10), sigma=st.floats(0.01, 3.0),
       method=st.sampled_from(["iid", "lda"]), seed=st.integers(0, 2**32 - 1))
def test_quantity_skew_covers_every_sample_once_with_unequal_sizes(n, k, sigma, method, seed):
    labels = np.random.default_rng(seed).integers(0, 10, n)
    parts = partition(labels, k, method=method, seed=seed, alpha=1.0, size_sigma=sigma)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert all(len(p) >= 1 for p in parts)
    again = partition(labels, k, method=method, seed=seed, alpha=1.0, size_sigma=sigma)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("method", ["iid", "lda"])
def test_size_sigma_spreads_client_sizes_and_zero_keeps_them_equal(method):
    labels = balanced_labels()  # 5,000 samples
    equal = partition(labels, 10, method=method, seed=4, alpha=100.0)
    assert {len(p) for p in equal} == {500}
    assert all(np.array_equal(a, b) for a, b in zip(
        equal, partition(labels, 10, method=method, seed=4, alpha=100.0, size_sigma=0.0)))
    skewed = [len(p) for p in partition(labels, 10, method=method, seed=4, alpha=100.0,
                                        size_sigma=1.0)]
    assert sum(skewed) == 5000 and max(skewed) > 3 * min(skewed)
    # the sizes are lognormal(0, sigma) draws of the seed's generator, normalised
    w = np.random.default_rng(4).lognormal(0.0, 1.0, 10)
    np.testing.assert_allclose(skewed, 1 + 4990 * w / w.sum(), atol=1.0)


@pytest.mark.parametrize("kw, allowed", [
    (dict(method="shards", size_sigma=0.5), "method shards"),
    (dict(method="lda", size_sigma=-1.0), "[0, 10]"),
    (dict(method="iid", size_sigma=float("nan")), "[0, 10]"),
])
def test_bad_size_sigma_names_the_field(kw, allowed):
    with pytest.raises(ConfigError) as exc:
        partition(balanced_labels(), 10, seed=0, **kw)
    assert exc.value.field == "data.partition.size_sigma" and allowed in str(exc.value)


def test_config_refuses_skew_with_shards_before_any_data_is_read():
    from fedmpi import config

    with pytest.raises(ConfigError) as exc:
        config.from_dict({"name": "t", "data": {"partition": {"method": "shards",
                                                             "size_sigma": 1.0}}})
    assert exc.value.field == "data.partition.size_sigma"
