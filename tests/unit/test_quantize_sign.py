"""quantize {method: sign}: 1 bit per value + one float32 scale per tensor (sign + scale),
the 1-bit cell of the pruning x quantization study; strict decode; numpy and torch agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmpi.compress import Memory, build_pipeline
from fedmpi.compress.base import build
from fedmpi.compress.quantize import pack_bits
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

values = hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-1e4, 1e4, width=32))
SIGN = {"quantize": {"method": "sign"}}


@settings(max_examples=60, deadline=None)
@given(values)
def test_sign_is_plus_or_minus_the_mean_magnitude(v):
    q = build("quantize", {"method": "sign"})
    codes, scale, p1 = q.encode(v)
    assert codes.nbytes == (v.size + 7) // 8 and p1 == 0.0
    got = q.decode(codes, v.size, scale, p1)
    if v.size:
        assert scale == np.float32(np.abs(v.astype(np.float64)).mean())
        if scale > 0:
            np.testing.assert_array_equal(got, np.where(v < 0, -np.float32(scale),
                                                        np.float32(scale)))
        else:
            assert (got == 0).all() and not np.signbit(got).any()
        assert np.all(np.abs(got.astype(np.float64) - v) <= np.abs(v) + scale)


def test_only_one_bit():
    assert build("quantize", {"method": "sign", "bits": 1}).k == 1
    with pytest.raises(ConfigError, match="bits"):
        build_pipeline([{"quantize": {"method": "sign", "bits": 2}}])


@pytest.mark.parametrize("scale, p1, codes, why", [
    (-1.0, 0.0, [0b1], "scale"),
    (-0.0, 0.0, [0b0], "scale"),
    (float("nan"), 0.0, [0b0], "scale"),
    (float("inf"), 0.0, [0b0], "scale"),
    (1.0, 0.5, [0b0], "p1"),
    (0.0, 0.0, [0b10], "scale 0"),
    (1.0, 0.0, [0b1000], "padding"),  # 3 values: bit 3 is padding
])
def test_strict_decode(scale, p1, codes, why):
    q = build("quantize", {"method": "sign"})
    with pytest.raises(WireFormatError, match=why):
        q.decode(np.array(codes, np.uint8), 3, scale, p1)


def test_pruned_pipeline_with_feedback_round_trips_and_is_small():
    pipe = build_pipeline([{"prune": {"rate": 0.5}}, SIGN, {"memory": {}}, {"sparse": {}},
                           {"zstd": {}}])
    rng = np.random.default_rng(1)
    t = {"w": rng.standard_normal((64, 64)).astype(np.float32),
         "b": rng.standard_normal(64).astype(np.float32)}
    spec = [(k, v.shape) for k, v in t.items()]
    mem = Memory()
    enc = pipe.encode(t, memory=mem)
    out = pipe.decode(enc.payload, spec)
    for k in t:
        np.testing.assert_array_equal(out[k], enc.reconstructed[k])
        kept = out[k][out[k] != 0]
        assert np.unique(np.abs(kept)).size == 1  # one magnitude per tensor
        np.testing.assert_allclose(mem.residual[k], t[k] - out[k], atol=1e-6)
    dense32 = 4 * (64 * 64 + 64)
    assert enc.payload.nbytes < dense32 / 16  # 1 bit + positions for half the entries


def test_torch_codec_matches_numpy_and_refuses_the_same():
    pipe = build_pipeline([{"prune": {"rate": 0.2}}, SIGN, {"sparse": {}}])
    rng = np.random.default_rng(2)
    t = {"w": rng.standard_normal((30, 20)).astype(np.float32),
         "z": np.zeros(7, np.float32)}
    spec = [(k, v.shape) for k, v in t.items()]
    a = pipe.encode(t)
    b = pipe.encode({k: torch.from_numpy(v) for k, v in t.items()})
    assert bytes(np.asarray(a.payload)) == bytes(np.asarray(b.payload))
    out = pipe.decode(a.payload, spec, device=torch.device("cpu"))
    for k in t:
        np.testing.assert_array_equal(out[k].numpy(), a.reconstructed[k])
    # a set sign bit with scale 0: both decoders refuse it
    from fedmpi.compress import torchops as ops

    q = build("quantize", {"method": "sign"})
    forged = pack_bits(np.array([1, 0, 0], np.uint32), 1)
    with pytest.raises(WireFormatError, match="scale 0"):
        q.decode(forged, 3, 0.0, 0.0)
    v, facts = ops.decode_values(q, torch.from_numpy(forged), 3, 0.0, 0.0)
    with pytest.raises(WireFormatError, match="scale 0"):
        ops.check_values(q, [int(f) for f in facts], v, 3, 0.0)
    v, facts = ops.decode_values(q, torch.from_numpy(forged), 3, 0.5, 0.0)
    ops.check_values(q, [int(f) for f in facts], v, 3, 0.5)
    np.testing.assert_array_equal(v.numpy(), q.decode(forged, 3, 0.5, 0.0))
