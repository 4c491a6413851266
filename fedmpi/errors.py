"""Exceptions shared across the package, and `short`, the bounded repr of user values.

They live apart from the modules that raise them so that pure modules (config,
compression, results) can raise them without importing MPI or torch.
"""

from __future__ import annotations

import reprlib

MAX_VALUE_CHARS = 400  # what an error message shows of a value it quotes (a whole path)
MAX_TEXT_CHARS = 600  # field names and "allowed" texts can quote user input too


class _Repr(reprlib.Repr):
    """reprlib with small limits and ints that never hit Python's 4300-digit str limit."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 8
        self.maxdeque = self.maxarray = 8
        self.maxother = 80
        self.maxstring = MAX_VALUE_CHARS  # file paths: a cluster path is often > 80 chars
        self.maxlong = 40

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr of a huge int is slow, or raises past 4300 digits
            return f"<{'-' if x < 0 else ''}integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters (with a marker), on one line."""
    text = text.replace("\n", " ")
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} chars)"
    return text[: max(limit - len(tail), 0)] + tail


def short(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """A repr of `value` whose cost and length are bounded whatever its size.

    Why: a config value can be a YAML alias bomb (a few hundred bytes of text that
    expand to billions of list items); a full `repr` of it never returns.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


class FedMPIError(Exception):
    """Base class of every error fedmpi raises on purpose."""


class ConfigError(FedMPIError, ValueError):
    """A configuration value is wrong; names the field, the value and what is allowed.

    The message quotes at most `MAX_VALUE_CHARS` of the value and `MAX_TEXT_CHARS` of
    the field and the allowed text, so it is cheap and short whatever the input.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"config field '{clip(str(field), 200)}': got {short(value)}; "
                         f"allowed: {clip(str(allowed))}")
