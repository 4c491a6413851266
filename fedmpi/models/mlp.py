"""A tiny MLP for the 8x8 digits: ~10k parameters, so CPU quick starts finish in minutes."""

from __future__ import annotations

import math

from torch import nn

from fedmpi.models.registry import register

HIDDEN = 128


@register
def build(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, num_classes),
    )
