"""The torch (on-device) codec path gives the numpy path's bytes; run here on CPU tensors.

The same code runs on a GPU (tests/gpu, jobs/gpu-check.sh): only the device differs.
"""

import copy

import numpy as np
import pytest
import torch
from forgery import (FOCUSED, PAYLOAD_MUTATIONS, VARIANTS, crafted, forge, make_corpus,
                     mutation_outcomes, same_outcome)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedmpi.compress import Memory, build_pipeline, fused, ondevice_batched, spec_of
from fedmpi.compress import torchops as ops
from fedmpi.wire import HEADER_SIZE, WireFormatError

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tied32 = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 3e-39, -1e-45])
small32 = st.floats(-1e4, 1e4, width=32)  # quantizers' ranges stay finite in float64


@st.composite
def pipelines(draw):
    stages = []
    if draw(st.booleans()):
        stages.append({"prune": {"rate": draw(st.floats(0, 0.99)),
                                 "scope": draw(st.sampled_from(["global", "tensor"])),
                                 "tensors": draw(st.sampled_from(["all", "weights"]))}})
    q = draw(st.sampled_from([None, "uniform", "pow2", "float16", "bfloat16", "sign"]))
    if q == "uniform":
        stages.append({"quantize": {"method": q, "bits": draw(st.sampled_from([1, 3, 8, 12, 16]))}})
    elif q == "pow2":
        stages.append({"quantize": {"method": q, "bits": draw(st.integers(1, 8))}})
    elif q:
        stages.append({"quantize": {"method": q}})
    if draw(st.booleans()):
        stages.append({"memory": {}})
    if draw(st.booleans()):
        stages.append({"sparse": {"format": draw(st.sampled_from(["auto", "bitmap", "delta",
                                                                   "dense"]))}})
    if draw(st.booleans()):
        stages.append({"zstd": {"level": 1, "shuffle": draw(st.booleans())}})
    return build_pipeline(stages)


def bits(a):
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def check_same(pipe, arrays):
    """numpy reference vs torch on CPU: payload, nnz, reconstruction, residual, decode."""
    tensors = {f"t{i}": a for i, a in enumerate(arrays)}
    torched = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    mem_n, mem_t = pipe.new_memory(), pipe.new_memory()
    spec = spec_of(tensors)
    for _ in range(2 if mem_n is not None else 1):
        with fused.disabled():
            want = pipe.encode(tensors, memory=mem_n)
        if ondevice_batched.applies(pipe, torch.device("cuda")):  # the GPU's encoder too
            ondevice_batched.FORCE = True
            try:
                other = pipe.encode(torched, memory=copy.deepcopy(mem_t))
            finally:
                ondevice_batched.FORCE = False
            assert np.array_equal(other.payload, want.payload)
            assert other.nnz == want.nnz
            for k in tensors:
                assert np.array_equal(bits(other.reconstructed[k]), bits(want.reconstructed[k]))
        got = pipe.encode(torched, memory=mem_t)
        assert isinstance(got.payload, np.ndarray)
        assert np.array_equal(got.payload, want.payload)
        assert (got.nnz, got.numel) == (want.nnz, want.numel)
        dec = pipe.decode(want.payload, spec, device="cpu")
        for k in tensors:
            assert isinstance(dec[k], torch.Tensor) and tuple(dec[k].shape) == tensors[k].shape
            assert np.array_equal(bits(got.reconstructed[k]), bits(want.reconstructed[k]))
            assert np.array_equal(bits(dec[k]), bits(want.reconstructed[k]))
        if mem_n is not None:
            for k in tensors:
                assert np.array_equal(bits(mem_t.residual[k]), bits(mem_n.residual[k]))


@settings(max_examples=150, deadline=None)
@given(pipelines(), st.lists(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=2,
                                                                     min_side=0, max_side=40),
                                        elements=small32 | tied32), min_size=1, max_size=3))
def test_torch_path_matches_numpy_bytes(pipe, arrays):
    check_same(pipe, arrays)


@settings(max_examples=60, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(0, 300), elements=finite32 | tied32),
                min_size=1, max_size=3), st.floats(0, 0.999),
       st.sampled_from(["auto", "bitmap", "delta", "dense"]))
def test_torch_prune_matches_reference_with_extreme_values(arrays, rate, fmt):
    check_same(build_pipeline([{"prune": {"rate": rate}}, {"sparse": {"format": fmt}}]), arrays)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.9])
def test_larger_model_with_ties(rate):
    rng = np.random.default_rng(1)
    w = rng.choice(np.float32([0.25, -0.25, 0.5, 1.0]), size=(300, 700))
    check_same(build_pipeline([{"prune": {"rate": rate}}, {"sparse": {}}, {"zstd": {}}]),
               [w, rng.laplace(size=1001).astype(np.float32)])


