"""Exceptions shared across the package.

They live apart from the modules that raise them so that pure modules (config,
compression, results) can raise them without importing MPI or torch.
"""

from __future__ import annotations


class FedMPIError(Exception):
    """Base class of every error fedmpi raises on purpose."""


class ConfigError(FedMPIError, ValueError):
    """A configuration value is wrong; names the field, the value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"config field '{field}': got {value!r}; allowed: {allowed}")
