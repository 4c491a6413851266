"""STC (compressors/stc.py): ternary values and exactly k entries per tensor, the Golomb
position coder, error feedback on both links, and strict decoding through the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from method_wire import (check_damaged_frames, context, fuzz_payload,
                         fuzz_sections, repack, same_bits, sections_of, wire_round_trip)

from fedmpi.bench.codec import make_model
from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import build_compressor
from fedmpi.compressors.base import Context
from fedmpi.compressors.stc import (STC, TABLE, golomb_parameter, golomb_read, golomb_write,
                                    kept_count)
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

SIZES = (4, 1, 1, 1)  # table, unary, remainder, signs


def model(seed=0):
    ts = make_model(20_000, seed=seed)
    ts["odd"] = np.linspace(-1, 1, 13, dtype=np.float32)
    ts["empty"] = np.zeros((0, 3), np.float32)
    ts["sparse"] = np.zeros(500, np.float32)
    ts["sparse"][[7, 300]] = [-2.0, 0.5]  # fewer non-zeros than k
    return ts


def oracle_top_k(flat, k):
    """The k largest |x| among the non-zero entries, ties to the lower index (by sorting)."""
    order = np.argsort(-np.abs(flat.astype(np.float64)), kind="stable")
    return np.sort(order[: min(k, np.count_nonzero(flat))])


# ------------------------------------------------------------------ the documented guarantee


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=0, max_size=300),
       fraction=st.floats(0.001, 1.0), ties=st.booleans())
def test_values_are_ternary_with_exactly_k_entries(values, fraction, ties):
    x = np.array(values, np.float32)
    if ties:  # many equal magnitudes: the tie rule decides which are kept
        x = np.round(x / 2e5).astype(np.float32)
    comp = STC(fraction=fraction, feedback=False)
    enc = comp.encode({"w": x}, context(comp))
    out = enc.reconstructed["w"]
    k = kept_count(x.size, fraction)
    idx = oracle_top_k(x, k)
    assert np.array_equal(np.flatnonzero(out), idx)  # exactly min(k, nnz), the largest
    assert enc.nnz == idx.size == min(k, np.count_nonzero(x))
    if idx.size:
        mu = np.float32(np.abs(x[idx].astype(np.float64)).mean())
        assert set(np.unique(out[idx]).tolist()) <= {float(mu), float(-mu)}
        assert np.array_equal(np.signbit(out[idx]), np.signbit(x[idx]))
    assert same_bits(comp.decode(enc.payload, [("w", x.shape)], Context(1, 7, 3, "up")),
                     enc.reconstructed)


def test_every_tensor_of_a_model_is_ternary_with_exactly_k_entries():
    ts = model()
    comp = STC(fraction=0.05, feedback=False)
    enc = comp.encode(ts, context(comp))
    for name, x in ts.items():
        flat, out = x.reshape(-1), enc.reconstructed[name].reshape(-1)
        nz = np.count_nonzero(flat)
        want = min(kept_count(flat.size, 0.05), nz)
        assert np.count_nonzero(out) == want, name
        levels = np.unique(np.abs(out[out != 0]))
        assert levels.size <= 1, name
    assert np.count_nonzero(enc.reconstructed["sparse"]) == 2  # k = 25 > its 2 non-zeros
    assert enc.nnz == sum(np.count_nonzero(v) for v in enc.reconstructed.values())


# ------------------------------------------------------------------------- Golomb coder


@settings(max_examples=200, deadline=None)
@given(seqs=st.lists(st.tuples(st.lists(st.integers(0, 5000), max_size=60), st.integers(0, 13)),
                     max_size=5))
def test_golomb_round_trips_arbitrary_gap_sequences(seqs):
    gaps = [np.array(g, np.int64) for g, _ in seqs]
    bs = [b for _, b in seqs]
    unary, rem = golomb_write(gaps, bs)
    # exactly the Golomb-Rice length: per gap its quotient in unary + 1 + b bits
    assert unary.nbytes == (sum(int((g >> b).sum()) + g.size for g, b in zip(gaps, bs)) + 7) // 8
    assert rem.nbytes == (sum(g.size * b for g, b in zip(gaps, bs)) + 7) // 8
    back = golomb_read(unary, rem, [g.size for g in gaps], bs, [5000] * len(gaps))
    assert all(np.array_equal(a, b) for a, b in zip(back, gaps))


def test_golomb_bits_follow_the_code():
    """gap 5 with b = 2: quotient 1 -> '10', remainder '01'; gap 2: '0', '10'."""
    unary, rem = golomb_write([np.array([5, 2])], [2])
    assert unary.tolist() == [0b10000000] and rem.tolist() == [0b01100000]


@pytest.mark.parametrize("edit, match", [
    (lambda u, r: (np.array([0b10000001], np.uint8), r), "unary stream padding"),
    (lambda u, r: (u, np.array([0b01100001], np.uint8)), "remainder stream padding"),
    (lambda u, r: (np.concatenate([u, [0]]).astype(np.uint8), r), "unary stream has 2 bytes"),
    (lambda u, r: (u, np.concatenate([r, [0]]).astype(np.uint8)), "remainder stream has 2"),
    (lambda u, r: (np.array([0xFF], np.uint8), r), "ends after 0 of 2"),
    (lambda u, r: (np.array([0b11110000], np.uint8), r), "quotient 4 exceeds"),
])
def test_golomb_refuses_malformed_streams(edit, match):
    unary, rem = golomb_write([np.array([5, 2])], [2])
    u, r = edit(unary, rem)
    with pytest.raises(WireFormatError, match=match):
        golomb_read(u, r, [2], [2], [9])


@pytest.mark.parametrize("p, b", [(0.1, 3), (0.01, 6), (0.001, 9)])
def test_golomb_parameter_is_the_papers(p, b):
    assert golomb_parameter(round(p * 100_000), 100_000) == b


@pytest.mark.parametrize("p", [0.003, 0.01, 0.05, 0.2])
def test_golomb_parameter_gives_near_shortest_positions(p):
    """On a Bernoulli(p) support the paper's b* is within 1% of the best width."""
    n = 400_000
    idx = np.flatnonzero(np.random.default_rng(5).random(n) < p)
    gaps = np.diff(idx, prepend=-1) - 1

    def bits(b):
        return int((gaps >> b).sum()) + gaps.size * (1 + b)

    best = min(bits(b) for b in range(20))
    assert bits(golomb_parameter(round(p * n), n)) <= 1.01 * best


