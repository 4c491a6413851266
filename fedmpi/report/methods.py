"""Which method config a run is, read from its stored config (for the zoo report).

- the *setting*: every config key except the compression section, the strategy,
  the run's identity (name, seed, output), how it executes (`run.*`) and where the
  data lies (`data.path`). Methods are compared only within one setting;
- the *method config*: the compression section and the strategy. Runs of one
  method config in one setting differ by seed only;
- the *dense* method config of a setting: both links uncompressed (`[]`) under FedAvg.

Why the config and not the file name: names are free text (a sweep task's name
also carries its seed); the stored resolved config says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

DENSE = "dense"
_LOSSLESS_STAGES = {"sparse", "zstd"}  # coders: not what names a stage-list method
_IDENTITY = {"name", "seed", "output", "data.path"}
_METHOD_PREFIXES = ("compression", "strategy")
_EXECUTION_PREFIXES = ("run",)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def subtree(flat: Mapping[str, Any], prefix: str) -> Any:
    """The nested value at `prefix` of a flattened config (inverse of results.flatten)."""
    if prefix in flat:
        value = flat[prefix]
        return {"[]": [], "{}": {}}.get(value, value) if isinstance(value, str) else value
    root: dict = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "."):
            continue
        node = root
        parts = key[len(prefix) + 1:].split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = {"[]": [], "{}": {}}.get(value, value) if isinstance(value, str) \
            else value
    return _lists(root) if root else None


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[str(i)]) for i in range(len(node))]
    return {k: _lists(v) for k, v in node.items()}


def setting_of(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a flattened config that define the setting (see the module doc)."""
    return {k: v for k, v in flat.items()
            if k not in _IDENTITY and not any(_under(k, p) for p in _METHOD_PREFIXES)
            and not any(_under(k, p) for p in _EXECUTION_PREFIXES)}


def _params(cls: type | None, params: Any) -> str:
    """`k=v,...` of the parameters that differ from the class defaults (all if unknown)."""
    if not isinstance(params, dict):
        return "" if params in (None, {}) else json.dumps(params)
    defaults = {}
    if cls is not None and dataclasses.is_dataclass(cls):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
    shown = [f"{k}={_value(v)}" for k, v in params.items()
             if k not in defaults or not _same(defaults[k], v)]
    return ",".join(shown)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 == 1.0, but true is not 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _registry(kind: str) -> dict:
    try:
        if kind == "stage":
            from fedmpi.compress import REGISTRY
        else:
            from fedmpi.compressors import REGISTRY
    except ImportError:  # pragma: no cover - a report needs no codec to be importable
        return {}
    return REGISTRY


def describe_link(spec: Any) -> tuple[str, str]:
    """(method name, short text) of one link's `compression.uplink` / `downlink` value.

    `[]` is dense; a list of stages is named by its lossy stages (`prune`), its text
    lists every stage with the parameters that differ from the defaults
    (`prune(rate=0.9)+sparse+zstd`); a mapping `{topk: {fraction: 0.1}}` is its key
    and `topk(fraction=0.1)`.
    """
    if spec in (None, [], {}):
        return DENSE, DENSE
    if isinstance(spec, list):
        stages, names = _registry("stage"), []
        parts = []
        for item in spec:
            (name, params), = item.items() if isinstance(item, dict) and len(item) == 1 \
                else ((str(item), None),)
            names.append(name)
            text = _params(stages.get(name), params)
            parts.append(f"{name}({text})" if text else name)
        lossy = [n for n in names if n not in _LOSSLESS_STAGES]
        return "+".join(lossy) or "stages", "+".join(parts)
    if isinstance(spec, dict) and len(spec) == 1:
        (name, params), = spec.items()
        text = _params(_registry("compressor").get(name), params)
        return str(name), f"{name}({text})" if text else str(name)
    return "?", json.dumps(spec, sort_keys=True)


def _strategy_name(raw: Any) -> str | None:
    """`None` for FedAvg (the default), else a short text."""
    if raw in (None, "fedavg", {"fedavg": {}}, {"fedavg": None}):
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and len(raw) == 1:
        (name, params), = raw.items()
        text = _params(None, params)
        return f"{name}({text})" if text else str(name)
    return json.dumps(raw, sort_keys=True)


