"""CIFAR ResNet-18: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool
(32x32 inputs are too small for the ImageNet stem), GroupNorm instead of BatchNorm so
every state tensor is a float weight. About 11.2M parameters.
"""

from __future__ import annotations

from torch import nn

from fedmpi.models.registry import register

GROUPS = 2


@register
def build(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    from torchvision.models import resnet18  # imported late: torchvision is slow to import

    model = resnet18(num_classes=num_classes, norm_layer=lambda c: nn.GroupNorm(GROUPS, c))
    # Replacing the stem draws new random weights after torchvision's init; still
    # deterministic under torch.manual_seed. Kaiming init as torchvision does for convs.
    model.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
