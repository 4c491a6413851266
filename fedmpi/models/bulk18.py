"""Benchmark-only: ResNet-18's parameter tensors (11.2M floats) with a trivial training step.

`fedmpi bench scale` measures what the framework costs per client at 1,000 clients
per round on a ResNet-18-sized model; training a real ResNet-18 for 1,000 clients
on CPUs would take the whole benchmark. Here only a linear head is trained: the
other tensors have ResNet-18's shapes, are never used in `forward` (no gradient,
SGD leaves them as they are), and still travel, are encoded, decoded and
aggregated like every other tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedmpi.models.registry import register

# conv and fc weights of torchvision's resnet18 (10 classes), without its BatchNorm
# tensors: (out, in, k, k) per conv, in order; 11.17M values with the norms below
_CONVS = [(64, 3, 7)] + [(64, 64, 3)] * 4 + [(128, 64, 3), (128, 128, 3), (128, 64, 1),
                                            (128, 128, 3), (128, 128, 3)] + \
    [(256, 128, 3), (256, 256, 3), (256, 128, 1), (256, 256, 3), (256, 256, 3)] + \
    [(512, 256, 3), (512, 512, 3), (512, 256, 1), (512, 512, 3), (512, 512, 3)]


class Bulk18(nn.Module):
    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.head = nn.Linear(features, num_classes)
        g = torch.Generator().manual_seed(0)
        self.bulk = nn.ParameterList(
            nn.Parameter(torch.randn(o, i, k, k, generator=g) * math.sqrt(2 / (i * k * k)))
            for o, i, k in _CONVS)
        self.norms = nn.ParameterList(nn.Parameter(torch.ones(2 * o)) for o, _, _ in _CONVS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


@register
def build(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return Bulk18(math.prod(input_shape), num_classes)
