"""GPU checks (marker `gpu`): skipped with a message where torch sees no CUDA device.

jobs/gpu-check.sh runs them on a GPU machine. They check what CPU CI cannot: the
on-device codec gives the CPU path's bytes on a real GPU (kthvalue, cumsum,
boolean indexing and float64 arithmetic of CUDA kernels), decoding on the GPU,
mixed-precision training there.
"""

import numpy as np
import pytest
import torch

from fedmpi.bench.codec import PIPELINES, make_model
from fedmpi.compress import build_pipeline, fused, spec_of

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device (jobs/gpu-check.sh runs these on a GPU machine)")]


@pytest.fixture(scope="module")
def model():
    host = make_model(300_000, seed=3)
    return host, {k: torch.from_numpy(v).cuda() for k, v in host.items()}


@pytest.mark.parametrize("label", [k for k, _ in PIPELINES if not k.endswith("(numpy)")])
def test_device_payload_equals_cpu_payload(model, label):
    host, dev = model
    pipe = build_pipeline(dict(PIPELINES)[label])
    with fused.disabled():
        want = pipe.encode(host, memory=pipe.new_memory())
    got = pipe.encode(dev, memory=pipe.new_memory())
    assert np.array_equal(got.payload, want.payload)
    assert got.nnz == want.nnz
    dec = pipe.decode(want.payload, spec_of(host), device="cuda")
    for k in host:
        assert dec[k].is_cuda
        assert np.array_equal(dec[k].cpu().numpy().view(np.uint32),
                              want.reconstructed[k].view(np.uint32))
        assert np.array_equal(got.reconstructed[k].cpu().numpy().view(np.uint32),
                              want.reconstructed[k].view(np.uint32))


@pytest.mark.parametrize("rate", [0.5, 0.9])
def test_resnet18_sized_prune_on_the_gpu(rate):
    host = make_model(11_000_000, seed=0)
    dev = {k: torch.from_numpy(v).cuda() for k, v in host.items()}
    pipe = build_pipeline([{"prune": {"rate": rate}}, {"sparse": {}}])
    assert np.array_equal(pipe.encode(dev).payload, pipe.encode(host).payload)


def test_error_feedback_residual_stays_on_the_gpu(model):
    host, dev = model
    pipe = build_pipeline([{"prune": {"rate": 0.9}}, {"quantize": {"bits": 4}},
                           {"memory": {}}, {"sparse": {}}, {"zstd": {}}])
    m_gpu, m_cpu = pipe.new_memory(), pipe.new_memory()
    for _ in range(2):
        a = pipe.encode(dev, memory=m_gpu)
        b = pipe.encode(host, memory=m_cpu)
        assert np.array_equal(a.payload, b.payload)
    assert all(r.is_cuda for r in m_gpu.residual.values())
    state = m_gpu.state()
    assert all(np.array_equal(state[k], m_cpu.residual[k]) for k in state)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_training_on_the_gpu_with_mixed_precision(amp):
    from fedmpi import models
    from fedmpi.train import evaluate, train_local

    torch.manual_seed(0)
    model = models.build("resnet12", input_shape=(3, 32, 32), num_classes=10).cuda()
    x = torch.randn(200, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (200,), device="cuda")
    g = torch.Generator().manual_seed(0)
    loss, seconds = train_local(model, x, y, epochs=1, batch_size=20, lr=0.01, momentum=0.9,
                                weight_decay=0.0, generator=g, amp=amp)
    assert np.isfinite(loss) and seconds > 0
    acc, test_loss = evaluate(model, x, y, 100, amp=amp)
    assert 0 <= acc <= 1 and np.isfinite(test_loss)


def test_cuda_awareness_is_reported():
    from mpi4py import MPI  # noqa: F401

    from fedmpi import cuda_mpi

    aware, how = cuda_mpi.query()
    assert aware in (True, False, None) and how


# ------------------------------------------------- strictness on the GPU (tests/forgery.py)


def _numpy_reference(pipe, spec):
    def decode(payload):
        with fused.disabled():
            return pipe.decode(payload, spec)
    return decode


def test_valid_crc_forgeries_are_judged_on_the_gpu_as_by_the_reference():
    """Every payload mutation of every pipeline variant, decoded on the GPU: refused
    where the numpy decoder refuses it, else the same bits (CUDA's reductions find
    what the host-side rules judge)."""
    from forgery import VARIANTS, mutation_outcomes

    outcomes = mutation_outcomes(
        sorted(VARIANTS), lambda pipe, spec: lambda b: pipe.decode(b, spec, device="cuda"),
        _numpy_reference, reps=4)
    assert all(refused > 0 for refused, _ in outcomes.values()), outcomes
    assert sum(accepted for _, accepted in outcomes.values()) > 0, outcomes


def test_each_strict_rule_holds_on_the_gpu():
    from forgery import FOCUSED, crafted

    from fedmpi.wire import HEADER_SIZE, WireFormatError

    for stages, edit, match, model in FOCUSED:
        pipe, spec, buf = crafted(stages, edit, model)
        with pytest.raises(WireFormatError, match=match):
            pipe.decode(buf[HEADER_SIZE:], spec, device="cuda")


@pytest.mark.parametrize("stages", [[{"prune": {"rate": 0.5}}, {"sparse": {}}],
                                    [{"quantize": {"bits": 4}}, {"memory": {}}]])
def test_gpu_encoders_refuse_nan_like_the_reference(stages):
    pipe = build_pipeline(stages)
    x = {"w": np.ones((30, 40), np.float32), "v": np.arange(50, dtype=np.float32)}
    x["v"][7] = np.nan
    with fused.disabled(), pytest.raises(ValueError) as want:
        pipe.encode(x, memory=pipe.new_memory())
    with pytest.raises(ValueError) as got:
        pipe.encode({k: torch.from_numpy(v).cuda() for k, v in x.items()},
                    memory=pipe.new_memory())
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("stages", [[{"quantize": {"bits": 5}}],
                                    [{"quantize": {"method": "bfloat16"}}]])
def test_extreme_values_give_the_cpu_bytes_on_the_gpu(stages):
    big = np.finfo(np.float32).max
    x = {"w": np.array([-big, big, 3.39e38, 0.0, 1.0], np.float32)}
    pipe = build_pipeline(stages)
    with fused.disabled():
        want = pipe.encode(x)
    got = pipe.encode({"w": torch.from_numpy(x["w"]).cuda()})
    assert np.array_equal(got.payload, want.payload)
