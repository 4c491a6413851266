"""Pruning × quantization heat maps (configs/paper/sweep-quant.yaml): one per error
feedback setting, Δ accuracy and uplink compression over θ (rows) × value bits (columns).

Why read the cell from the stored config and not from the task name: a run made by
hand (`fedmpi run ... --set`) belongs in the same map. A run's cell is
(θ = uplink prune rate, bits = bits per transmitted value of its uplink quantize
stage, 32 without one, 1 for `sign`; EF = a `memory` stage in the uplink). Runs that
differ only by seed are averaged. Δ accuracy is in percentage points against the cell
θ = 0, 32 bits of the same EF setting (blank when that run is missing); compression is
dense float32 uplink bytes / uplink wire bytes (headers, index, codes, zstd: all of it).

Written only when the runs are such a study: at least one has an uplink quantize stage
and they cover two cells or more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedmpi.report.output import save_figure

_STAGE = re.compile(r"^compression\.uplink\.(\d+)\.(\w+)(?:\.(\w+))?$")
_DEFAULT_BITS = {"uniform": 8, "pow2": 4, "float16": 16, "bfloat16": 16, "sign": 1}
COLUMNS = ["ef", "theta", "bits", "n", "accuracy_mean", "accuracy_std", "delta_pp",
           "up_compression", "mean_up_message_bytes", "runs"]


def cell_of(flat: Mapping[str, Any]) -> tuple[bool, float, int] | None:
    """(EF, θ, bits) of a flattened config, or None for an uplink that is not a stage list."""
    stages: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        m = _STAGE.match(key)
        if key.startswith("compression.uplink.") and not m:
            return None  # a registered method ({topk: {...}}), not a stage list
        if m:
            stages.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})
            if m.group(3):
                stages[int(m.group(1))][m.group(2)][m.group(3)] = value
    if not stages and flat.get("compression.uplink") not in (None, "[]"):
        return None
    kinds = {name: params for s in stages.values() for name, params in s.items()}
    theta = float((kinds.get("prune") or {}).get("rate") or 0.0)
    q = kinds.get("quantize")
    if q is None:
        bits = 32
    else:
        method = q.get("method", "uniform")
        b = q.get("bits")
        bits = int(_DEFAULT_BITS.get(method, 8) if b is None else b) + (method == "pow2")
    return "memory" in kinds, theta, bits


def build(runs: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (EF, θ, bits): mean ± std over seeds, Δ vs (θ = 0, 32 bits, same EF)."""
    rows = []
    cells = {run: cell_of(configs[run]) for run in runs["run"]}
    df = runs[[cells[r] is not None for r in runs["run"]]].copy()
    if not len(df):
        return pd.DataFrame(columns=COLUMNS)
    df["ef"] = [cells[r][0] for r in df["run"]]
    df["theta"] = [cells[r][1] for r in df["run"]]
    df["bits"] = [cells[r][2] for r in df["run"]]
    for (ef, theta, bits), sub in df.groupby(["ef", "theta", "bits"], sort=True):
        acc = sub["final_accuracy"]
        rows.append(dict(ef=bool(ef), theta=float(theta), bits=int(bits), n=len(sub),
                         accuracy_mean=acc.mean(),
                         accuracy_std=acc.std(ddof=1) if len(sub) > 1 else float("nan"),
                         up_compression=sub["up_compression_ratio"].mean(),
                         mean_up_message_bytes=sub["mean_up_message_bytes"].mean(),
                         runs=";".join(sub["run"])))
    base = {r["ef"]: r["accuracy_mean"] for r in rows if r["theta"] == 0 and r["bits"] == 32}
    for r in rows:
        b = base.get(r["ef"])
        r["delta_pp"] = 100 * (r["accuracy_mean"] - b) if b is not None else float("nan")
    return pd.DataFrame(rows, columns=COLUMNS)


def applies(table: pd.DataFrame) -> bool:
    return len(table) >= 2 and bool((table["bits"] < 32).any())


def grid(table: pd.DataFrame, ef: bool, value: str) -> tuple[list[float], list[int], np.ndarray]:
    """(θ rows ascending, bits columns descending, values with NaN for missing cells)."""
    sub = table[table["ef"] == ef]
    thetas = sorted(sub["theta"].unique())
    bits = sorted(sub["bits"].unique(), reverse=True)
    out = np.full((len(thetas), len(bits)), np.nan)
    for _, r in sub.iterrows():
        out[thetas.index(r["theta"]), bits.index(r["bits"])] = r[value]
    return thetas, bits, out


def figure(table: pd.DataFrame, ef: bool, path: Path) -> Path:
    """Two panels: Δ accuracy (pp, diverging around 0) and uplink compression (log)."""
    fig = Figure(figsize=(10, 4.2))
    for i, (value, title) in enumerate((("delta_pp", "Δ accuracy vs θ=0, 32 bit (pp)"),
                                        ("up_compression", "uplink compression (dense/wire)"))):
        thetas, bits, z = grid(table, ef, value)
        ax = fig.add_subplot(1, 2, i + 1)
        if value == "delta_pp":
            lim = max(1.0, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
            im = ax.imshow(z, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            fmt = "{:+.1f}"
        else:
            zl = np.log10(z)
            im = ax.imshow(zl, cmap="viridis", aspect="auto")
            fmt = "{:.1f}x"
        for (a, b), v in np.ndenumerate(z):
            ax.text(b, a, "—" if not math.isfinite(v) else fmt.format(v), ha="center",
                    va="center", fontsize="small",
                    bbox=dict(facecolor="white", alpha=0.7, linewidth=0, pad=1.5))
        ax.set_xticks(range(len(bits)), [("1 (sign)" if b == 1 else str(b)) for b in bits])
        ax.set_yticks(range(len(thetas)), [f"{t:g}" for t in thetas])
        ax.set(xlabel="value bits", ylabel="θ (uplink prune rate)", title=title)
        fig.colorbar(im, ax=ax, shrink=0.8,
                     label="pp" if value == "delta_pp" else "log10(compression)")
    fig.suptitle(f"Pruning × quantization, error feedback {'on' if ef else 'off'}")
    fig.tight_layout()
    return save_figure(fig, path)


def markdown(table: pd.DataFrame) -> str:
    lines = ["| EF | θ | bits | accuracy (%) | Δ (pp) | uplink compression | mean up msg (B) | n |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        acc = f"{100 * r['accuracy_mean']:.2f}"
        if r["n"] > 1:
            acc += f" ± {100 * r['accuracy_std']:.2f}"
        d = "—" if not math.isfinite(r["delta_pp"]) else f"{r['delta_pp']:+.2f}"
        lines.append(f"| {'on' if r['ef'] else 'off'} | {r['theta']:g} | "
                     f"{'1 (sign)' if r['bits'] == 1 else r['bits']} | {acc} | {d} | "
                     f"{r['up_compression']:.2f}x | {r['mean_up_message_bytes']:,.0f} | "
                     f"{r['n']} |")
    return "\n".join(lines) + "\n"


def write(chosen: pd.DataFrame, configs, out: Path) -> list[Path]:
    """heatmap_quant_ef-on.png / _ef-off.png and quant.md / quant.csv, when they apply."""
    from fedmpi.report.output import write_text

    table = build(chosen, configs)
    if not applies(table):
        return []
    written = [figure(table, ef, out / f"heatmap_quant_ef-{'on' if ef else 'off'}.png")
               for ef in sorted(set(table["ef"]), reverse=True)]
    written.append(write_text(out / "quant.md", markdown(table)))
    written.append(write_text(out / "quant.csv", table.to_csv(index=False)))
    return written
