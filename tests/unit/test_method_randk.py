"""randk: positions drawn from the shared context on both sides (never sent), unbiased
without feedback (checked statistically), EF conservation with it, a strict decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sparse_fuzz import fuzz, fuzz_model, put_together, take_apart

from fedmpi.compress import spec_of
from fedmpi.compressors import Context, build_compressor, positions
from fedmpi.compressors.randk import RandK
from fedmpi.compressors.topk import k_of
from fedmpi.errors import ConfigError
from fedmpi.wire import Kind, WireFormatError, frame, parse

FIELD = "compression.downlink"


def randk(**params) -> RandK:
    return build_compressor({"randk": params}, field=FIELD)


def ctx(comp, seed=7, rnd=1, client=3, link="up", state=None):
    return Context(seed=seed, round=rnd, client=client, link=link,
                   state=comp.new_state() if state is None else state)


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(np.asarray(a).view(np.uint32),
                                                 np.asarray(b).view(np.uint32))


# Non-zero entries, so that the support of a reconstruction is the drawn positions.
nonzero = st.floats(0.125, 100, width=32).flatmap(lambda v: st.sampled_from([v, -v]))
models = st.lists(hnp.arrays(np.float32, st.integers(0, 80), elements=nonzero),
                  min_size=1, max_size=4).map(lambda ts: {f"t{i}": t for i, t in enumerate(ts)})


@settings(max_examples=100, deadline=None)
@given(model=models, fraction=st.floats(0.01, 1.0), fb=st.booleans(),
       who=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.integers(-1, 500)))
def test_k_values_at_the_shared_positions(model, fraction, fb, who):
    comp = randk(fraction=fraction, feedback=fb)
    c = ctx(comp, seed=who[0], rnd=who[1], client=who[2])
    enc = comp.encode(model, c)
    drawn = comp.draw(spec_of(model), c.for_decode())  # the receiver's draw
    for (name, x), idx in zip(model.items(), drawn):
        k = k_of(x.size, fraction, None)
        assert idx.size == k and np.unique(idx).size == k and (idx < max(1, x.size)).all()
        r = enc.reconstructed[name]
        assert np.array_equal(np.flatnonzero(r), idx)
        scale = np.float32(1) if fb or not k else np.float32(x.size / k)
        assert same_bits(r[idx], x[idx] * scale)
    assert enc.nnz == sum(idx.size for idx in drawn)
    out = comp.decode(enc.payload, spec_of(model), c.for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in model)


def test_payload_carries_values_only():
    model = fuzz_model()
    comp = randk(fraction=0.1)
    enc = comp.encode(model, ctx(comp))
    _, secs = take_apart(enc.payload, positions.SECTIONS.container)
    assert [s[0] for s in secs] == [4]
    assert len(secs[0][1]) == 4 * enc.nnz


@pytest.mark.parametrize("other", [dict(seed=8), dict(rnd=2), dict(client=4), dict(link="down")])
def test_a_wrong_context_draws_other_positions(other):
    """The decoder derives the positions from its context: the sender's context gives
    the sender's reconstruction, any other seed/round/client/link other positions."""
    comp = randk(fraction=0.05)
    model = {"w": np.arange(1, 2001, dtype=np.float32)}
    c = ctx(comp)
    enc = comp.encode(model, c)
    assert same_bits(comp.decode(enc.payload, spec_of(model), c.for_decode())["w"],
                     enc.reconstructed["w"])
    wrong = ctx(comp, **other).for_decode()
    out = comp.decode(enc.payload, spec_of(model), wrong)["w"]
    assert not np.array_equal(np.flatnonzero(out), np.flatnonzero(enc.reconstructed["w"]))
    assert np.array_equal(np.flatnonzero(out), comp.draw(spec_of(model), wrong)[0])


def test_tensors_draw_independently_and_the_server_owner_works():
    comp = randk(fraction=0.1)
    spec = [("a", (500,)), ("b", (500,))]
    a, b = comp.draw(spec, ctx(comp, client=-1, link="down"))
    assert not np.array_equal(a, b)


def test_unbiased_without_feedback():
    """E[decoded] = x: over many rounds (fresh positions each), the mean of the
    reconstructions is within 4.5 standard errors of x at every entry. With feedback
    (unscaled values) the same check fails: the mean is k/n x."""
    x = np.random.default_rng(0).normal(0, 1, 40).astype(np.float32)
    reps = 3000

    def mean_and_se(comp):
        rs = np.array([comp.encode({"w": x}, ctx(comp, rnd=r, state={})).reconstructed["w"]
                       for r in range(reps)], np.float64)
        return rs.mean(0), rs.std(0, ddof=1) / np.sqrt(reps)

    m, se = mean_and_se(randk(fraction=0.1, feedback=False))
    assert np.all(np.abs(m - x) <= 4.5 * se), np.max(np.abs(m - x) / se)
    m_fb, se_fb = mean_and_se(randk(fraction=0.1, feedback=True))
    assert np.mean(np.abs(m_fb - x) > 4.5 * se_fb) > 0.9
    assert np.allclose(m_fb, 0.1 * x, atol=5 * se_fb.max())


