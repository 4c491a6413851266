"""`train.evaluate`: the channels-last batches give the plain forward pass's values."""

import pytest
import torch

from fedmpi import models
from fedmpi.train import evaluate


def _reference(model, x, y):
    """Accuracy and mean loss from one plain (NCHW, contiguous) forward pass."""
    model.eval()
    with torch.no_grad():
        out = model(x.contiguous())
    loss = torch.nn.functional.cross_entropy(out, y, reduction="sum").item() / len(y)
    return int((out.argmax(1) == y).sum()) / len(y), loss


@pytest.mark.parametrize("name,shape", [("resnet12", (3, 16, 16)), ("cnn", (1, 8, 8)),
                                        ("mlp", (1, 8, 8))])
def test_evaluate_matches_a_plain_forward_pass_at_any_batch_size(name, shape):
    torch.manual_seed(0)
    model = models.build(name, input_shape=shape, num_classes=10)
    x, y = torch.randn(90, *shape), torch.randint(0, 10, (90,))
    acc, loss = _reference(model, x, y)
    for batch in (7, 30, 90):
        got_acc, got_loss = evaluate(model, x, y, batch)
        assert got_acc == acc
        assert got_loss == pytest.approx(loss, rel=1e-5)
    assert x.is_contiguous()  # the caller's tensor is left as it was


def test_evaluate_takes_flat_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10))
    x, y = torch.randn(40, 12), torch.randint(0, 10, (40,))
    assert evaluate(model, x, y, 16) == pytest.approx(_reference(model, x, y), rel=1e-6)


def test_image_batches_reach_the_model_channels_last_on_the_cpu():
    seen = []
    # 3 channels: a 1-channel batch is contiguous in both layouts, so it would prove nothing
    model = models.build("cnn", input_shape=(3, 8, 8), num_classes=10)
    model.register_forward_pre_hook(lambda _m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    evaluate(model, torch.randn(20, 3, 8, 8), torch.randint(0, 10, (20,)), 10)
    assert seen == [True, True]