def test_memory_state_from_torch_residuals_is_numpy():
    pipe = build_pipeline([{"prune": {"rate": 0.5}}, {"memory": {}}, {"sparse": {}}])
    mem = pipe.new_memory()
    pipe.encode({"a": torch.arange(1, 9, dtype=torch.float32)}, memory=mem)
    state = mem.state()
    assert isinstance(state["a"], np.ndarray)
    assert state["a"].tolist() == [1, 2, 3, 4, 0, 0, 0, 0]
    fresh = Memory()
    fresh.load(state)  # a checkpointed residual feeds the torch path again
    enc = pipe.encode({"a": torch.zeros(8)}, memory=fresh)
    assert enc.reconstructed["a"].tolist() == [1, 2, 3, 4, 0, 0, 0, 0]  # the residual came back
    assert fresh.state()["a"].tolist() == [0] * 8


def test_decode_refuses_what_the_reference_refuses():
    rng = np.random.default_rng(5)
    x = {"a": rng.laplace(size=(30, 70)).astype(np.float32),
         "b": rng.laplace(size=33).astype(np.float32)}
    for stages in ([{"prune": {"rate": 0.5}}, {"sparse": {"format": "bitmap"}}],
                   [{"prune": {"rate": 0.97}}, {"sparse": {"format": "delta"}}],
                   [{"prune": {"rate": 0.5}}, {"quantize": {"bits": 5}}, {"sparse": {}}],
                   [{"quantize": {"method": "pow2"}}]):
        pipe = build_pipeline(stages)
        payload = pipe.encode(x).payload
        spec = spec_of(x)
        for trial in range(150):
            bad = payload.copy()
            if trial % 3 == 0:
                bad = bad[: rng.integers(0, bad.size)]
            else:
                bad[rng.integers(0, bad.size)] ^= np.uint8(1 << rng.integers(0, 8))
            results = []
            for device in (None, "cpu"):
                try:
                    with fused.disabled():
                        results.append(pipe.decode(bad, spec, device=device))
                except WireFormatError:
                    results.append(WireFormatError)
            ref, got = results
            if ref is WireFormatError or got is WireFormatError:
                assert ref is got is WireFormatError, (stages, trial)
            else:
                assert all(np.array_equal(bits(got[k]), bits(ref[k])) for k in ref)


def test_keep_mask_ties_by_position():
    a = torch.tensor([3, 1, 2, 1, 1, 5, 0], dtype=torch.int32)
    assert ops.keep_mask(a, 3).tolist() == [True, False, True, False, True, True, False]
    assert ops.keep_mask(a, 1).tolist() == [True, True, True, True, True, True, False]
    assert ops.keep_mask(a, 0).tolist() == [True] * 6 + [False]


def test_pow2_decode_is_exact_for_small_exponents():
    pipe = build_pipeline([{"quantize": {"method": "pow2", "bits": 8}}])
    x = {"a": np.float32([2.0 ** -120, -(2.0 ** -126), 3.0, 2.0 ** 100])}
    check_same(pipe, [x["a"]])


