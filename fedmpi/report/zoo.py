"""The compressor zoo: methods side by side on one setting, against the dense run.

Runs are grouped into method configs within a setting (`methods.py`: read from
each file's stored config; runs that differ by seed only are one line, means over
seeds). Per method config (mean over seeds unless said otherwise):

- accuracy: the final test accuracy (mean, std over seeds, in %); Δ = accuracy
  minus the dense run's, in percentage points;
- bytes: run totals from /messages (up = updates, down = models, total = up +
  down + control: assign, report and the final STOP exchange included);
  total_ratio = dense total / method total, uplink_ratio = dense up / method up.
  Left out of the total: infrastructure messages (kind `memory`, /rounds
  `infra_bytes`: the start-up run identity for the workers' client-state files, a
  replica on --resume), which the loader already keeps out of control and
  `wire_bytes`. Client state (error-feedback residuals) no longer travels at all:
  each worker checkpoints its own clients. ranking.csv shows the infrastructure
  bytes (`snapshot_bytes`, the name of older files' residual snapshots);
- bytes to target: the target is the dense run's accuracy - 1 point; the
  seed-mean accuracy curve (rounds that every seed evaluated) is scanned for the
  first round at or above it, and the seed-mean cumulative total bytes (as above)
  at the end of that round are the cost; "not reached" when no round gets there;
- codec cost: encode and decode seconds per round (/rounds `encode_s`, `decode_s`:
  summed over every rank), mean over rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedmpi.report.methods import config_text, dense_for, group

TABLE_COLUMNS = ["method", "config", "seeds", "accuracy_mean", "accuracy_std", "delta_pp",
                 "up_bytes", "down_bytes", "total_bytes", "total_ratio", "uplink_ratio"]
TARGET_PP = 1.0  # the target: dense accuracy minus this many percentage points
SNAPSHOT = "memory"  # kind name of infrastructure messages (older files: EF snapshots)


def snapshots(messages: pd.DataFrame | None) -> pd.Series:
    """Bytes of infrastructure messages per (run, round); empty when there are none."""
    if messages is None or not len(messages) or "kind_name" not in messages:
        return pd.Series(dtype=float)
    snap = messages[messages["kind_name"].astype(str) == SNAPSHOT]
    return snap.groupby(["run", "round"])["sender_bytes"].sum().astype(float)


def curve(rounds: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """Seed-mean per round: accuracy and cumulative up / down / total bytes
    (total = up + down + control; infra_bytes are a column of their own).

    Only rounds that every run of the group evaluated count (a run still going, or
    `run.eval_every` > 1, leaves rounds without an accuracy).
    """
    r = rounds[rounds["run"].isin(runs)].sort_values(["run", "round"]).copy()
    r["cum_total_bytes"] = (r["up_bytes"] + r["down_bytes"] + r["control_bytes"]
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
            total_bytes=float(sub["wire_bytes"].mean()),
            snapshot_bytes=float(snap.mean()),
            encode_s_per_round=float(per_run["encode_s"].mean()) if len(per_run) else math.nan,
            decode_s_per_round=float(per_run["decode_s"].mean()) if len(per_run) else math.nan,
            curve=curve(rounds, m.runs),
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