# -------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("link, client", [("up", 4), ("down", -1)])
def test_error_feedback_conserves_what_was_not_sent(link, client):
    """sent + residual = input + previous residual, on both links (the server's downlink
    state is a ctx.state like a client's)."""
    comp = STC(fraction=0.02)
    rng = np.random.default_rng(1)
    state = comp.new_state()
    assert state == {} and comp.stateful
    total_in = {k: np.zeros(v.shape) for k, v in model().items()}
    total_sent = {k: np.zeros(v.shape) for k, v in model().items()}
    for rnd in range(3):
        ts = {k: rng.normal(0, 1, v.shape).astype(np.float32) for k, v in model().items()}
        prev = {k: state.get(k, np.zeros(v.shape, np.float32)) for k, v in ts.items()}
        enc = comp.encode(ts, Context(1, rnd, client, link, state))
        for k in ts:
            c = ts[k] + prev[k]  # float32, as the compressor compensates
            assert np.array_equal(state[k], c - enc.reconstructed[k]), k  # exact residual
            np.testing.assert_allclose(enc.reconstructed[k] + state[k], ts[k] + prev[k],
                                       rtol=1e-6, atol=1e-6)
            total_in[k] += ts[k]
            total_sent[k] += enc.reconstructed[k]
    # over the rounds, everything not sent yet is in the residual
    for k in total_in:
        np.testing.assert_allclose(total_sent[k] + state[k], total_in[k], rtol=1e-5, atol=1e-5)


def test_without_feedback_the_state_is_neither_read_nor_written():
    comp = STC(fraction=0.1, feedback=False)
    assert comp.new_state() is None and not comp.stateful
    ts = model()
    state = {"conv0.weight": np.full(ts["conv0.weight"].shape, 100, np.float32)}
    enc = comp.encode(ts, Context(1, 0, 2, "up", state))
    assert list(state) == ["conv0.weight"] and np.abs(enc.reconstructed["conv0.weight"]).max() < 100


# ------------------------------------------------------------------------- wire and fuzz


@pytest.fixture(scope="module")
def sent():
    ts = model()
    comp = STC(fraction=0.05)
    ctx = context(comp)
    return comp, spec_of(ts), comp.encode(ts, ctx), ctx


def test_decode_is_bit_identical_to_reconstructed_through_the_wire(sent):
    comp, spec, enc, ctx = sent
    assert same_bits(wire_round_trip(comp, enc, spec, ctx), enc.reconstructed)
    assert same_bits(comp.decode(enc.payload, spec, ctx.for_decode()), enc.reconstructed)