def test_positions_are_uniform():
    """Each position is drawn with probability k/n: counts over many rounds within
    5 binomial standard deviations."""
    comp = randk(fraction=0.1)
    n, reps = 50, 4000
    hits = np.zeros(n)
    for r in range(reps):
        hits[comp.draw([("w", (n,))], ctx(comp, rnd=r))[0]] += 1
    p = 5 / n
    assert np.all(np.abs(hits - reps * p) <= 5 * np.sqrt(reps * p * (1 - p)))


@settings(max_examples=60, deadline=None)
@given(rounds=st.lists(hnp.arrays(np.float32, 40, elements=st.floats(
    -10, 10, width=32, allow_subnormal=False)), min_size=1, max_size=5))
def test_error_feedback_conservation(rounds):
    comp = randk(fraction=0.2)
    state = comp.new_state()
    sent = np.zeros(40)
    for i, x in enumerate(rounds):
        prev = state.get("w", np.zeros(40, np.float32)).copy()
        r = comp.encode({"w": x}, ctx(comp, rnd=i, state=state)).reconstructed["w"]
        # exact in float32 (== so that -0.0 and +0.0, which the sum may swap, compare equal)
        assert np.array_equal(r + state["w"], x + prev)
        sent += r
    total = np.sum(np.array(rounds, np.float64), axis=0)
    assert np.allclose(sent + state["w"], total, rtol=0, atol=1e-4)


def test_encode_refuses_nonfinite_and_overflowing_scale():
    comp = randk(fraction=0.5, feedback=False)
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"w": np.array([np.nan, 1], np.float32)}, ctx(comp))
    with pytest.raises(ValueError, match="overflow float32"):
        comp.encode({"w": np.full(4, 3e38, np.float32)}, ctx(comp))
    state = {"w": np.ones(2, np.float32)}
    with pytest.raises(ValueError, match="NaN or inf"):
        randk().encode({"w": np.array([1, np.inf], np.float32)}, ctx(comp, state=state))
    assert same_bits(state["w"], np.ones(2, np.float32))


# ------------------------------------------------------------------ wire and decoder


@pytest.mark.parametrize("params", [{}, {"fraction": 0.3, "feedback": False}])
def test_wire_round_trip_and_fuzz(params):
    model = fuzz_model()
    spec = spec_of(model)
    comp = randk(**params)
    c = ctx(comp, rnd=5, client=9)
    enc = comp.encode(model, c)
    buf = frame(Kind.UPDATE, round=5, client=9, payload=enc.payload, codec_id=comp.codec_id,
                n_tensors=len(spec))
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=5, client=9,
                       codec_id=comp.codec_id, n_tensors=len(spec))
    out = comp.decode(payload, spec, c.for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in out)
    drawn = {n: idx for (n, _), idx in zip(spec, comp.draw(spec, c.for_decode()))}

    def on_drawn_positions(out):  # accepted = other values, never other positions
        for name, v in out.items():
            assert np.isin(np.flatnonzero(v), drawn[name]).all()

    counts = fuzz(comp, spec, enc.payload, c.for_decode(),
                  container=positions.SECTIONS.container, n=1000, seed=3,
                  extra=on_drawn_positions)
    assert counts["refused"] > 500, counts


@pytest.mark.parametrize("edit, match", [
    (lambda s: s[0].__setitem__(1, s[0][1][:-4]), "random-k sends"),
    (lambda s: s[0].__setitem__(1, np.float32(np.nan).tobytes() + s[0][1][4:]), "NaN or inf"),
    (lambda s: s[0].__setitem__(1, np.float32(-np.inf).tobytes() + s[0][1][4:]), "NaN or inf"),
    (lambda s: s[0].__setitem__(1, s[0][1] + bytes(4)), "more than this model can need"),
    (lambda s: s.append([4, b""]), "sections"),
])
def test_malformed_fields_are_refused(edit, match):
    comp = randk(fraction=0.2)
    model = {"a": np.linspace(-1, 1, 30, dtype=np.float32), "b": np.ones((4, 5), np.float32)}
    c = ctx(comp)
    head, secs = take_apart(comp.encode(model, c).payload, positions.SECTIONS.container)
    edit(secs)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(put_together(head, secs, positions.SECTIONS.container), spec_of(model),
                    c.for_decode())


def test_payload_of_other_parameters_is_refused():
    model = fuzz_model()
    enc = randk(fraction=0.1).encode(model, ctx(randk()))
    with pytest.raises(WireFormatError, match="codec"):
        randk(fraction=0.1, feedback=False).decode(enc.payload, spec_of(model), ctx(randk()))


@pytest.mark.parametrize("params, field, allowed", [
    ({"fraction": 0}, "fraction", "(0, 1]"),
    ({"fraction": -0.5}, "fraction", "(0, 1]"),
    ({"fraction": float("nan")}, "fraction", "finite"),
    ({"feedback": 1}, "feedback", "bool"),
    ({"count": 3}, "count", "fraction, feedback"),
])
def test_config_errors_name_the_field(params, field, allowed):
    with pytest.raises(ConfigError) as err:
        build_compressor({"randk": params}, field=FIELD)
    assert f"{FIELD}.randk.{field}" in str(err.value) and allowed in str(err.value)