@pytest.mark.parametrize("fmt", ["auto", "bitmap", "delta", "dense"])
@pytest.mark.parametrize("rate", [None, 0.0, 0.5, 0.9, 0.99])
def test_batched_encoder_equals_the_per_tensor_one(fmt, rate, monkeypatch):
    """The all-tensors-at-once encoder (hot path) and the tensor-by-tensor one agree."""
    from fedmpi.compress import ondevice, ondevice_batched

    stages = ([{"prune": {"rate": rate}}] if rate is not None else []) + \
        [{"sparse": {"format": fmt}}]
    pipe = build_pipeline(stages)
    rng = np.random.default_rng(4)
    x = rng.laplace(size=(400, 300)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.5  # ties at the cut
    x[0, :50] = 0.0
    x[1, :50] = -0.0
    arrays = [x, np.zeros(7, np.float32), rng.laplace(size=13).astype(np.float32),
              np.zeros(0, np.float32), x[:3, :5].copy()]
    assert ondevice_batched.applies(pipe, torch.device("cuda"))
    assert not ondevice_batched.applies(pipe, torch.device("cpu"))
    check_same(pipe, arrays)  # both torch encoders == numpy (check_same runs both)
    monkeypatch.setattr(ondevice_batched, "FORCE", True)
    enc = pipe.encode({f"t{i}": torch.from_numpy(a.copy()) for i, a in enumerate(arrays)})
    with fused.disabled():
        want = pipe.encode({f"t{i}": a for i, a in enumerate(arrays)})
    assert np.array_equal(enc.payload, want.payload)
    assert ondevice is not None


# ------------------------------------------------- valid-CRC forgeries (tests/forgery.py)
# Every pipeline variant of the decoder fuzz: the on-device decoder (here on CPU
# tensors; tests/gpu runs it on a GPU) refuses what the numpy reference refuses and
# otherwise returns the same bits.


def on_device(device):
    def make(pipe, spec):
        return lambda payload: pipe.decode(payload, spec, device=device)
    return make


def numpy_reference(pipe, spec):
    def decode(payload):
        with fused.disabled():
            return pipe.decode(payload, spec)
    return decode


@pytest.mark.timeout(600)
def test_valid_crc_mutations_are_refused_or_decoded_alike():
    outcomes = mutation_outcomes(sorted(VARIANTS), on_device("cpu"), numpy_reference, reps=6)
    assert all(refused > 0 for refused, _ in outcomes.values()), outcomes
    assert sum(accepted for _, accepted in outcomes.values()) > 0, outcomes


@pytest.mark.timeout(300)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(variant=st.sampled_from(sorted(VARIANTS)),
       names=st.lists(st.sampled_from(PAYLOAD_MUTATIONS), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_valid_crc_mutation_combinations_alike(variant, names, seed):
    spec, msgs, _ = make_corpus()
    pipe, buf, _ = msgs[variant]
    bad = forge(pipe, buf, spec, names, np.random.default_rng(seed))
    if bad is not None:
        same_outcome(on_device("cpu")(pipe, spec), numpy_reference(pipe, spec),
                     bad[HEADER_SIZE:])


@pytest.mark.parametrize("stages, edit, match, model", FOCUSED)
def test_each_strict_rule_holds_on_the_device_decoder(stages, edit, match, model):
    pipe, spec, buf = crafted(stages, edit, model)
    for decode in (on_device("cpu")(pipe, spec), numpy_reference(pipe, spec)):
        with pytest.raises(WireFormatError, match=match):
            decode(buf[HEADER_SIZE:])


PIPES_FOR_NAN = [[], [{"prune": {"rate": 0.5}}, {"sparse": {}}],
                 [{"prune": {"rate": 0.5, "tensors": "weights"}}, {"memory": {}}, {"sparse": {}}],
                 [{"quantize": {"bits": 4}}], [{"quantize": {"method": "pow2"}}, {"sparse": {}}],
                 [{"quantize": {"method": "float16"}}], [{"quantize": {"method": "bfloat16"}}]]


@pytest.mark.parametrize("stages, batched", [
    (s, b) for s in PIPES_FOR_NAN for b in (False, True)
    if not b or ondevice_batched.applies(build_pipeline(s), torch.device("cuda"))])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encoders_refuse_nan_and_inf_like_the_reference(stages, bad, batched, monkeypatch):
    """The tensor-by-tensor encoder and the batched one (the GPU's hot path)."""
    pipe = build_pipeline(stages)
    monkeypatch.setattr(ondevice_batched, "FORCE", batched)
    x = {"w": np.ones((3, 4), np.float32), "v": np.arange(5, dtype=np.float32)}
    x["v"][3] = bad
    with fused.disabled(), pytest.raises(ValueError, match="'v' holds NaN or inf") as want:
        pipe.encode(x, memory=pipe.new_memory())
    with pytest.raises(ValueError) as got:
        pipe.encode({k: torch.from_numpy(v) for k, v in x.items()}, memory=pipe.new_memory())
    assert str(got.value) == str(want.value)


BIG = np.finfo(np.float32).max


@pytest.mark.parametrize("k", [1, 2, 5, 7, 9, 16])
def test_uniform_extremes_give_the_numpy_bytes(k):
    """±3.4e38: the step one ulp below the rounded one (k > 1), or the refusal of a
    1-bit step wider than float32 - exactly as the numpy encoder."""
    pipe = build_pipeline([{"quantize": {"bits": k}}])
    v = np.array([-BIG, BIG, 0.0, 1.0], np.float32)
    if k == 1:
        for x in (v, torch.from_numpy(v)):
            with pytest.raises(ValueError, match="cannot span"):
                pipe.encode({"w": x})
        return
    check_same(pipe, [v])


def test_bfloat16_clamp_gives_the_numpy_bytes():
    check_same(build_pipeline([{"quantize": {"method": "bfloat16"}}]),
               [np.array([BIG, -BIG, 3.39e38, -3.395e38, 1.0], np.float32)])
