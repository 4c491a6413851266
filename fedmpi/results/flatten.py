"""Nested config -> one level with dotted keys, so a sweep is a single groupby.

`{"train": {"local_epochs": 2}, "compression": {"uplink": [{"prune": {"rate": 0.5}}]}}`
becomes `{"train.local_epochs": 2, "compression.uplink.0.prune.rate": 0.5}`: list
items are indexed by position. Empty containers keep their key ("[]" / "{}") so
"no uplink stages" is a value that can be grouped on, not a missing column.
"""

from __future__ import annotations

from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
        empty = "{}"
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
        empty = "[]"
    else:
        return {prefix: obj}
    if not items:
        return {prefix: empty} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out
