"""ResNet-12, the paper's model as in the authors' public Flower code.

Four residual stages of three 3x3 convolutions (widths f, 2.5f, 5f, 10f with f = 16),
each followed by a 2x2 max-pool; global average pooling and a linear classifier.
GroupNorm with 2 groups replaces BatchNorm: federated clients see non-IID batches, and
GroupNorm keeps no running statistics, so all state is float weights. 780,266 parameters
for 3x32x32 inputs and 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedmpi.models.registry import register

FEATURE_MAPS = 16
GROUPS = 2
SLOPE = 0.1  # LeakyReLU negative slope


def _conv_norm(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),  # the norm has the bias
        nn.GroupNorm(GROUPS, cout),
    )


class Stage(nn.Module):
    """conv-norm-act, conv-norm-act, conv-norm, plus a 1x1 projection shortcut; act, pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _conv_norm(cin, cout, 3)
        self.conv2 = _conv_norm(cout, cout, 3)
        self.conv3 = _conv_norm(cout, cout, 3)
        self.shortcut = _conv_norm(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), SLOPE)
        y = F.leaky_relu(self.conv2(y), SLOPE)
        y = self.conv3(y) + self.shortcut(x)
        y = F.leaky_relu(y, SLOPE)
        # ceil_mode keeps a 1x1 map alive, so the four pools also work on 8x8 inputs.
        return F.max_pool2d(y, 2, ceil_mode=True)


class ResNet12(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, f: int = FEATURE_MAPS):
        super().__init__()
        widths = [f, int(2.5 * f), 5 * f, 10 * f]
        self.stages = nn.Sequential(
            *(Stage(cin, cout) for cin, cout in zip([in_channels, *widths], widths))
        )
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(x).mean(dim=(2, 3)))


@register
def build(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet12(input_shape[0], num_classes)