@dataclass
class Method:
    """One line of the zoo: a method config in a setting, its runs over seeds."""

    setting: str  # canonical JSON of the setting keys
    key: str  # canonical JSON of the compression section + strategy
    method: str
    up: str
    down: str
    strategy: str | None
    extras: dict[str, Any]  # compression keys besides uplink / downlink
    runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    @property
    def dense(self) -> bool:
        return self.up == DENSE and self.down == DENSE and self.strategy is None


def _defaults() -> dict[str, Any]:
    from fedmpi.config import Config
    from fedmpi.results.flatten import flatten

    return flatten(Config().to_dict())


def with_defaults(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config with the keys it predates at today's defaults.

    Why: a file written before a config key existed (e.g. `link`, or
    `compression.client_rate`) describes the same setting and method as a new file
    with that key at its default; without this they would be grouped apart (the
    sweep's stale check treats such keys the same way). A key missing from a file
    shows as None (or NaN) in the loaded table; keys at None are left out, as absent.
    """
    def missing(value: Any) -> bool:
        return value is None or (isinstance(value, float) and np.isnan(value))

    present = {k for k, v in flat.items() if not missing(v)}
    out = dict(flat)
    for key, default in _defaults().items():
        if default is None or key in present:
            continue
        parts = key.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        if parents & present or any(k.startswith(key + ".") for k in present):
            continue  # the file gives this node another shape (e.g. a method-form link)
        out[key] = default
    # a key at None says no more than an absent one (a file written before it existed)
    return {k: v for k, v in out.items() if not missing(v)}


def identify(flat: Mapping[str, Any]) -> Method:
    flat = with_defaults(flat)
    comp = subtree(flat, "compression") or {}
    strategy = subtree(flat, "strategy")
    up_name, up = describe_link(comp.get("uplink"))
    down_name, down = describe_link(comp.get("downlink"))
    # named by its uplink method (the config column says what the downlink does); a run
    # that compresses only the downlink is "dense/<downlink method>"
    method = f"{DENSE}/{down_name}" if up_name == DENSE and down_name != DENSE else up_name
    extras = {k: v for k, v in comp.items() if k not in ("uplink", "downlink")}
    return Method(
        setting=json.dumps(setting_of(flat), sort_keys=True, default=str),
        key=json.dumps({"compression": comp, "strategy": strategy}, sort_keys=True, default=str),
        method=method, up=up, down=down, strategy=_strategy_name(strategy), extras=extras)


def group(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]]) -> list[Method]:
    """Method configs in order of first appearance; seeds sorted within each."""
    out: dict[tuple[str, str], Method] = {}
    for run, seed in zip(runs["run"], runs["seed"]):
        m = identify(configs[run])
        m = out.setdefault((m.setting, m.key), m)
        m.runs.append(run)
        m.seeds.append(int(seed))
    for m in out.values():
        order = np.argsort(m.seeds, kind="stable")
        m.runs = [m.runs[i] for i in order]
        m.seeds = [m.seeds[i] for i in order]
    return list(out.values())


def config_text(m: Method, dense: Method | None) -> str:
    """`up: ...; down: ...` plus compression keys and strategy that differ from dense."""
    parts = [f"up: {m.up}", f"down: {m.down}"]
    base = dense.extras if dense is not None else {}
    parts += [f"{k}={_value(v)}" for k, v in sorted(m.extras.items())
              if dense is None or base.get(k) != v]
    if m.strategy:
        parts.append(f"strategy={m.strategy}")
    return "; ".join(parts)


def dense_for(m: Method, methods: list[Method]) -> Method | None:
    """The dense method config of `m`'s setting; with several, the one whose other
    compression keys (target, ...) are `m`'s, else the first."""
    candidates = [d for d in methods if d.dense and d.setting == m.setting]
    same = [d for d in candidates if d.extras == m.extras]
    return (same or candidates or [None])[0]
