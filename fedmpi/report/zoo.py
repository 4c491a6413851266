"""The compressor zoo: methods side by side on one setting, against the dense run.

Runs are grouped by what they compute, read from each file's stored config:

- the *setting*: every config key except the compression section, the strategy,
  the run's identity (name, seed, output), how it executes (`run.*`) and where the
  data lies (`data.path`). Methods are compared only within one setting;
- the *method config*: the compression section and the strategy. Runs of one
  method config in one setting differ by seed only and become one line (means
  over seeds);
- the *dense* run of a setting: both links uncompressed (`[]`) under FedAvg.

Per method config (mean over seeds unless said otherwise):

- accuracy: the final test accuracy (mean, std over seeds, in %); Δ = accuracy
  minus the dense run's, in percentage points;
- bytes: run totals from /messages (up = updates, down = models, total = up +
  down + control: assign, report and the final STOP exchange included);
  total_ratio = dense total / method total, uplink_ratio = dense up / method up.
  Left out of the total: error-feedback checkpoint snapshots (kind `memory`), the
  residuals workers copy to rank 0 so that a checkpoint can hold them. They are
  the simulation's bookkeeping -- in a real deployment a client's residual never
  leaves it -- and counting them would charge every error-feedback method the
  size of the model per checkpoint. ranking.csv shows them (`snapshot_bytes`);
- bytes to target: the target is the dense run's accuracy - 1 point; the
  seed-mean accuracy curve (rounds that every seed evaluated) is scanned for the
  first round at or above it, and the seed-mean cumulative total bytes (as above)
  at the end of that round are the cost;
  "not reached" when no round gets there;
- codec cost: encode and decode seconds per round (/rounds `encode_s`, `decode_s`:
  summed over every rank), mean over rounds.

Why the config and not the file name: names are free text (a sweep task's name
also carries its seed); the stored resolved config says exactly what ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

TABLE_COLUMNS = ["method", "config", "seeds", "accuracy_mean", "accuracy_std", "delta_pp",
                 "up_bytes", "down_bytes", "total_bytes", "total_ratio", "uplink_ratio"]
TARGET_PP = 1.0  # the target: dense accuracy minus this many percentage points
DENSE = "dense"
_LOSSLESS_STAGES = {"sparse", "zstd"}  # coders: not what names a stage-list method
_IDENTITY = {"name", "seed", "output", "data.path"}
_METHOD_PREFIXES = ("compression", "strategy")
_EXECUTION_PREFIXES = ("run",)


# ------------------------------------------------------------------------ identity


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


def identify(flat: Mapping[str, Any]) -> Method:
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


# ------------------------------------------------------------------------- numbers


SNAPSHOT = "memory"  # kind name of error-feedback checkpoint snapshots


def snapshots(messages: pd.DataFrame | None) -> pd.Series:
    """Bytes of checkpoint snapshots per (run, round); empty when there are none."""
    if messages is None or not len(messages) or "kind_name" not in messages:
        return pd.Series(dtype=float)
    snap = messages[messages["kind_name"].astype(str) == SNAPSHOT]
    return snap.groupby(["run", "round"])["sender_bytes"].sum().astype(float)


def curve(rounds: pd.DataFrame, runs: list[str], snaps: pd.Series | None = None
          ) -> pd.DataFrame:
    """Seed-mean per round: accuracy and cumulative up / down / total bytes
    (total = up + down + control, checkpoint snapshots left out).

    Only rounds that every run of the group evaluated count (a run still going, or
    `run.eval_every` > 1, leaves rounds without an accuracy).
    """
    r = rounds[rounds["run"].isin(runs)].sort_values(["run", "round"]).copy()
    snap = np.zeros(len(r))
    if snaps is not None and len(snaps):
        keys = pd.MultiIndex.from_arrays([r["run"], r["round"]])
        snap = snaps.reindex(keys).fillna(0.0).to_numpy()
    r["cum_total_bytes"] = (r["up_bytes"] + r["down_bytes"] + r["control_bytes"] - snap
                            ).groupby(r["run"]).cumsum()
    r["cum_up_bytes"] = r.groupby("run")["up_bytes"].cumsum()
    r["cum_down_bytes"] = r.groupby("run")["down_bytes"].cumsum()
    r = r[r["test_accuracy"].notna()]
    cols = ["test_accuracy", "cum_total_bytes", "cum_up_bytes", "cum_down_bytes"]
    counts = r.groupby("round")["run"].nunique()
    full = counts.index[counts == len(runs)]
    mean = r[r["round"].isin(full)].groupby("round")[cols].mean()
    return mean.reset_index()


def bytes_to_target(c: pd.DataFrame, target: float) -> tuple[float, int]:
    """(cumulative total bytes, round) at the first round whose mean accuracy reaches
    `target`; (nan, -1) when none does."""
    hit = c[c["test_accuracy"] >= target - 1e-12]
    if not len(hit):
        return float("nan"), -1
    first = hit.iloc[0]
    return float(first["cum_total_bytes"]), int(first["round"])


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _ratio(num: float, den: float) -> float:
    return num / den if den and not math.isnan(den) and not math.isnan(num) else float("nan")


def build(runs: pd.DataFrame, rounds: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]],
          messages: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method config: the zoo-table columns, then the ranking's extras."""
    methods = group(runs, configs)
    by_run = runs.set_index("run")
    snaps = snapshots(messages)
    snap_run = snaps.groupby(level=0).sum() if len(snaps) else pd.Series(dtype=float)
    stats = {}
    for m in methods:
        sub = by_run.loc[m.runs]
        snap = snap_run.reindex(m.runs).fillna(0.0).to_numpy()
        r = rounds[rounds["run"].isin(m.runs)]
        per_run = r.groupby("run")[["encode_s", "decode_s"]].mean()
        stats[id(m)] = dict(
            accuracy_mean=100 * float(sub["final_accuracy"].mean()),
            accuracy_std=100 * _std(sub["final_accuracy"]),
            up_bytes=float(sub["up_bytes"].mean()),
            down_bytes=float(sub["down_bytes"].mean()),
            total_bytes=float((sub["wire_bytes"].to_numpy(float) - snap).mean()),
            snapshot_bytes=float(snap.mean()),
            encode_s_per_round=float(per_run["encode_s"].mean()) if len(per_run) else math.nan,
            decode_s_per_round=float(per_run["decode_s"].mean()) if len(per_run) else math.nan,
            curve=curve(rounds, m.runs, snaps),
        )
    settings = list(dict.fromkeys(m.setting for m in methods))
    rows = []
    for m in methods:
        s, dense = stats[id(m)], dense_for(m, methods)
        d = stats[id(dense)] if dense is not None else None
        target = (d["accuracy_mean"] - TARGET_PP) / 100 if d else math.nan
        cost, reached = bytes_to_target(s["curve"], target) if d else (math.nan, -1)
        rows.append(dict(
            method=m.method,
            config=config_text(m, dense),
            seeds=",".join(map(str, m.seeds)),
            accuracy_mean=s["accuracy_mean"],
            accuracy_std=s["accuracy_std"],
            delta_pp=s["accuracy_mean"] - d["accuracy_mean"] if d else math.nan,
            up_bytes=s["up_bytes"],
            down_bytes=s["down_bytes"],
            total_bytes=s["total_bytes"],
            total_ratio=_ratio(d["total_bytes"], s["total_bytes"]) if d else math.nan,
            uplink_ratio=_ratio(d["up_bytes"], s["up_bytes"]) if d else math.nan,
            target_accuracy=100 * target,
            bytes_to_target=cost,
            round_reached=reached,
            encode_s_per_round=s["encode_s_per_round"],
            decode_s_per_round=s["decode_s_per_round"],
            snapshot_bytes=s["snapshot_bytes"],
            setting=settings.index(m.setting),
            dense=m.dense,
            has_dense=dense is not None,
            runs=";".join(m.runs),
            curve=s["curve"],
        ))
    table = pd.DataFrame(rows)
    if not len(table):
        return table
    reached = table["round_reached"] >= 0
    table["_order"] = np.where(reached, table["bytes_to_target"], np.inf)
    table = table.sort_values(["setting", "_order", "accuracy_mean"],
                              ascending=[True, True, False], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


# ------------------------------------------------------------------------- outputs


def zoo_csv(table: pd.DataFrame) -> str:
    """`zoo-table.csv`: exactly TABLE_COLUMNS, in ranking order (see the module doc)."""
    out = table.reindex(columns=TABLE_COLUMNS).copy()
    for col, digits in (("accuracy_mean", 4), ("accuracy_std", 4), ("delta_pp", 4),
                        ("up_bytes", 1), ("down_bytes", 1), ("total_bytes", 1),
                        ("total_ratio", 3), ("uplink_ratio", 3)):
        out[col] = out[col].astype(float).round(digits)
    return out.to_csv(index=False)


def ranking_csv(table: pd.DataFrame) -> str:
    return table.drop(columns=["curve", "dense", "has_dense"]).to_csv(index=False)


def _num(x: float, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(table: pd.DataFrame, settings: list[dict[str, Any]] | None = None) -> str:
    """The ranking: by wire bytes to reach the dense run's accuracy - 1 point."""
    head = ["#", "method", "config", "seeds", "accuracy (%)", "Δ vs dense (pp)",
            f"MB to dense − {TARGET_PP:g} pt", "at round", "total MB", "up MB", "down MB",
            "total ×", "uplink ×", "encode s/round", "decode s/round"]
    lines = []
    for s, sub in table.groupby("setting", sort=True):
        if len(table["setting"].unique()) > 1:
            lines += [f"Setting {s}" + (f": {settings[s]}" if settings else ""), ""]
        if not sub["has_dense"].any():
            lines += ["No dense run (uplink and downlink `[]`, FedAvg) in this setting: "
                      "no target, Δ or ratios.", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i, (_, r) in enumerate(sub.iterrows(), 1):
            acc = _num(r["accuracy_mean"], ".2f")
            if not math.isnan(r["accuracy_std"]):
                acc += f" ± {r['accuracy_std']:.2f}"
            if r["round_reached"] >= 0:
                cost, at = _num(r["bytes_to_target"] / 1e6, ",.3f"), str(r["round_reached"])
            else:
                cost, at = ("not reached" if r["has_dense"] else "—"), "—"
            name = f"**{r['method']}**" if r["dense"] else r["method"]
            seeds = r["seeds"].split(",")
            if len(set(seeds)) < len(seeds):  # e.g. CPU and GPU runs of one config given together
                seeds.append(" repeated seed: these runs are averaged as if they were distinct")
            cells = [str(i), name, r["config"].replace("|", "\\|"), ",".join(seeds), acc,
                     _num(r["delta_pp"], "+.2f"), cost, at,
                     _num(r["total_bytes"] / 1e6, ",.3f"), _num(r["up_bytes"] / 1e6, ",.3f"),
                     _num(r["down_bytes"] / 1e6, ",.3f"), _num(r["total_ratio"], ".2f"),
                     _num(r["uplink_ratio"], ".2f"), _num(r["encode_s_per_round"], ".4f"),
                     _num(r["decode_s_per_round"], ".4f")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


NOTE = (
    "Ranking by wire bytes to reach the dense run's accuracy − {pp:g} point: the dense run "
    "has both links uncompressed under FedAvg, in the same setting; its final accuracy "
    "(mean over seeds) − {pp:g} pp is the target; a method's cost is the seed-mean "
    "cumulative wire bytes (up + down + control) at the end of the first round whose "
    "seed-mean accuracy reaches the target (\"not reached\": no round does). Accuracy: "
    "final test accuracy, mean ± std over seeds. Total / up / down MB: whole-run wire "
    "bytes, mean over seeds (total includes control messages, not the error-feedback "
    "checkpoint snapshots workers copy to rank 0: ranking.csv `snapshot_bytes`); × = "
    "dense bytes / method bytes (total, uplink). Encode / decode: seconds per round summed over every rank, "
    "mean over rounds and seeds. 1 MB = 10^6 bytes.")
