"""signSGD (compressors/signsgd.py): one sign bit per entry + mean |x| per tensor, and the
majority vote fold: sign(sum of signs) * mean of the clients' scales, ties give 0."""

from __future__ import annotations

import numpy as np
import pytest
from method_checks import (SIGN_SECTION_EDITS, assert_wire_round_trip, fuzz, fuzz_framed,
                           fuzz_sections, model, repack, sections)

from fedmpi.compress.pipeline import spec_of
from fedmpi.compressors import Context, build_compressor
from fedmpi.compressors.signsgd import MajorityVote
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

FIELD = "compression.uplink"


def signsgd(**params):
    return build_compressor({"signsgd": params}, field=FIELD)


def ctx(client=2):
    return Context(7, 3, client, "up")


def test_sign_bits_and_scale():
    ts = model(1)
    comp = signsgd()
    enc = comp.encode(ts, ctx())
    spec = spec_of(ts)
    n = sum(t.size for t in ts.values())
    scales, bits = sections(comp, enc.payload, spec, [(4, 4 * len(ts)), (1, (n + 7) // 8)])
    assert enc.payload.nbytes == 12 + 4 + 2 * 20 + 4 * len(ts) + (n + 7) // 8
    want_scales = [np.float32(np.abs(t.astype(np.float64)).mean()) if t.size else 0.0
                   for t in ts.values()]
    assert np.array_equal(scales.view("<f4"), np.asarray(want_scales, np.float32))
    flat = np.concatenate([t.reshape(-1) for t in ts.values()])
    want_bits = (flat < 0) & (np.repeat(want_scales, [t.size for t in ts.values()]) > 0)
    assert np.array_equal(np.unpackbits(bits, count=n, bitorder="little"), want_bits)
    for (name, t), s in zip(ts.items(), want_scales):
        assert np.array_equal(enc.reconstructed[name], np.where(t < 0, -s, s).astype(np.float32))
    assert enc.nnz == n - ts["zeros"].size  # the all-zero tensor sends scale 0


def test_wire_round_trip_and_fuzz():
    comp, ts = signsgd(vote=False), model()
    assert_wire_round_trip(comp, ts, ctx())
    refused, _ = fuzz(comp, ts, ctx())
    assert refused > 800
    fuzz_framed(comp, ts, ctx())


def test_refuses_nan_and_inf():
    with pytest.raises(ValueError, match="NaN or inf"):
        signsgd().encode({"w": np.array([np.inf], np.float32)}, ctx())


def test_majority_vote_of_crafted_signs():
    """Five clients' decoded tensors (entries +-scale_i, 0 where the client abstains), by
    hand: votes per entry and the mean scale (1 + 2 + 3 + 4 + 0) / 5 = 2."""
    signs = np.array([[+1, +1, -1, +1, -1, +1],
                      [+1, -1, -1, -1, +1, -1],
                      [+1, +1, +1, -1, -1, +1],
                      [-1, -1, +1, +1, +1, -1],
                      [0, 0, 0, 0, 0, 0]])  # a client of scale 0 (all-zero update)
    scales = [1.0, 2.0, 3.0, 4.0, 0.0]
    # column sums:  2,  0,  0,  0,  0,  0 -> ties give 0 except the first entry
    fold = signsgd().fold(None)
    assert isinstance(fold, MajorityVote)
    for s, row, w in zip(scales, signs, [10, 1, 1, 1, 1]):
        fold.add({"w": (s * row).astype(np.float32)}, weight=w)  # weights do not count
    assert np.array_equal(fold.result()["w"], np.float32([2, 0, 0, 0, 0, 0]))

    fold = signsgd().fold({"w": np.full(6, 0.5, np.float32)})  # + the reference
    for s, row in zip(scales[:3], signs[:3]):
        fold.add({"w": (s * row).astype(np.float32)}, weight=1)
    # sums: 3, 1, -1, -1, -1, 1; mean scale 2
    assert np.array_equal(fold.result()["w"], np.float32([2.5, 2.5, -1.5, -1.5, -1.5, 2.5]))


def test_vote_through_encode_and_decode():
    """Real messages: the fold of decoded client messages is the vote of their signs."""
    rng = np.random.default_rng(3)
    comp = signsgd()
    xs = [{"w": rng.normal(0, 1, (4, 9)).astype(np.float32)} for _ in range(7)]
    fold = comp.fold(None)
    for i, x in enumerate(xs):
        enc = comp.encode(x, ctx(i))
        fold.add(comp.decode(enc.payload, spec_of(x), ctx(i).for_decode()), weight=1 + i)
    votes = sum(np.where(x["w"] < 0, -1, 1) for x in xs)
    scale = np.mean([np.float32(np.abs(x["w"].astype(np.float64)).mean()) for x in xs])
    assert np.array_equal(fold.result()["w"], (np.sign(votes) * scale).astype(np.float32))


def test_vote_false_leaves_the_weighted_mean():
    """No fold of its own: the strategy's weighted mean of the decoded tensors."""
    assert signsgd(vote=False).fold(None) is None
    assert signsgd(vote=False).codec_id != signsgd().codec_id


def test_fold_refuses_bad_input():
    fold = MajorityVote()
    with pytest.raises(ValueError, match="no client"):
        fold.result()
    with pytest.raises(ValueError, match="weight"):
        fold.add({"w": np.ones(2, np.float32)}, 0)
    fold.add({"w": np.ones(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="do not match"):
        fold.add({"v": np.ones(2, np.float32)}, 1)


@pytest.mark.parametrize("params, field", [({"vote": 1}, "vote"), ({"vote": "yes"}, "vote"),
                                           ({"scale": 1.0}, "scale")])
def test_config_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        signsgd(**params)
    assert err.value.field == f"{FIELD}.signsgd.{field}"


TS = {"a": np.array([0.5, -1.0, 0.0, 2.0, 0.25], np.float32), "b": np.zeros(3, np.float32),
      "e": np.zeros(0, np.float32)}
SPEC = spec_of(TS)  # 8 entries: one byte of signs, no padding; scales a > 0, b = e = 0


@pytest.mark.parametrize("edit, match", SIGN_SECTION_EDITS)
def test_malformed_fields_are_refused(edit, match):
    comp = signsgd()
    parts = sections(comp, comp.encode(TS, ctx()).payload, SPEC, [(4, 12), (1, 1)])
    edit(parts)
    with pytest.raises(WireFormatError, match=match):
        comp.decode(repack(comp, SPEC, parts, [4, 1]), SPEC, ctx())


def test_padding_bits_are_refused():
    comp, ts = signsgd(), {"w": np.array([1.0, -1.0, 0.5], np.float32)}
    spec = spec_of(ts)
    parts = sections(comp, comp.encode(ts, ctx()).payload, spec, [(4, 4), (1, 1)])
    assert np.array_equal(repack(comp, spec, parts, [4, 1]), comp.encode(ts, ctx()).payload)
    parts[1][0] |= 0x08
    with pytest.raises(WireFormatError, match="padding bits"):
        comp.decode(repack(comp, spec, parts, [4, 1]), spec, ctx())


def test_section_fuzz():
    comp, ts = signsgd(), model()
    refused, accepted = fuzz_sections(comp, ts, ctx(), [(4, 24), (1, 1000)], [4, 1])
    assert refused > 500 and accepted > 0