def test_positions_cost_about_the_golomb_length(sent):
    """Payload = 12-byte header + section table + 12 bytes per tensor + the codes: no
    hidden byte (nnz entries at ~(1 + b + quotient) bits + 1 sign bit)."""
    comp, spec, enc, _ = sent
    table, unary, rem, signs = sections_of(comp, enc.payload, spec, SIZES)
    assert enc.payload.nbytes == 12 + 4 + 4 * 20 + table.nbytes + unary.nbytes + rem.nbytes \
        + signs.nbytes
    assert signs.nbytes == math.ceil(enc.nnz / 8)
    assert table.nbytes == TABLE.itemsize * len(spec)


def test_damaged_messages_are_refused(sent):
    comp, spec, enc, _ = sent
    check_damaged_frames(comp, enc, spec, 1500)


def test_damaged_payloads_raise_only_wire_format_errors(sent):
    comp, spec, enc, _ = sent
    refused, _ = fuzz_payload(comp, enc.payload, spec, 3000, seed=2)
    assert refused > 2000


def test_wrong_section_contents_raise_only_wire_format_errors(sent):
    comp, spec, enc, _ = sent
    refused, accepted = fuzz_sections(comp, enc.payload, spec, SIZES, 3000, seed=3)
    assert refused > 1000 and accepted > 0  # flipped signs or remainders are valid messages


def _table_edit(field, value, row=0):
    def edit(secs):
        t = secs[0].view(TABLE)
        t[row][field] = value
    return edit


def _extend(i, extra):
    def edit(secs):
        secs[i] = np.concatenate([secs[i], np.array(extra, np.uint8)])
    return edit


def _set_pad_bit(i):
    def edit(secs):
        secs[i] = secs[i].copy()
        secs[i][-1] |= 1
    return edit


@pytest.mark.parametrize("edit, match", [
    (_table_edit("count", 10_000), "more than k"),
    (_table_edit("b", 40), "Golomb parameter 40 exceeds"),
    (_table_edit("mu", np.nan), "not a positive finite"),
    (_table_edit("mu", -1.0), "not a positive finite"),
    (_table_edit("mu", 0.0), "not a positive finite"),
    (_table_edit("pad", np.void(b"\0\1\0")), "padding"),
    (_table_edit("mu", 1.0, row=-2), "sends nothing"),  # "empty": no entries, mu must be 0
    (_extend(1, [0]), "unary stream has"),
    (_extend(3, [0]), "sign stream has"),
    (_set_pad_bit(3), "sign stream padding"),
])
def test_malformed_fields_are_refused(sent, edit, match):
    comp, spec, enc, _ = sent
    secs = [s.copy() for s in sections_of(comp, enc.payload, spec, SIZES)]
    edit(secs)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, spec, secs, SIZES), spec, Context(1, 7, 3, "up"))


def test_a_position_outside_its_tensor_is_refused():
    comp = STC(fraction=0.5, feedback=False)
    x = {"w": np.array([0, 0, 0, 5.0], np.float32)}
    spec, ctx = spec_of(x), Context(1, 7, 3, "up")
    enc = comp.encode(x, context(comp))
    secs = [s.copy() for s in sections_of(comp, enc.payload, spec, SIZES)]
    secs[0].view(TABLE)[0]["b"] = 2  # gap 3 as quotient 0 ('0') + remainder '11'
    secs[1], secs[2] = np.array([0], np.uint8), np.array([0b11000000], np.uint8)
    assert same_bits(comp.decode(repack(comp, spec, secs, SIZES), spec, ctx), enc.reconstructed)
    secs[1] = np.array([0b10000000], np.uint8)  # quotient 1: gap 7, position 7 of 4
    with pytest.raises(WireFormatError, match="exceeds the largest gap"):
        comp.decode(repack(comp, spec, secs, SIZES), spec, ctx)


def test_payloads_of_other_models_or_parameters_are_refused(sent):
    comp, spec, enc, ctx = sent
    with pytest.raises(WireFormatError, match="codec"):
        STC(fraction=0.1).decode(enc.payload, spec, ctx)
    with pytest.raises(WireFormatError, match="another model"):
        comp.decode(enc.payload, spec[:-1], ctx)


def test_encode_refuses_nan_and_inf():
    comp = STC()
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            comp.encode({"w": np.array([1.0, bad], np.float32)}, context(comp))


@pytest.mark.parametrize("params, field", [
    ({"fraction": 0}, "compression.uplink.stc.fraction"),
    ({"fraction": 1.5}, "compression.uplink.stc.fraction"),
    ({"fraction": "a"}, "compression.uplink.stc.fraction"),
    ({"feedback": 1}, "compression.uplink.stc.feedback"),
    ({"k": 3}, "compression.uplink.stc.k"),
])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_compressor({"stc": params}, field="compression.uplink")
    assert build_compressor({"stc": {"fraction": 0.1}}, field="x") == STC(fraction=0.1)
