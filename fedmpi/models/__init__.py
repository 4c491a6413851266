"""Models, built by name from config: `build("resnet12", input_shape=(3, 32, 32), num_classes=10)`.

All models keep only floating-point state (GroupNorm, never BatchNorm) because every state
tensor is transmitted and aggregated; construction is deterministic under torch.manual_seed.
"""

from __future__ import annotations

from fedmpi.models import bulk18, cnn, mlp, resnet12, resnet18  # noqa: F401  (fill the registry)
from fedmpi.models.registry import available, build, register

__all__ = ["available", "build", "register"]
