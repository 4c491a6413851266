"""EF-signSGD (compressors/efsignsgd.py): scaled sign (||c||_1 / d) of the compensated
input, error feedback conservation, its own codec id on the signSGD wire layout."""

from __future__ import annotations

import numpy as np
import pytest
from method_checks import assert_wire_round_trip, fuzz, fuzz_framed, fuzz_sections, model

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import Context, build_compressor
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

FIELD = "compression.uplink"
EPS = np.finfo(np.float32).eps


def efsign():
    return build_compressor({"efsignsgd": {}}, field=FIELD)


def test_conservation_over_rounds():
    """sent + new residual == input + previous residual, per round, within the float32
    rounding of c = x + e and of e' = c - sent; the residual lives in ctx.state; over all
    rounds the sent sum is the input sum minus the last residual."""
    comp = efsign()
    assert comp.stateful and comp.new_state() == {}
    state = comp.new_state()
    rng = np.random.default_rng(0)
    sent_sum = input_sum = 0.0
    prev = {k: np.zeros_like(v) for k, v in model().items()}
    for rnd in range(12):
        x = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32)
             for k, v in model(rnd).items()}
        ctx = Context(1, rnd, 4, "up", state)
        enc = comp.encode(x, ctx)
        assert set(state) == set(x)
        for k in x:
            c = x[k].astype(np.float64) + prev[k]
            sent = enc.reconstructed[k].astype(np.float64)
            new = state[k].astype(np.float64)
            tol = 2 * EPS * (np.abs(c) + np.abs(new))
            assert np.all(np.abs(sent + new - c) <= tol), (rnd, k)
            if x[k].size:  # the scaled sign of the compensated input
                scale = np.float32(np.abs(c).mean())
                assert np.allclose(np.abs(sent), scale, rtol=2 * EPS, atol=0)
                assert np.all(np.sign(sent) == np.where(c < 0, -1, 1) * (scale > 0))
        prev = {k: v.copy() for k, v in state.items()}
        sent_sum = sent_sum + sum(enc.reconstructed[k].astype(np.float64).sum() for k in x)
        input_sum = input_sum + sum(v.astype(np.float64).sum() for v in x.values())
    last = sum(v.astype(np.float64).sum() for v in state.values())
    assert abs(sent_sum + last - input_sum) < 1e-3


def test_error_feedback_changes_what_is_sent():
    """The second message carries the first one's residual: not the plain scaled sign."""
    comp, x = efsign(), {"w": np.array([1.0, -0.1, 0.1, 0.2], np.float32)}
    state = {}
    first = comp.encode(x, Context(1, 0, 0, "up", state)).reconstructed["w"]
    second = comp.encode(x, Context(1, 1, 0, "up", state)).reconstructed["w"]
    plain = build_compressor({"signsgd": {"vote": False}}, field=FIELD).encode(
        x, Context(1, 1, 0, "up")).reconstructed["w"]
    assert np.array_equal(first, plain) and not np.array_equal(second, plain)
    assert np.array_equal(np.sign(second), np.sign(x["w"] + (x["w"] - first)))


def test_wire_round_trip_and_fuzz():
    comp, ts = efsign(), model()
    assert_wire_round_trip(comp, ts, Context(1, 2, 3, "down", {}))
    refused, _ = fuzz(comp, ts, Context(1, 2, 3, "down", {}))
    assert refused > 800
    fuzz_framed(comp, ts, Context(1, 2, 3, "down", {}))


def test_signsgd_payloads_are_not_accepted():
    ts = model()
    enc = build_compressor({"signsgd": {}}, field=FIELD).encode(ts, Context(1, 0, 0, "up"))
    with pytest.raises(WireFormatError, match="codec"):
        efsign().decode(enc.payload, spec_of(ts), Context(1, 0, 0, "up"))


def test_refuses_nan_inf_and_overflowing_residuals():
    comp = efsign()
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.array([np.nan], np.float32)}, Context(1, 0, 0, "up", {}))
    state = {"w": np.array([3e38], np.float32)}
    with pytest.raises(ValueError, match="residual overflows"):
        comp.encode({"w": np.array([3e38], np.float32)}, Context(1, 0, 0, "up", state))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        build_compressor({"efsignsgd": {"feedback": False}}, field=FIELD)
    assert err.value.field == f"{FIELD}.efsignsgd.feedback"


def test_section_fuzz():
    comp, ts = efsign(), model()
    refused, accepted = fuzz_sections(comp, ts, Context(1, 2, 3, "up", {}), [(4, 24), (1, 1000)],
                                      [4, 1])
    assert refused > 500 and accepted > 0
