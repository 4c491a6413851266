"""Parameters of a plug-in (stage, compressor, strategy) from config, checked once.

Every plug-in is a frozen dataclass whose fields are its parameters. `instantiate`
builds one from a config mapping: unknown names, wrong types, values outside
`choices` and NaN/inf are ConfigErrors naming the full dotted field; the class's
own `check()` raises `BadParam` for ranges. Shared so that a new compressor or
strategy gets the same errors as the built-in stages without writing any.
"""

from __future__ import annotations

import dataclasses
import math
import typing

from fedmpi.errors import ConfigError


class BadParam(Exception):
    """Raised by a plug-in's `check`; `instantiate` turns it into a ConfigError."""

    def __init__(self, param: str, value: object, allowed: str):
        super().__init__(param)
        self.param, self.value, self.allowed = param, value, allowed


def registrar(registry: dict, what: str):
    """The `register("<key>")` class decorator of one plug-in registry (stages,
    compressors, strategies): sets the class's `key` and refuses a key used twice."""
    def register(name: str):
        def deco(cls):
            if name in registry:
                raise RuntimeError(f"{what} {name!r} registered twice")
            cls.key = name
            registry[name] = cls
            return cls
        return deco
    register.__doc__ = f"Class decorator: make a {what} buildable from config under `name`."
    return register


def type_ok(value: object, hint: object) -> bool:
    if typing.get_args(hint):  # a union such as `int | None`
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # YAML writes 0 for 0.0
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def instantiate(cls: type, params: object, where: str):
    """`cls(**params)` after checking every parameter; errors name `where.param`."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(where, params, "a mapping of parameters (use {} for defaults)")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # not set by config: no
    choices = getattr(cls, "choices", {})
    for p, value in params.items():
        if p not in names:
            raise ConfigError(f"{where}.{p}", value,
                              f"one of the parameters {', '.join(names) or '(none)'}")
        if not type_ok(value, hints[p]):
            kind = getattr(hints[p], "__name__", str(hints[p]))
            raise ConfigError(f"{where}.{p}", value, f"a value of type {kind}")
        if p in choices and value not in choices[p]:
            raise ConfigError(f"{where}.{p}", value, " | ".join(map(str, choices[p])))
    try:
        params = {p: float(v) if hints[p] is float else v for p, v in params.items()}
    except OverflowError:  # an integer beyond float range
        raise ConfigError(where, params, "finite numbers as parameters") from None
    for p, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{p}", value, "a finite number")
    obj = cls(**params)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except BadParam as bad:
            raise ConfigError(f"{where}.{bad.param}", bad.value, bad.allowed) from None
    return obj


def describe(cls: type) -> str:
    """`name=default, ...` for `fedmpi list`."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:  # not a config parameter (e.g. Strategy.info, set at setup)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "?"
        out.append(f"{f.name}={default}")
    return ", ".join(out)
