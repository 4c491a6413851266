"""The paper's Table II: final accuracy and message sizes per pruning rate x local epochs.

Rows are (theta, E, any other config key that varies across the runs); runs
that differ only by seed are one row (mean +- std, n). theta is the rate of the
uplink `prune` stage (0 when there is none), E is `train.local_epochs`.

A varying key becomes a column only if it is not a function of theta or of E
alone: such keys (the uplink stage list itself, a per-theta run name) add no
information to a row, and matching on them would stop every row from finding
its theta = 0 baseline for the delta column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

THETA, EPOCHS = "theta", "local_epochs"
EPOCHS_KEY = "train.local_epochs"
_PRUNE_RATE = re.compile(r"^compression\.uplink\.(\d+)\.prune\.rate$")
_STAGE_NAME = re.compile(r"^compression\.uplink\.(\d+)\.(stage|name|type|kind)$")
_IDENTITY = {"name", "seed", "output"}  # differ per run by design, never a sweep axis

NUMBERS = ["n", "accuracy_mean", "accuracy_std", "delta_vs_theta0", "mean_up_message_bytes",
           "mean_down_message_bytes", "compression_ratio", "total_mb"]


def theta_of(flat: Mapping[str, Any]) -> float:
    """Uplink pruning rate of a flattened config (0.0 without a prune stage)."""
    for key, value in flat.items():
        if _PRUNE_RATE.match(key):
            return float(value or 0.0)
        m = _STAGE_NAME.match(key)
        if m and value == "prune":
            return float(flat.get(f"compression.uplink.{m.group(1)}.rate") or 0.0)
    return 0.0


def _cell(value: Any) -> Any:
    return "null" if value is None else value


def _is_function_of(values: Mapping[str, Any], by: Mapping[str, Any]) -> bool:
    seen: dict[Any, Any] = {}
    for run, v in values.items():
        if seen.setdefault(repr(by[run]), repr(v)) != repr(v):
            return False
    return True


def other_keys(configs: Mapping[str, Mapping[str, Any]], *,
               ignore: Iterable[str] = ()) -> list[str]:
    """Config keys that vary across `configs` (run -> flat config) and deserve a column."""
    ignore = list(ignore)
    theta = {run: theta_of(flat) for run, flat in configs.items()}
    epochs = {run: flat.get(EPOCHS_KEY) for run, flat in configs.items()}
    keys: dict[str, None] = {}
    for flat in configs.values():
        keys.update(dict.fromkeys(flat))
    out = []
    for key in keys:
        last = key.rsplit(".", 1)[-1]
        if key == EPOCHS_KEY or last in _IDENTITY or last.endswith("_seed"):
            continue
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        values = {run: flat.get(key) for run, flat in configs.items()}
        if len({repr(v) for v in values.values()}) <= 1:
            continue
        if _is_function_of(values, theta) or _is_function_of(values, epochs):
            continue
        out.append(key)
    return out


def build(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]], *,
          ignore: Iterable[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """One row per (theta, E, other keys); returns the table and the other keys."""
    configs = {run: configs[run] for run in runs["run"]}
    others = other_keys(configs, ignore=ignore)
    df = runs.copy()
    df[THETA] = [theta_of(configs[r]) for r in df["run"]]
    df[EPOCHS] = [_cell(configs[r].get(EPOCHS_KEY)) for r in df["run"]]
    group_cols = [THETA, EPOCHS]
    for k in others:
        df[f"__{k}"] = [_cell(configs[r].get(k)) for r in df["run"]]
        group_cols.append(f"__{k}")
    rows = []
    for key, sub in df.groupby(group_cols, sort=False, dropna=False):
        acc = sub["final_accuracy"]
        row = dict(zip([THETA, EPOCHS, *others], key))
        row.update(
            n=len(sub),
            accuracy_mean=acc.mean(),
            accuracy_std=acc.std(ddof=1) if len(sub) > 1 else float("nan"),
            mean_up_message_bytes=sub["mean_up_message_bytes"].mean(),
            mean_down_message_bytes=sub["mean_down_message_bytes"].mean(),
            compression_ratio=sub["compression_ratio"].mean(),
            total_mb=(sub["wire_bytes"] / 1e6).mean(),
            seeds=",".join(str(s) for s in sorted(sub["seed"])),
            runs=";".join(sub["run"]),
        )
        rows.append(row)
    baseline = {_same(r, others): r["accuracy_mean"] for r in rows if r[THETA] == 0}
    for r in rows:
        base = baseline.get(_same(r, others))
        r["delta_vs_theta0"] = r["accuracy_mean"] - base if base is not None else float("nan")
    rows.sort(key=lambda r: (str(r[EPOCHS]).zfill(8), r[THETA], *(str(r[k]) for k in others)))
    columns = [THETA, EPOCHS, *others, *NUMBERS, "seeds", "runs"]
    return pd.DataFrame(rows, columns=columns), others


def _same(row: Mapping[str, Any], others: list[str]) -> tuple:
    return (repr(row[EPOCHS]), *(repr(row[k]) for k in others))


def _num(x: float, spec: str, unit: str = "") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{unit}"


def markdown(table: pd.DataFrame, others: list[str], *, note: str = "") -> str:
    head = ["θ (uplink prune)", "E (local epochs)", *others, "accuracy (%)",
            "Δ vs θ=0 (pp)", "mean up msg (B)", "mean down msg (B)", "compression (dense/wire)",
            "total MB", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        acc = _num(100 * r["accuracy_mean"], ".2f")
        if r["n"] > 1:
            acc += f" ± {_num(100 * r['accuracy_std'], '.2f')}"
        cells = [f"{r[THETA]:g}", str(r[EPOCHS]), *(str(r[k]) for k in others), acc,
                 _num(100 * r["delta_vs_theta0"], "+.2f"),
                 _num(r["mean_up_message_bytes"], ",.0f"),
                 _num(r["mean_down_message_bytes"], ",.0f"),
                 _num(r["compression_ratio"], ".2f", "x"), _num(r["total_mb"], ".3f"),
                 str(r["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return f"{note}\n\n{text}" if note else text
