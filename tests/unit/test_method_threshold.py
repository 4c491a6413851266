"""threshold: exactly the entries with |x + residual| >= tau are sent, EF conservation
(and what stays below tau is sent once it has accumulated), a strict decoder that
also checks the rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sparse_fuzz import fuzz, fuzz_model, put_together, take_apart

from fedmpi.compress import spec_of
from fedmpi.compressors import Context, build_compressor, positions
from fedmpi.compressors.threshold import Threshold
from fedmpi.errors import ConfigError
from fedmpi.wire import Kind, WireFormatError, frame, parse

FIELD = "compression.uplink"


def threshold(**params) -> Threshold:
    return build_compressor({"threshold": params}, field=FIELD)


def ctx(comp, rnd=1, state=None):
    return Context(seed=1, round=rnd, client=2, link="up",
                   state=comp.new_state() if state is None else state)


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(np.asarray(a).view(np.uint32),
                                                 np.asarray(b).view(np.uint32))


TAUS = [0.5, 1.0, 0.1, 1e-3]
# Values around the thresholds (tau itself, its float32 neighbours, zeros, signs).
near = st.sampled_from(TAUS).flatmap(lambda t: st.sampled_from([
    t, -t, float(np.nextafter(np.float32(t), np.float32(0))),
    float(np.nextafter(np.float32(t), np.float32(9))), 0.0, -0.0, 2 * t, -3 * t]))
entries = st.one_of(near, st.floats(-2, 2, width=32, allow_subnormal=False))
models = st.lists(hnp.arrays(np.float32, st.integers(0, 60), elements=entries),
                  min_size=1, max_size=3).map(lambda ts: {f"t{i}": t for i, t in enumerate(ts)})


@settings(max_examples=150, deadline=None)
@given(model=models, tau=st.sampled_from(TAUS))
def test_sends_exactly_the_entries_at_or_above_tau(model, tau):
    comp = threshold(tau=tau, feedback=False)
    enc = comp.encode(model, ctx(comp))
    t32 = np.float32(tau)
    sent = 0
    for name, x in model.items():
        keep = np.abs(x) >= t32
        r = enc.reconstructed[name]
        assert same_bits(r[keep], x[keep])
        assert not r[~keep].view(np.uint32).any()
        sent += int(keep.sum())
    assert enc.nnz == sent
    out = comp.decode(enc.payload, spec_of(model), ctx(comp).for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in model)


@settings(max_examples=60, deadline=None)
@given(rounds=st.lists(hnp.arrays(np.float32, 30, elements=st.floats(
    -1, 1, width=32, allow_subnormal=False)), min_size=1, max_size=6))
def test_error_feedback_conservation(rounds):
    comp = threshold(tau=0.5)
    state = comp.new_state()
    sent = np.zeros(30)
    for i, x in enumerate(rounds):
        prev = state.get("w", np.zeros(30, np.float32)).copy()
        r = comp.encode({"w": x}, ctx(comp, rnd=i, state=state)).reconstructed["w"]
        # exact in float32 (== so that -0.0 and +0.0, which the sum may swap, compare equal)
        assert np.array_equal(r + state["w"], x + prev)
        assert np.all(np.abs(state["w"]) < np.float32(0.5))  # what stays is below tau
        sent += r
    total = np.sum(np.array(rounds, np.float64), axis=0)
    assert np.allclose(sent + state["w"], total, rtol=0, atol=1e-5)


def test_small_updates_are_sent_once_accumulated():
    """A constant 0.25 with tau = 1 goes out every fourth round (0.25 * 4 >= 1), whole;
    without feedback it never goes."""
    x = {"w": np.full(5, 0.25, np.float32)}
    for fb, want in ((True, [0, 0, 0, 1.0, 0, 0, 0, 1.0]), (False, [0] * 8)):
        comp = threshold(tau=1.0, feedback=fb)
        state = comp.new_state()
        got = [comp.encode(x, ctx(comp, rnd=i, state=state)).reconstructed["w"][0]
               for i in range(8)]
        assert got == want


def test_encode_refuses_nonfinite():
    comp = threshold()
    state = {"w": np.full(2, 3e38, np.float32)}
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.array([np.inf, 1], np.float32)}, ctx(comp))
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.full(2, 3e38, np.float32)}, ctx(comp, state=state))
    assert same_bits(state["w"], np.full(2, 3e38, np.float32))


# ------------------------------------------------------------------ wire and decoder


@pytest.mark.parametrize("tau", [0.05, 0.5, 1e-9])
def test_wire_round_trip_and_fuzz(tau):
    """tau 1e-9 sends every non-zero entry: dense and bitmap layouts."""
    model = fuzz_model()
    spec = spec_of(model)
    comp = threshold(tau=tau)
    c = ctx(comp, rnd=5)
    enc = comp.encode(model, c)
    assert 0 < enc.nnz
    buf = frame(Kind.UPDATE, round=5, client=2, payload=enc.payload, codec_id=comp.codec_id,
                n_tensors=len(spec))
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=5, client=2,
                       codec_id=comp.codec_id, n_tensors=len(spec))
    out = comp.decode(payload, spec, c.for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in out)

    def obeys_the_rule(out):
        for v in out.values():
            nz = v[v.view(np.uint32) != 0]
            assert np.all(np.abs(nz) >= np.float32(tau))

    counts = fuzz(comp, spec, enc.payload, c.for_decode(),
                  container=positions.SECTIONS.container, n=1000, seed=4, extra=obeys_the_rule)
    assert counts["refused"] > 500, counts


def _first_value(v):
    def edit(secs):
        secs[2][1] = np.float32(v).tobytes() + secs[2][1][4:]
    return edit


@pytest.mark.parametrize("edit, match", [
    (_first_value(0.0999), "below the threshold"),
    (_first_value(-0.0), "below the threshold"),
    (_first_value(np.nan), "NaN or inf"),
    (_first_value(-np.inf), "NaN or inf"),
    (lambda s: s[2].__setitem__(1, s[2][1][:-4]), "section ends|left over"),
])
def test_malformed_fields_are_refused(edit, match):
    comp = threshold(tau=0.1)
    model = {"a": np.linspace(-1, 1, 30, dtype=np.float32), "b": np.zeros((4, 5), np.float32)}
    head, secs = take_apart(comp.encode(model, ctx(comp)).payload, positions.SECTIONS.container)
    edit(secs)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(put_together(head, secs, positions.SECTIONS.container), spec_of(model),
                    ctx(comp).for_decode())


def test_the_rule_uses_float32_tau_on_both_sides():
    """An entry equal to float32(tau) is sent and accepted, whatever tau's float64 tail."""
    tau = 0.1  # float32(0.1) > 0.1
    x = np.array([np.float32(tau), np.nextafter(np.float32(tau), np.float32(0))], np.float32)
    comp = threshold(tau=tau, feedback=False)
    enc = comp.encode({"w": x}, ctx(comp))
    assert enc.nnz == 1
    assert same_bits(comp.decode(enc.payload, [("w", (2,))], ctx(comp))["w"],
                     enc.reconstructed["w"])


@pytest.mark.parametrize("params, field, allowed", [
    ({"tau": 0}, "tau", "> 0"),
    ({"tau": -1e-3}, "tau", "> 0"),
    ({"tau": 1e39}, "tau", "> 0"),
    ({"tau": float("inf")}, "tau", "finite"),
    ({"tau": "small"}, "tau", "float"),
    ({"feedback": None}, "feedback", "bool"),
    ({"fraction": 0.1}, "fraction", "tau, feedback"),
])
def test_config_errors_name_the_field(params, field, allowed):
    with pytest.raises(ConfigError) as err:
        build_compressor({"threshold": params}, field=FIELD)
    assert f"{FIELD}.threshold.{field}" in str(err.value) and allowed in str(err.value)
