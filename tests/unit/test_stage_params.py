"""Every numeric stage parameter is bounded at build time (issue 10: bound every number).

Generated from the registry, so a stage added later is checked without a new test."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from fedmpi.compress import REGISTRY, build
from fedmpi.errors import ConfigError


def _numeric_params():
    for name, cls in sorted(REGISTRY.items()):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = [a for a in (typing.get_args(hints[f.name]) or [hints[f.name]])
                     if a is not type(None)]
            if kinds and kinds[0] in (int, float):
                yield name, f.name, kinds[0]


PARAMS = list(_numeric_params())


def test_the_registry_has_numeric_parameters():
    assert {(s, p) for s, p, _ in PARAMS} >= {("prune", "rate"), ("quantize", "bits"),
                                              ("zstd", "level")}


@pytest.mark.parametrize("stage, param, kind", PARAMS, ids=[f"{s}.{p}" for s, p, _ in PARAMS])
def test_out_of_range_values_are_config_errors_naming_the_parameter(stage, param, kind):
    bad = [10**30, -(10**30), 2**64]
    if kind is float:
        bad += [float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 10**400]
    for value in bad:
        with pytest.raises(ConfigError) as err:
            build(stage, {param: value}, field="compression.uplink[0]")
        assert err.value.field.startswith(f"compression.uplink[0].{stage}"), value
        assert len(str(err.value)) < 400
