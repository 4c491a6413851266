"""train.amp and train.compile reach the model and the training loop."""

import numpy as np
import torch

from fedmpi import config as cfgmod
from fedmpi import models
from fedmpi.experiment import build
from fedmpi.train import evaluate, train_local


def _fit(amp):
    torch.manual_seed(0)
    model = models.build("cnn", input_shape=(1, 8, 8), num_classes=10)
    x = torch.randn(60, 1, 8, 8)
    y = torch.randint(0, 10, (60,))
    loss, _ = train_local(model, x, y, epochs=1, batch_size=20, lr=0.1, momentum=0.0,
                          weight_decay=0.0, generator=torch.Generator().manual_seed(1), amp=amp)
    return loss, evaluate(model, x, y, 30, amp=amp)


def test_bf16_autocast_changes_the_arithmetic_on_the_cpu():
    off, bf16 = _fit("off"), _fit("bf16")
    assert np.isfinite(bf16[0]) and off[0] != bf16[0]  # autocast really ran in bfloat16
    assert _fit("off") == off  # and fp32 stays deterministic


def test_compile_option_compiles_the_model_in_place(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(kw))
    cfg = cfgmod.from_dict({"run": {"device": "cpu"}, "train": {"compile": "reduce-overhead"},
                            "data": {"train_subset": 100, "test_subset": 50},
                            "clients": {"num_clients": 2}})
    exp = build(cfg, rank=1, world_size=2)
    assert calls == [{"mode": "reduce-overhead"}]
    assert [n for n, _ in exp.spec] == list(exp.initial_state())  # names unchanged
    cfg = cfgmod.from_dict({"run": {"device": "cpu"}, "data": {"train_subset": 100,
                                                                "test_subset": 50},
                            "clients": {"num_clients": 2}})
    build(cfg, rank=1, world_size=2)
    assert len(calls) == 1  # off by default
