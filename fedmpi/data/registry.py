"""Dataset registry: the defining module's file name is the dataset's config key."""

from __future__ import annotations

from typing import Callable

from fedmpi.errors import ConfigError

_LOADERS: dict[str, Callable] = {}
_PREPARERS: dict[str, Callable] = {}


def _key(fn: Callable) -> str:
    return fn.__module__.rsplit(".", 1)[-1]


def register(fn: Callable) -> Callable:
    """Register `fn(path) -> (train, test)` as the loader of its module's dataset."""
    _LOADERS[_key(fn)] = fn
    return fn


def register_prepare(fn: Callable) -> Callable:
    """Register `fn(path)` that builds the dataset's cache (datasets without one skip it)."""
    _PREPARERS[_key(fn)] = fn
    return fn


def loader(name: str) -> Callable:
    if name not in _LOADERS:
        raise ConfigError("data.dataset", name, ", ".join(sorted(_LOADERS)))
    return _LOADERS[name]


def preparer(name: str) -> Callable | None:
    loader(name)  # validates the name
    return _PREPARERS.get(name)
