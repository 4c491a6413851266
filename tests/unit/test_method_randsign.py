"""randsign (compressors/randsign.py): signs of a shared-seed random fraction of each tensor
(positions never sent) + mean |x| over the drawn entries, abstention in the majority vote
elsewhere, EF conservation with feedback, a strict decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from method_checks import (SIGN_SECTION_EDITS, assert_wire_round_trip, fuzz, fuzz_framed,
                           fuzz_sections, model, repack, sections)

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import Context, build_compressor
from fedmpi.compressors.randsign import RandSign
from fedmpi.compressors.signsgd import MajorityVote
from fedmpi.compressors.topk import k_of
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

FIELD = "compression.uplink"


def randsign(**params) -> RandSign:
    return build_compressor({"randsign": params}, field=FIELD)


def ctx(comp=None, client=2, rnd=3, seed=7, state=None):
    st_ = (comp.new_state() if comp is not None else {}) if state is None else state
    return Context(seed, rnd, client, "up", st_)


nonzero = st.floats(0.125, 100, width=32).flatmap(lambda v: st.sampled_from([v, -v]))
models = st.lists(hnp.arrays(np.float32, st.integers(0, 80), elements=nonzero),
                  min_size=1, max_size=4).map(lambda ts: {f"t{i}": t for i, t in enumerate(ts)})


@settings(max_examples=100, deadline=None)
@given(model_=models, fraction=st.floats(0.01, 1.0),
       who=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.integers(-1, 500)))
def test_signs_at_the_shared_positions_and_the_mean_scale(model_, fraction, who):
    comp = randsign(fraction=fraction)
    c = ctx(comp, seed=who[0], rnd=who[1], client=who[2])
    enc = comp.encode(model_, c)
    drawn = comp.draw(spec_of(model_), c.for_decode())  # the receiver's own draw
    for (name, x), idx in zip(model_.items(), drawn):
        k = k_of(x.size, fraction, None)
        assert idx.size == k and np.unique(idx).size == k
        r = enc.reconstructed[name]
        assert np.array_equal(np.flatnonzero(r), idx)  # every drawn entry is non-zero here
        scale = np.float32(np.abs(x[idx].astype(np.float64)).mean()) if k else 0
        assert np.array_equal(r[idx], np.where(x[idx] < 0, -scale, scale).astype(np.float32))
    assert enc.nnz == sum(idx.size for idx in drawn)
    # 32 / fraction fewer bits than float32, up to the header, the scales and a byte
    bits = sum(idx.size for idx in drawn)
    assert enc.payload.nbytes == 12 + 4 + 2 * 20 + 4 * len(model_) + (bits + 7) // 8
    out = comp.decode(enc.payload, spec_of(model_), c.for_decode())
    assert all(np.array_equal(out[n].view(np.uint32), enc.reconstructed[n].view(np.uint32))
               for n in model_)


def test_positions_are_a_pure_function_of_seed_round_client_link():
    comp, spec = randsign(fraction=0.1), [("w", (1000,))]
    same = [comp.draw(spec, Context(1, 2, 3, "up"))[0] for _ in range(2)]
    assert np.array_equal(*same)
    for other in (Context(9, 2, 3, "up"), Context(1, 9, 3, "up"), Context(1, 2, 9, "up"),
                  Context(1, 2, 3, "down")):
        assert not np.array_equal(same[0], comp.draw(spec, other)[0])
    randk = build_compressor({"randk": {"fraction": 0.1}}, field=FIELD)
    assert not np.array_equal(same[0], randk.draw(spec, Context(1, 2, 3, "up"))[0])


def test_error_feedback_conserves_the_input():
    """sent + new residual = input + previous residual, over rounds, entry by entry."""
    comp = randsign(fraction=0.3, feedback=True)
    assert comp.stateful and not randsign().stateful
    rng = np.random.default_rng(0)
    state = comp.new_state()
    prev = {"w": np.zeros(50, np.float32)}
    for r in range(4):
        x = {"w": rng.normal(0, 1, 50).astype(np.float32)}
        enc = comp.encode(x, ctx(comp, rnd=r, state=state))
        lhs = enc.reconstructed["w"].astype(np.float64) + state["w"]
        np.testing.assert_allclose(lhs, x["w"].astype(np.float64) + prev["w"], atol=1e-6)
        prev = {"w": state["w"].copy()}
    plain, state = randsign(fraction=0.3), {}  # no feedback: undrawn entries dropped
    enc = plain.encode(x, ctx(plain, state=state))
    assert state == {} and np.count_nonzero(enc.reconstructed["w"]) == 15


def test_vote_abstains_where_a_client_drew_nothing():
    """Real messages of 6 clients: per entry the sign of the sum of the signs of the
    clients that drew it (0 where none did), times the mean of all clients' scales."""
    rng = np.random.default_rng(3)
    comp = randsign(fraction=0.3)
    spec = [("w", (4, 9))]
    xs = [{"w": rng.normal(0, 1, (4, 9)).astype(np.float32)} for _ in range(6)]
    fold = comp.fold(None)
    assert isinstance(fold, MajorityVote)
    votes, scales = np.zeros(36, np.int64), []
    for i, x in enumerate(xs):
        c = ctx(client=i)
        enc = comp.encode(x, c)
        fold.add(comp.decode(enc.payload, spec_of(x), c.for_decode()), weight=1 + i)
        idx = comp.draw(spec, c)[0]
        votes[idx] += np.where(x["w"].reshape(-1)[idx] < 0, -1, 1)
        scales.append(np.float32(np.abs(x["w"].reshape(-1)[idx].astype(np.float64)).mean()))
    mean_scale = sum(float(s) for s in scales) / len(scales)
    want = (np.sign(votes) * mean_scale).astype(np.float32).reshape(4, 9)
    assert np.array_equal(fold.result()["w"], want)
    assert (votes == 0).any()  # some entries no client drew (or a tie): 0 in the result
    assert randsign(vote=False).fold(None) is None


