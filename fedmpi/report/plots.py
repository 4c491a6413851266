"""The report's figures, drawn with matplotlib's object API (no pyplot global state,
no display needed: a bare `Figure` renders with Agg).

Every function takes DataFrames from `fedmpi.results` plus a `labels` mapping
run -> legend text and a `groups` mapping run -> group index (runs that differ
only by seed share a colour).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedmpi.report.output import save_figure

TIME_PARTS = ("compute_s", "encode_s", "decode_s", "communicate_s", "aggregate_s",
              "evaluate_s", "wait_s")
_STYLES = ("-", "--", ":", "-.")
_MAX_LEGEND = 16


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if 0 < len(handles) <= _MAX_LEGEND:
        ax.legend(fontsize="small")


def _curves(rounds: pd.DataFrame, x: str, labels: Mapping[str, str],
            groups: Mapping[str, int], *, xlabel: str, title: str, path: Path,
            scale: float = 1.0, logx: bool = False) -> Path:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    seen: dict[int, int] = {}
    for run, r in rounds.groupby("run", sort=False):
        r = r[r["test_accuracy"].notna()]  # rounds without evaluation (run.eval_every > 1)
        g = groups.get(run, 0)
        k = seen[g] = seen.get(g, -1) + 1
        ax.plot(r[x] * scale, 100 * r["test_accuracy"], _STYLES[k % len(_STYLES)],
                color=_colour(g), marker="." if len(r) < 30 else None, label=labels.get(run, run))
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def accuracy_vs_round(rounds, labels, groups, path: Path) -> Path:
    return _curves(rounds, "round", labels, groups, xlabel="round",
                   title="Accuracy per round", path=path)


def accuracy_vs_mb(rounds, labels, groups, path: Path) -> Path:
    # The key plot: the cost of an accuracy level in bytes actually sent.
    return _curves(rounds, "cum_wire_bytes", labels, groups, scale=1e-6,
                   xlabel="cumulative MB on the wire (up + down + control)",
                   title="Accuracy vs communication", path=path, logx=True)


def pareto_front(mb: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of runs no other run beats on both bytes (fewer) and accuracy (higher)."""
    order = np.lexsort((-acc, mb))  # by bytes, ties: best accuracy first
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.array(front, dtype=int)


def pareto(runs: pd.DataFrame, labels, groups, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    mb = runs["wire_bytes"].to_numpy(float) / 1e6
    acc = 100 * runs["final_accuracy"].to_numpy(float)
    ok = np.isfinite(mb) & np.isfinite(acc)
    for i, run in enumerate(runs["run"]):
        if ok[i]:
            ax.scatter(mb[i], acc[i], color=_colour(groups.get(run, 0)), s=25, zorder=2)
    idx = np.flatnonzero(ok)
    front = idx[pareto_front(mb[ok], acc[ok])] if len(idx) else idx
    if len(front):
        ax.step(mb[front], acc[front], where="post", color="k", lw=1, zorder=1,
                label="Pareto front")
        ax.scatter(mb[front], acc[front], facecolors="none", edgecolors="k", s=110, zorder=3)
        for i in front:
            ax.annotate(labels.get(runs["run"].iloc[i], ""), (mb[i], acc[i]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
    ax.set(xlabel="total MB on the wire", ylabel="final test accuracy (%)",
           title="Final accuracy vs total bytes")
    ax.grid(alpha=0.3)
    _legend(ax)
    return save_figure(fig, path)


def time_split(rounds: pd.DataFrame, labels, path: Path) -> Path:
    """Stacked seconds per round: per round for one run, the per-round mean per run otherwise."""
    runs = list(dict.fromkeys(rounds["run"]))
    if len(runs) == 1:
        data = rounds.set_index("round")[list(TIME_PARTS)]
        xlabels = [str(r) for r in data.index]
        wall = rounds["wall_s"].to_numpy(float)
        xlabel = "round"
    else:
        data = rounds.groupby("run", sort=False)[list(TIME_PARTS)].mean().loc[runs]
        xlabels = [labels.get(r, r) for r in runs]
        wall = rounds.groupby("run", sort=False)["wall_s"].mean().loc[runs].to_numpy(float)
        xlabel = "run (mean per round)"
    fig = Figure(figsize=(max(6.0, 0.35 * len(xlabels) + 3), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(xlabels))
    bottom = np.zeros(len(x))
    for i, part in enumerate(TIME_PARTS):
        values = data[part].to_numpy(float)
        ax.bar(x, values, bottom=bottom, color=_colour(i), label=part[:-2])
        bottom += values
    ax.plot(x, wall, "k_", markersize=14, mew=2, label="wall")
    ax.set_xticks(x, xlabels, rotation=90 if len(x) > 12 or len(runs) > 1 else 0,
                  fontsize="small")
    ax.set(xlabel=xlabel, ylabel="seconds", title="Time split per round")
    ax.legend(fontsize="small", ncol=2)
    return save_figure(fig, path)
