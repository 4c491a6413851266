"""Model registry: every model builds, runs on its input shape, keeps float-only state."""

from __future__ import annotations

import pytest
import torch

from fedmpi import models
from fedmpi.errors import ConfigError

SHAPES = {
    "mlp": [(1, 8, 8)],
    "cnn": [(3, 32, 32), (1, 8, 8)],
    "resnet12": [(3, 32, 32), (1, 8, 8)],
    "resnet18": [(3, 32, 32)],
    "bulk18": [(1, 8, 8), (3, 32, 32)],
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_file():
    assert models.available() == sorted(SHAPES)


@pytest.mark.parametrize("name, shape", [(n, s) for n, shapes in SHAPES.items() for s in shapes])
def test_build_forward_and_float_state(name, shape):
    model = models.build(name, input_shape=shape, num_classes=7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    state = model.state_dict()
    assert all(v.is_floating_point() for v in state.values())
    assert not any("num_batches_tracked" in k or "running_" in k for k in state)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_construction_is_deterministic_under_manual_seed(name):
    shape = SHAPES[name][0]
    torch.manual_seed(3)
    a = models.build(name, input_shape=shape, num_classes=10).state_dict()
    torch.manual_seed(3)
    b = models.build(name, input_shape=shape, num_classes=10).state_dict()
    torch.manual_seed(4)
    c = models.build(name, input_shape=shape, num_classes=10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_parameter_counts():
    counts = {
        name: n_params(models.build(name, input_shape=SHAPES[name][0], num_classes=10))
        for name in SHAPES
    }
    print("parameter counts:", counts)
    # ResNet-12 of the paper (f = 16: 16, 40, 80, 160): "about 780k"; ours is 780,266.
    assert 700_000 <= counts["resnet12"] <= 860_000
    assert counts["resnet12"] == 780_266
    assert counts["mlp"] < 20_000 and counts["cnn"] < 300_000
    assert 11_000_000 <= counts["resnet18"] <= 11_300_000


def test_unknown_model_names_the_field_and_lists_models():
    with pytest.raises(ConfigError) as e:
        models.build("vgg", input_shape=(3, 32, 32), num_classes=10)
    assert e.value.field == "train.model"
    assert all(name in str(e.value) for name in SHAPES)


def test_bulk18_is_resnet18_sized_and_trains_only_its_head():
    model = models.build("bulk18", input_shape=(1, 8, 8), num_classes=10)
    ref = models.build("resnet18", input_shape=(3, 32, 32), num_classes=10)
    assert abs(n_params(model) - n_params(ref)) / n_params(ref) < 0.01
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)),
                                      torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}
