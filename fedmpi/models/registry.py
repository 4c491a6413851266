"""Model registry: a builder's module file name is its config key (`mlp.py` is "mlp")."""

from __future__ import annotations

from typing import Callable

import torch

from fedmpi.errors import ConfigError

Builder = Callable[..., torch.nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register(fn: Builder) -> Builder:
    """Register `fn(*, input_shape, num_classes) -> nn.Module` under its module's name."""
    _BUILDERS[fn.__module__.rsplit(".", 1)[-1]] = fn
    return fn


def available() -> list[str]:
    return sorted(_BUILDERS)


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    if name not in _BUILDERS:
        raise ConfigError("train.model", name, ", ".join(available()))
    model = _BUILDERS[name](input_shape=tuple(input_shape), num_classes=num_classes)
    # Every state tensor is sent over MPI as floats; an integer buffer such as BatchNorm's
    # num_batches_tracked would break the codecs, so refuse it at the source.
    bad = [k for k, v in model.state_dict().items() if not v.is_floating_point()]
    if bad:
        raise TypeError(f"model {name!r} has non-float state tensors: {bad}")
    return model
