"""A small CNN for CPU-scale CIFAR-10 work (~190k parameters on 3x32x32)."""

from __future__ import annotations

import torch
from torch import nn

from fedmpi.models.registry import register

WIDTHS = (32, 64, 64)
HIDDEN = 128


@register
def build(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for w in WIDTHS:
        # Stop pooling at 1x1 so small inputs (8x8 digits) work too.
        pool = nn.MaxPool2d(2) if min(height, width) >= 2 else nn.Identity()
        layers += [nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), pool]
        channels, height, width = w, max(height // 2, 1), max(width // 2, 1)
    features = nn.Sequential(*layers)
    with torch.no_grad():  # size the classifier from a dry run; uses no random numbers
        flat = features(torch.zeros(1, *input_shape)).numel()
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Linear(flat, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )
