"""FedZip (compressors/fedzip.py): top-z with at most `clusters` values per tensor,
k-means that never does worse than its initial centroids, zstd entropy coding, and
strict decoding through the wire."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from method_wire import (check_damaged_frames, context, fuzz_payload, fuzz_sections, repack,
                         same_bits, sections_of, wire_round_trip)

from fedmpi.bench.codec import make_model
from fedmpi.compress.pipeline import spec_of
from fedmpi.compress.zstd import Zstd
from fedmpi.compressors import build_compressor
from fedmpi.compressors.base import Context, Sections
from fedmpi.compressors.fedzip import FedZip, initial_centroids, kmeans, nearest, sq_error
from fedmpi.compressors.stc import kept_count
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

SIZES = (4, 4, 4, 1)  # counts, centroids, gaps, labels
ZSTD = Zstd()


def model(seed=0):
    ts = make_model(20_000, seed=seed)
    ts["odd"] = np.linspace(-1, 1, 13, dtype=np.float32)
    ts["empty"] = np.zeros((0, 3), np.float32)
    ts["two"] = np.zeros(300, np.float32)
    ts["two"][[4, 200]] = [1.5, -0.25]  # fewer kept values than clusters
    return ts


# ------------------------------------------------------------------ the documented guarantee


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, width=32), max_size=400),
       fraction=st.floats(0.01, 1.0), clusters=st.integers(1, 8))
def test_at_most_clusters_values_at_the_top_z_positions(values, fraction, clusters):
    x = np.array(values, np.float32)
    comp = FedZip(fraction=fraction, clusters=clusters)
    enc = comp.encode({"w": x}, context(comp))
    out = enc.reconstructed["w"]
    order = np.argsort(-np.abs(x.astype(np.float64)), kind="stable")
    kept = np.sort(order[: min(kept_count(x.size, fraction), np.count_nonzero(x))])
    assert enc.nnz == kept.size
    assert np.all(out[np.setdiff1d(np.arange(x.size), kept)] == 0)  # nothing else is sent
    assert np.unique(out[kept]).size <= clusters
    if kept.size:  # each kept value became its nearest centroid
        cents = np.unique(out[kept]).astype(np.float64)
        dist = np.abs(x[kept, None].astype(np.float64) - cents[None, :])
        got = np.abs(x[kept].astype(np.float64) - out[kept])
        assert np.array_equal(got, dist.min(axis=1))
    assert same_bits(comp.decode(enc.payload, [("w", x.shape)], Context(1, 7, 3, "up")),
                     enc.reconstructed)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=500),
       clusters=st.integers(1, 6))
def test_kmeans_never_increases_the_quantization_error(values, clusters):
    v = np.array(values, np.float32)
    init = initial_centroids(v, clusters)
    cent, labels = kmeans(v, clusters)
    assert cent.dtype == np.float32 and cent.size == min(clusters, v.size)
    assert np.array_equal(labels, nearest(v, cent))
    assert sq_error(v, cent, labels) <= sq_error(v, init, nearest(v, init))


def test_kmeans_moves_quantile_centroids_to_the_cluster_means():
    """Three separated, skewed groups of equal size: the quantile start puts one centroid
    in each group at its median; Lloyd moves each to its group's mean (a fixed point),
    strictly lowering the error. (With very unequal groups Lloyd keeps the start's local
    optimum, as k-means does.)"""
    rng = np.random.default_rng(0)
    v = np.concatenate([-20 - rng.exponential(1, 300), rng.exponential(1, 300),
                        20 + rng.exponential(1, 300)]).astype(np.float32)
    init = initial_centroids(v, 3)
    cent, labels = kmeans(v, 3)
    assert sq_error(v, cent, labels) < 0.95 * sq_error(v, init, nearest(v, init))
    assert np.array_equal(np.bincount(labels), [300, 300, 300])
    for j in range(3):  # every centroid is its cluster's mean (to float32 rounding)
        assert cent[j] == pytest.approx(v[labels == j].astype(np.float64).mean(), rel=1e-6)
        assert abs(cent[j] - np.median(v[labels == j])) > 0.2  # ... not its median


def test_model_tensors_have_at_most_three_values_each():
    ts = model()
    comp = FedZip()
    enc = comp.encode(ts, context(comp))
    for name, x in ts.items():
        out = enc.reconstructed[name]
        assert np.count_nonzero(out[out != 0]) <= min(kept_count(x.size, 0.1),
                                                      np.count_nonzero(x)), name
        assert np.unique(out[out != 0]).size <= 3, name
    assert sorted(enc.reconstructed["two"][[4, 200]].tolist()) == [-0.25, 1.5]  # C = count = 2


def test_zstd_entropy_codes_the_payload():
    """The three sections (centroids, 32-bit gaps, 8-bit labels) shrink several times:
    labels of 3 clusters and small gaps carry a few bits each."""
    ts = model()
    comp = FedZip()
    enc = comp.encode(ts, context(comp))
    raw = sections_of(comp, enc.payload, spec_of(ts), SIZES, ZSTD)
    assert enc.payload.nbytes < 0.35 * sum(s.nbytes for s in raw)
    assert enc.payload.nbytes * 8 < 12 * enc.nnz  # < 12 bits per sent entry, all included


# -------------------------------------------------------------------------- error feedback


def test_feedback_is_off_by_default_and_conserves_when_on():
    assert FedZip().new_state() is None and not FedZip().stateful
    comp = FedZip(fraction=0.05, feedback=True)
    state = comp.new_state()
    rng = np.random.default_rng(3)
    prev = {}
    for rnd in range(2):
        ts = {k: rng.normal(0, 1, v.shape).astype(np.float32) for k, v in model().items()}
        enc = comp.encode(ts, Context(1, rnd, 5, "up", state))
        for k in ts:
            c = ts[k] + prev.get(k, np.zeros_like(ts[k]))
            assert np.array_equal(state[k], c - enc.reconstructed[k]), k
        prev = {k: v.copy() for k, v in state.items()}


# ------------------------------------------------------------------------- wire and fuzz


@pytest.fixture(scope="module")
def sent():
    ts = model()
    comp = FedZip()
    ctx = context(comp)
    return comp, spec_of(ts), comp.encode(ts, ctx), ctx


def test_decode_is_bit_identical_to_reconstructed_through_the_wire(sent):
    comp, spec, enc, ctx = sent
    assert same_bits(wire_round_trip(comp, enc, spec, ctx), enc.reconstructed)


def test_damaged_messages_are_refused(sent):
    comp, spec, enc, _ = sent
    check_damaged_frames(comp, enc, spec, 1500)


def test_damaged_payloads_raise_only_wire_format_errors(sent):
    comp, spec, enc, _ = sent
    refused, _ = fuzz_payload(comp, enc.payload, spec, 3000, seed=2)
    assert refused > 2500  # mostly caught by zstd and the section table


def test_wrong_section_contents_raise_only_wire_format_errors(sent):
    comp, spec, enc, _ = sent
    refused, accepted = fuzz_sections(comp, enc.payload, spec, SIZES, 2000, seed=3,
                                      container=ZSTD)
    assert refused > 500 and accepted > 0


def _edit(i, fn):
    def edit(secs):
        secs[i] = fn(secs[i].copy())
    return edit


def _poke(dtype, pos, value):
    def fn(s):
        s.view(dtype)[pos] = value
        return s
    return fn


@pytest.mark.parametrize("edit, match", [
    (_edit(0, _poke("<u4", 0, 10_000)), "more than k"),
    (_edit(0, _poke("<u4", 0, 1)), "section has .* the counts need"),
    (_edit(0, lambda s: s[:-4]), "counts section has"),
    (_edit(1, _poke("<f4", 1, np.inf)), "centroids must be finite"),
    (_edit(1, _poke("<f4", 0, np.nan)), "centroids must be finite"),
    (_edit(3, _poke("u1", 0, 3)), "cluster label 3 out of range for 3"),
    (_edit(2, _poke("<u4", 0, 100_000)), "outside its"),
    (_edit(3, lambda s: np.concatenate([s, [0]]).astype(np.uint8)), "labels section has"),
])
def test_malformed_fields_are_refused(sent, edit, match):
    comp, spec, enc, _ = sent
    secs = [s.copy() for s in sections_of(comp, enc.payload, spec, SIZES, ZSTD)]
    edit(secs)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, spec, secs, SIZES, ZSTD), spec, Context(1, 7, 3, "up"))


def test_a_decompression_bomb_is_refused_before_it_is_expanded(sent):
    """A labels section declaring (and holding) 64 MiB: refused from the model's bound."""
    comp, spec, enc, _ = sent
    secs = sections_of(comp, enc.payload, spec, SIZES, ZSTD)

    class Liar(Zstd):  # a sender whose last section claims the bomb's size
        def pack(self, sections):
            return super().pack(sections[:3] + [([np.zeros(64 << 20, np.uint8)], 1)])

    bad = Sections(Liar()).pack(comp, spec, [([s], size) for s, size in zip(secs, SIZES)])
    assert bad.nbytes < 1 << 20  # the bomb: 64 MiB declared in a few kB
    with pytest.raises(WireFormatError, match="more than this model can need"):
        comp.decode(bad, spec, Context(1, 7, 3, "up"))


def test_payloads_of_other_parameters_are_refused(sent):
    comp, spec, enc, ctx = sent
    with pytest.raises(WireFormatError, match="codec"):
        FedZip(clusters=4).decode(enc.payload, spec, ctx)


def test_encode_refuses_nan_and_inf():
    comp = FedZip()
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.array([1.0, np.inf], np.float32)}, context(comp))


@pytest.mark.parametrize("params, field", [
    ({"clusters": 0}, "compression.downlink.fedzip.clusters"),
    ({"clusters": 257}, "compression.downlink.fedzip.clusters"),
    ({"clusters": 2.5}, "compression.downlink.fedzip.clusters"),
    ({"fraction": 0.0}, "compression.downlink.fedzip.fraction"),
    ({"fraction": -1}, "compression.downlink.fedzip.fraction"),
    ({"levels": 3}, "compression.downlink.fedzip.levels"),
])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_compressor({"fedzip": params}, field="compression.downlink")