def test_uplink_ratio_is_about_32_over_fraction():
    ts = {"w": np.random.default_rng(1).normal(0, 1, 200_000).astype(np.float32)}
    enc = randsign(fraction=0.25).encode(ts, ctx())
    assert 125 < 4 * 200_000 / enc.payload.nbytes < 128.1


def test_wire_round_trip_and_fuzz():
    for comp in (randsign(fraction=0.4), randsign(fraction=0.4, feedback=True, vote=False)):
        ts = model()
        assert_wire_round_trip(comp, ts, ctx(comp))
        refused, _ = fuzz(comp, ts, ctx(comp))
        assert refused > 800
        fuzz_framed(comp, ts, ctx(comp))


def test_refuses_nan_and_inf():
    with pytest.raises(ValueError, match="NaN or inf"):
        randsign().encode({"w": np.array([np.inf], np.float32)}, ctx())


TS = {"a": np.array([0.5, -1.0, 0.0, 2.0, 0.25, -3.0, 1.0, 2.0], np.float32),
      "b": np.zeros(8, np.float32), "e": np.zeros(0, np.float32)}
SPEC = spec_of(TS)  # fraction 0.5: 4 + 4 drawn entries, one byte of signs; b has scale 0


@pytest.mark.parametrize("edit, match", SIGN_SECTION_EDITS)
def test_malformed_fields_are_refused(edit, match):
    comp = randsign(fraction=0.5)
    parts = sections(comp, comp.encode(TS, ctx()).payload, SPEC, [(4, 12), (1, 1)])
    edit(parts)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, SPEC, parts, [4, 1]), SPEC, ctx())


def test_padding_bits_are_refused():
    comp, ts = randsign(fraction=0.5), {"w": np.array([1.0, -1.0, 0.5, 2, 3, -4], np.float32)}
    spec = spec_of(ts)
    parts = sections(comp, comp.encode(ts, ctx()).payload, spec, [(4, 4), (1, 1)])
    assert np.array_equal(repack(comp, spec, parts, [4, 1]), comp.encode(ts, ctx()).payload)
    parts[1][0] |= 0x08
    with pytest.raises(WireFormatError, match="padding bits"):
        comp.decode(repack(comp, spec, parts, [4, 1]), spec, ctx())


def test_section_fuzz():
    comp, ts = randsign(fraction=0.5), model()
    refused, accepted = fuzz_sections(comp, ts, ctx(), [(4, 24), (1, 1000)], [4, 1])
    assert refused > 500 and accepted > 0


def test_payload_of_other_parameters_or_another_draw_is_refused():
    ts = model()
    enc = randsign(fraction=0.25).encode(ts, ctx())
    with pytest.raises(WireFormatError, match="codec"):
        randsign(fraction=0.5).decode(enc.payload, spec_of(ts), ctx())


@pytest.mark.parametrize("params, field, allowed", [
    ({"fraction": 0}, "fraction", "(0, 1]"), ({"fraction": 1.5}, "fraction", "(0, 1]"),
    ({"fraction": float("nan")}, "fraction", "finite"), ({"vote": 1}, "vote", "bool"),
    ({"feedback": "yes"}, "feedback", "bool"), ({"bits": 2}, "bits", "fraction, feedback, vote"),
])
def test_config_errors_name_the_field(params, field, allowed):
    with pytest.raises(ConfigError) as err:
        randsign(**params)
    assert err.value.field == f"{FIELD}.randsign.{field}" and allowed in str(err.value)
