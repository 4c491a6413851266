"""topk: exactly k of the largest magnitudes (per tensor or global, ties by position),
error feedback conservation, the smallest position layout, and a strict decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sparse_fuzz import fuzz, fuzz_model, put_together, take_apart

from fedmpi.compress import spec_of
from fedmpi.compressors import Context, build_compressor, positions
from fedmpi.compressors.topk import TopK, k_of
from fedmpi.errors import ConfigError
from fedmpi.wire import Kind, WireFormatError, frame, parse

FIELD = "compression.uplink"


def topk(**params) -> TopK:
    return build_compressor({"topk": params}, field=FIELD)


def ctx(comp, rnd=1, client=3, state=None):
    return Context(seed=7, round=rnd, client=client, link="up",
                   state=comp.new_state() if state is None else state)


def reference_top(mag: np.ndarray, k: int) -> np.ndarray:
    """The k largest by (|x| descending, position ascending), by a plain sort."""
    order = np.lexsort((np.arange(mag.size), -mag.astype(np.float64)))
    return np.sort(order[:k])


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(np.asarray(a).view(np.uint32),
                                                 np.asarray(b).view(np.uint32))


# Small integer-valued floats: many ties, zeros and signed zeros.
tied = hnp.arrays(np.float32, st.integers(0, 60),
                  elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0]))
smooth = hnp.arrays(np.float32, st.integers(0, 60),
                    elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False))
models = st.lists(st.one_of(tied, smooth), min_size=1, max_size=4).map(
    lambda ts: {f"t{i}": t for i, t in enumerate(ts)})
ks = st.one_of(st.builds(dict, fraction=st.floats(0.01, 1.0)),
               st.builds(dict, count=st.integers(1, 70)))


@settings(max_examples=150, deadline=None)
@given(model=models, k=ks)
def test_exactly_the_k_largest_per_tensor(model, k):
    comp = topk(scope="tensor", feedback=False, **k)
    enc = comp.encode(model, ctx(comp))
    total = 0
    for name, x in model.items():
        want = k_of(x.size, comp.fraction, comp.count)
        assert want == (min(k["count"], x.size) if "count" in k else
                        (0 if x.size == 0 else min(x.size, max(1, int(comp.fraction * x.size
                                                                       + 0.5)))))
        sel = reference_top(np.abs(x), want)
        r = enc.reconstructed[name]
        assert same_bits(r[sel], x[sel])
        rest = np.ones(x.size, bool)
        rest[sel] = False
        assert same_bits(r[rest], np.zeros(int(rest.sum()), np.float32))
        total += want
    assert enc.nnz == total
    out = comp.decode(enc.payload, spec_of(model), ctx(comp).for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in model)


@settings(max_examples=150, deadline=None)
@given(model=models, k=ks)
def test_global_scope_sends_exactly_k_in_total_ties_by_position(model, k):
    comp = topk(scope="global", feedback=False, **k)
    enc = comp.encode(model, ctx(comp))
    flat = np.concatenate([x.reshape(-1) for x in model.values()])
    want = k_of(flat.size, comp.fraction, comp.count)
    sel = reference_top(np.abs(flat), want)
    recon = np.concatenate([enc.reconstructed[n].reshape(-1) for n in model])
    assert enc.nnz == want
    assert same_bits(recon[sel], flat[sel])
    rest = np.ones(flat.size, bool)
    rest[sel] = False
    assert not recon[rest].view(np.uint32).any()
    out = comp.decode(enc.payload, spec_of(model), ctx(comp).for_decode())
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in model)


def test_global_scope_is_one_threshold_across_tensors():
    """A tensor of small entries gets nothing in global scope, its share per tensor."""
    model = {"big": np.arange(1, 101, dtype=np.float32), "small": np.full(100, 0.01, np.float32)}
    g = topk(scope="global", fraction=0.1, feedback=False).encode(model, ctx(topk()))
    t = topk(scope="tensor", fraction=0.1, feedback=False).encode(model, ctx(topk()))
    assert np.count_nonzero(g.reconstructed["small"]) == 0
    assert np.count_nonzero(g.reconstructed["big"]) == 20
    assert np.count_nonzero(t.reconstructed["small"]) == 10


@settings(max_examples=60, deadline=None)
@given(rounds=st.lists(hnp.arrays(np.float32, 40, elements=st.floats(
    -10, 10, width=32, allow_subnormal=False)), min_size=1, max_size=5),
    scope=st.sampled_from(["tensor", "global"]))
def test_error_feedback_conservation(rounds, scope):
    """sent + new residual == input + previous residual (exact in float32 of the sum),
    and over several rounds: all sent + final residual == all inputs (to rounding)."""
    comp = topk(fraction=0.1, scope=scope)
    state = comp.new_state()
    sent = np.zeros(40)
    for x in rounds:
        prev = state.get("w", np.zeros(40, np.float32)).copy()
        enc = comp.encode({"w": x}, ctx(comp, state=state))
        r = enc.reconstructed["w"]
        # exact in float32 (== so that -0.0 and +0.0, which the sum may swap, compare equal)
        assert np.array_equal(r + state["w"], x + prev)
        assert np.count_nonzero(state["w"][r != 0]) == 0  # what is sent leaves the residual
        sent += r
    total = np.sum(np.array(rounds, np.float64), axis=0)
    assert np.allclose(sent + state["w"], total, rtol=0, atol=1e-5 * len(rounds) * 10)


def test_feedback_off_keeps_no_state():
    comp = topk(feedback=False)
    assert not comp.stateful and comp.new_state() is None
    assert topk().stateful and topk().new_state() == {}


def test_encode_refuses_nonfinite_and_keeps_state():
    comp = topk()
    state = {"w": np.ones(4, np.float32)}
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="NaN or inf"):
            comp.encode({"w": np.array([1, bad, 0, 2], np.float32)}, ctx(comp, state=state))
    with pytest.raises(ValueError, match="NaN or inf"):  # input + residual overflows
        comp.encode({"w": np.full(4, 3e38, np.float32)},
                    ctx(comp, state={"w": np.full(4, 3e38, np.float32)}))
    assert same_bits(state["w"], np.ones(4, np.float32))


# ------------------------------------------------------------------ positions layout


def gaps_cost(idx, n):
    """Independent reference of the smallest index: bitmap, narrowest delta, varint."""
    if idx.size == n:
        return 0
    gaps = np.diff(idx, prepend=-1) - 1
    big = int(gaps.max()) if idx.size else 0
    width = 1 if big < 256 else 2 if big < 65536 else 4
    varint = sum(max(1, -(-int(g).bit_length() // 7)) for g in gaps)
    return min((n + 7) // 8, width * idx.size, varint)


@pytest.mark.parametrize("n, picks, layout", [
    (64, np.arange(64), positions.DENSE),
    (64, np.arange(0, 64, 2), positions.BITMAP),
    (1000, np.array([3, 200, 400]), positions.DELTA8),
    (70000, np.array([5, 1000, 40000, 69999]), positions.DELTA16),
    (8000, np.cumsum(np.tile([51, 301], 20)), positions.VARINT),  # delta16: 2 bytes each
    # (delta32 wins only where gaps >= 2**28 outnumber the others: tensors of 1e9 entries)
])
def test_each_layout_is_chosen_when_smallest_and_round_trips(n, picks, layout):
    x = np.zeros(n, np.float32)
    x[picks] = np.arange(1, picks.size + 1)
    comp = topk(count=picks.size, feedback=False)
    enc = comp.encode({"w": x}, ctx(comp))
    _, secs = take_apart(enc.payload, positions.SECTIONS.container)
    table = np.frombuffer(secs[0][1], positions.ROW)
    assert int(table["layout"][0]) == layout and int(table["count"][0]) == picks.size
    assert len(secs[1][1]) == gaps_cost(picks, n)
    out = comp.decode(enc.payload, [("w", (n,))], ctx(comp).for_decode())
    assert same_bits(out["w"], x)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_varint_round_trip(gaps):
    g = np.array(gaps, np.int64)
    buf = positions.varint_encode(g)
    assert buf.size == sum(max(1, -(-v.bit_length() // 7)) for v in gaps)
    assert np.array_equal(positions.varint_decode(buf, g.size), g)


@pytest.mark.parametrize("buf, count, match", [
    ([0x80, 0x00], 1, "overlong"),
    ([0x85], 1, "continues"),
    ([0x01, 0x02], 1, "holds 2"),
    ([0xFF] * 5 + [0x01], 1, "6 bytes"),
    ([0x01], 0, "for no values"),
])
def test_varint_decoder_refuses_noncanonical(buf, count, match):
    with pytest.raises(WireFormatError, match=match):
        positions.varint_decode(np.array(buf, np.uint8), count)


# ------------------------------------------------------------------ wire and decoder


@pytest.fixture(scope="module")
def sample():
    model = fuzz_model()
    return model, spec_of(model)


@pytest.mark.parametrize("params", [{}, {"scope": "global", "fraction": 0.05},
                                    {"count": 3}, {"fraction": 0.5, "feedback": False}])
def test_wire_round_trip(sample, params):
    model, spec = sample
    comp = topk(**params)
    c = ctx(comp, rnd=5, client=9)
    enc = comp.encode(model, c)
    buf = frame(Kind.UPDATE, round=5, client=9, payload=enc.payload, codec_id=comp.codec_id,
                n_tensors=len(spec))
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=5, client=9,
                       codec_id=comp.codec_id, n_tensors=len(spec))
    out = comp.decode(payload, spec, c.for_decode())
    assert list(out) == [n for n, _ in spec]
    assert all(same_bits(out[n], enc.reconstructed[n]) for n in out)
    rng = np.random.default_rng(1)
    for _ in range(200):  # the checksums catch any damage to the framed message
        bad = buf.copy()
        bad[int(rng.integers(bad.nbytes))] ^= np.uint8(1 << int(rng.integers(8)))
        with pytest.raises(WireFormatError):
            comp.decode(parse(bad, expect_kind=Kind.UPDATE)[1], spec, c.for_decode())


@pytest.mark.parametrize("params", [{}, {"scope": "global", "fraction": 0.05},
                                    {"fraction": 0.5, "feedback": False}])
def test_fuzzed_payloads_raise_only_wire_format_errors(sample, params):
    model, spec = sample
    comp = topk(**params)
    enc = comp.encode(model, ctx(comp))
    ks, total = comp._counts(spec)

    def at_most_k(out):  # what a decoder accepts still has k values per tensor / in all
        nz = [np.count_nonzero(out[n]) for n, _ in spec]
        assert sum(nz) <= total and (ks is None or all(a <= b for a, b in zip(nz, ks)))

    counts = fuzz(comp, spec, enc.payload, ctx(comp).for_decode(),
                  container=positions.SECTIONS.container, n=1200, seed=len(params),
                  extra=at_most_k)
    assert counts["refused"] > 700, counts  # (a changed value is a valid message)


def _edit(comp, model, fn):
    enc = comp.encode(model, ctx(comp))
    head, secs = take_apart(enc.payload, positions.SECTIONS.container)
    fn(secs)
    return put_together(head, secs, positions.SECTIONS.container)


def _row(layout=None, count=None, pad=None):
    def fn(secs):
        t = np.frombuffer(secs[0][1], positions.ROW).copy()
        if layout is not None:
            t["layout"][0] = layout
        if count is not None:
            t["count"][0] = count
        if pad is not None:
            t["pad"][0] = pad
        secs[0][1] = t.tobytes()
    return fn


def _bitmap_of_first(secs):  # the same positions (delta8 gaps) written as a bitmap
    gaps = np.frombuffer(secs[1][1][:3], np.uint8)
    mask = np.zeros(300, bool)
    mask[np.cumsum(gaps.astype(np.int64) + 1) - 1] = True
    secs[1][1] = np.packbits(mask, bitorder="little").tobytes() + secs[1][1][3:]
    _row(layout=positions.BITMAP)(secs)


def _value(v):
    def fn(secs):
        secs[2][1] = np.float32(v).tobytes() + secs[2][1][4:]
    return fn


FOCUSED = [
    (_row(layout=9), "unknown layout"),
    (_row(pad=b"\1\0\0"), "padding"),
    (_row(count=301), "301 values for 300"),
    (_bitmap_of_first, "encoder's \\(smallest\\) choice"),
    (_value(np.nan), "NaN or inf"),
    (_value(np.inf), "NaN or inf"),
    (lambda s: s.__setitem__(1, [1, s[1][1] + b"\0"]), "left over|positions coded"),
    (lambda s: s.append([1, b""]), "sections"),
    (lambda s: s.__setitem__(1, [1, bytes(positions.index_most([("a", (300,)), ("b", (50,))])
                                        + 1)]), "more than this model can need"),
]


@pytest.mark.parametrize("fn, match", FOCUSED)
def test_malformed_fields_are_refused(fn, match):
    model = {"a": np.zeros(300, np.float32), "b": np.linspace(-1, 1, 50, dtype=np.float32)}
    model["a"][[10, 100, 250]] = [5, -6, 7]
    comp = topk(count=3, feedback=False)
    bad = _edit(comp, model, fn)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(bad, spec_of(model), ctx(comp).for_decode())


def test_a_well_formed_payload_with_another_count_is_refused():
    """Consistent sections, but not the count top-k sends (more values than k in all
    is refused earlier, by the section bound)."""
    spec = [("a", (300,)), ("b", (50,))]

    def picks(na, nb):
        return [(np.arange(na), np.ones(na, np.float32)), (np.arange(nb), np.ones(nb, np.float32))]

    for comp, wrong, right, match in (
            (topk(count=3), (4, 2), (3, 3), "a: 4 values, top-k sends 3"),
            (topk(count=6, scope="global"), (3, 2), (4, 2), "5 values in all, global top-k sends 6")):
        with pytest.raises(WireFormatError, match=match):
            comp.decode(positions.pack(comp, spec, picks(*wrong)), spec, ctx(comp).for_decode())
        out = comp.decode(positions.pack(comp, spec, picks(*right)), spec, ctx(comp).for_decode())
        assert [np.count_nonzero(v) for v in out.values()] == list(right)


def test_payload_of_other_parameters_or_model_is_refused(sample):
    model, spec = sample
    enc = topk(fraction=0.01).encode(model, ctx(topk()))
    with pytest.raises(WireFormatError, match="codec"):
        topk(fraction=0.02).decode(enc.payload, spec, ctx(topk()).for_decode())
    with pytest.raises(WireFormatError, match="another model"):
        topk(fraction=0.01).decode(enc.payload, spec[:-1], ctx(topk()).for_decode())


@pytest.mark.parametrize("params, field, allowed", [
    ({"fraction": 0}, "fraction", "(0, 1]"),
    ({"fraction": 1.5}, "fraction", "(0, 1]"),
    ({"count": 0}, "count", ">= 1"),
    ({"count": 2.5}, "count", "int"),
    ({"scope": "layer"}, "scope", "tensor | global"),
    ({"feedback": "yes"}, "feedback", "bool"),
    ({"k": 3}, "k", "fraction, count, scope, feedback"),
])
def test_config_errors_name_the_field(params, field, allowed):
    with pytest.raises(ConfigError) as err:
        build_compressor({"topk": params}, field=FIELD)
    assert f"{FIELD}.topk.{field}" in str(err.value) and allowed in str(err.value)
