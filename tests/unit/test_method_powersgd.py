"""PowerSGD (compressors/powersgd.py): rank <= r, exact on low-rank input, warm start
converging to the best rank-r approximation, error feedback, strict decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from method_wire import (check_damaged_frames, context, fuzz_payload, fuzz_sections, repack,
                         same_bits, sections_of, wire_round_trip)

from fedmpi.bench.codec import make_model
from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import build_compressor
from fedmpi.compressors.base import Context
from fedmpi.compressors.powersgd import STATE_PREFIX, PowerSGD, factor_shape
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

SIZES = (4,)


def low_rank(n, m, r, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, r)) @ rng.normal(size=(r, m))).astype(np.float32)


# ------------------------------------------------------------------ the documented guarantee


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(2, 40), extra=st.sampled_from([(), (3,), (2, 2)]),
       rank=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_reconstruction_has_rank_at_most_r(n, m, extra, rank, seed):
    shape = (n, m, *extra)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)  # full rank
    comp = PowerSGD(rank=rank, feedback=False)
    enc = comp.encode({"w": x}, context(comp))
    out = enc.reconstructed["w"]
    f = factor_shape(shape, rank)
    if f is None:  # factors would not be smaller: sent dense, exactly
        assert np.array_equal(out, x) and enc.nnz == x.size
    else:
        n_, m_, r = f
        assert np.linalg.matrix_rank(out.reshape(n_, m_)) <= r
        assert enc.nnz == r * (n_ + m_) < x.size
    assert same_bits(comp.decode(enc.payload, [("w", shape)], Context(1, 7, 3, "up")),
                     enc.reconstructed)


@pytest.mark.parametrize("true_rank", [1, 2, 4])
def test_one_iteration_is_exact_on_a_matrix_of_rank_at_most_r(true_rank):
    """From a random Q (no warm start), P = M Q spans M's column space, so P P^T M = M:
    one power iteration reconstructs a rank <= r matrix up to float32 rounding."""
    m = low_rank(64, 48, true_rank, seed=true_rank)
    comp = PowerSGD(rank=4, feedback=False)
    out = comp.encode({"w": m}, context(comp)).reconstructed["w"]
    assert np.linalg.norm(out - m) <= 1e-5 * np.linalg.norm(m)


def test_warm_start_converges_to_the_best_rank_r_approximation():
    """The same full-rank matrix, round after round, without feedback: Q warm-started from
    ctx.state makes this subspace iteration, whose error falls to the Eckart-Young
    optimum (the norm of the singular values past r). A fresh Q each round does not."""
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.normal(size=(60, 40)))
    v, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    s = 0.7 ** np.arange(40)
    mat = (u * s @ v.T).astype(np.float32)
    best = np.sqrt((s[2:] ** 2).sum())
    comp = PowerSGD(rank=2, feedback=False)
    state = comp.new_state()
    errors = []
    for rnd in range(25):
        out = comp.encode({"w": mat}, Context(1, rnd, 4, "up", state)).reconstructed["w"]
        errors.append(np.linalg.norm(out - mat))
        assert state[STATE_PREFIX + "w"].shape == (40, 2)
    assert errors[-1] <= 1.001 * best
    assert errors[0] > 1.05 * best  # one iteration from a random start is not enough
    cold = [np.linalg.norm(comp.encode({"w": mat}, Context(1, rnd, 4, "up", {}))
                           .reconstructed["w"] - mat) for rnd in range(5)]
    assert min(cold) > 1.01 * best


def test_a_zero_update_does_not_lock_the_warm_start():
    """A tensor that did not change (a frozen layer, an update that was all sent) leaves a
    warm Q of zeros; its columns are redrawn (not divided by their zero norm), so the
    next update still gets a finite rank-r reconstruction."""
    comp = PowerSGD(rank=3, feedback=False)
    state = comp.new_state()
    enc = comp.encode({"w": np.zeros((30, 20), np.float32)}, Context(1, 0, 2, "up", state))
    assert not enc.reconstructed["w"].any() and not state[STATE_PREFIX + "w"].any()
    x = np.random.default_rng(1).normal(size=(30, 20)).astype(np.float32)
    out = comp.encode({"w": x}, Context(1, 1, 2, "up", state)).reconstructed["w"]
    assert np.isfinite(out).all() and np.linalg.matrix_rank(out) == 3


def test_vectors_and_small_tensors_travel_dense_and_nnz_counts_every_number():
    ts = make_model(20_000, seed=0)
    comp = PowerSGD(rank=4)
    enc = comp.encode(ts, context(comp))
    want = 0
    for name, x in ts.items():
        f = factor_shape(x.shape, 4)
        if f is None:
            assert np.array_equal(enc.reconstructed[name], x), name
            want += x.size
        else:
            want += f[2] * (f[0] + f[1])
    assert enc.nnz == want and enc.payload.nbytes == 12 + 4 + 20 + 4 * want
    assert factor_shape((64,), 4) is None and factor_shape((10, 4), 4) is None  # 4*14 >= 40
    assert factor_shape((10, 64), 4) == (10, 64, 4) and factor_shape((8, 3, 3, 3), 2) == (8, 27, 2)


def test_the_first_q_is_a_pure_function_of_seed_round_client_and_link():
    x = {"w": np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32)}
    comp = PowerSGD(rank=2, feedback=False)

    def payload(**kw):
        return comp.encode(x, context(comp, **kw)).payload.tobytes()

    assert payload() == payload()
    assert len({payload(), payload(client=4), payload(round=8), payload(seed=2),
                payload(link="down", client=-1)}) == 5


def test_the_state_is_plain_arrays_so_a_restored_copy_continues_bit_identically():
    """What a checkpoint needs: the residuals and the warm starts are the whole state."""
    comp = PowerSGD(rank=2)
    rng = np.random.default_rng(6)
    shapes = {k: v.shape for k, v in make_model(20_000).items()}
    state = comp.new_state()
    comp.encode({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()},
                Context(1, 0, 2, "up", state))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    assert {k for k in state if k.startswith(STATE_PREFIX)} == {
        STATE_PREFIX + k for k, s in shapes.items() if factor_shape(s, 2)}
    restored = {k: v.copy() for k, v in state.items()}
    nxt = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    a = comp.encode(nxt, Context(1, 1, 2, "up", state))
    b = comp.encode(nxt, Context(1, 1, 2, "up", restored))
    assert np.array_equal(a.payload, b.payload) and same_bits(state, restored)


# -------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("link, client", [("up", 4), ("down", -1)])
def test_error_feedback_conserves_what_was_not_sent(link, client):
    comp = PowerSGD(rank=2)
    state = comp.new_state()
    rng = np.random.default_rng(2)
    shapes = {k: v.shape for k, v in make_model(20_000).items()}
    prev = {}
    for rnd in range(3):
        ts = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
        enc = comp.encode(ts, Context(1, rnd, client, link, state))
        for k in ts:
            c = ts[k] + prev.get(k, np.zeros(shapes[k], np.float32))
            assert np.array_equal(state[k], c - enc.reconstructed[k]), k
            np.testing.assert_allclose(enc.reconstructed[k] + state[k], c, rtol=1e-6, atol=1e-6)
        prev = {k: state[k].copy() for k in ts}


# ------------------------------------------------------------------------- wire and fuzz


@pytest.fixture(scope="module")
def sent():
    ts = make_model(20_000, seed=4)
    comp = PowerSGD(rank=2)
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
    refused, accepted = fuzz_payload(comp, enc.payload, spec, 2000, seed=2)
    assert refused > 500 and accepted > 0  # a changed finite number is a valid message


def test_wrong_section_contents_raise_only_wire_format_errors(sent):
    comp, spec, enc, _ = sent
    refused, accepted = fuzz_sections(comp, enc.payload, spec, SIZES, 1500, seed=3)
    assert refused > 500 and accepted > 0


def _value(pos, v):
    def edit(raw):
        raw = raw.copy()
        raw.view("<f4")[pos] = v
        return raw
    return edit


@pytest.mark.parametrize("edit, match", [
    (_value(0, np.nan), "must be finite"),
    (_value(-1, -np.inf), "must be finite"),
    (lambda raw: raw[:-4], "holds .* numbers, this model and rank need"),
    (lambda raw: np.concatenate([raw, raw[:4]]), "more than this model can need"),
])
def test_malformed_fields_are_refused(sent, edit, match):
    comp, spec, enc, _ = sent
    (raw,) = sections_of(comp, enc.payload, spec, SIZES)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, spec, [edit(raw)], SIZES), spec, Context(1, 7, 3, "up"))


def test_factors_whose_product_overflows_are_refused():
    comp = PowerSGD(rank=1, feedback=False)
    x = {"w": low_rank(8, 6, 1)}
    spec = spec_of(x)
    (raw,) = sections_of(comp, comp.encode(x, context(comp)).payload, spec, SIZES)
    raw = raw.copy()
    raw.view("<f4")[:] = 1e30  # finite factors, P Q^T = 1e60
    with pytest.raises(WireFormatError, match="overflows float32"):
        comp.decode(repack(comp, spec, [raw], SIZES), spec, Context(1, 7, 3, "up"))


def test_encode_refuses_nan_inf_and_values_beyond_float32_factors():
    comp = PowerSGD()
    state = comp.new_state()
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.full((10, 10), np.nan, np.float32)}, context(comp, state=state))
    big = np.full((20, 20), 3e38, np.float32)  # ||M|| = 6e39: Q' = M^T P overflows
    with pytest.raises(ValueError, match="too large"):
        comp.encode({"w": big}, context(comp, state=state))
    assert state == {}  # a refused message leaves the state as it was


@pytest.mark.parametrize("params, field", [
    ({"rank": 0}, "compression.uplink.powersgd.rank"),
    ({"rank": 1.5}, "compression.uplink.powersgd.rank"),
    ({"rank": True}, "compression.uplink.powersgd.rank"),
    ({"power_iterations": 2}, "compression.uplink.powersgd.power_iterations"),
])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_compressor({"powersgd": params}, field="compression.uplink")
