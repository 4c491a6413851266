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
from matplotlib.ticker import NullFormatter

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


def accuracy_vs_time(rounds: pd.DataFrame, labels, groups, path: Path) -> Path | None:
    """Accuracy against time: the measured MPI wall time (left) next to the time the
    link model simulates for the same bytes (right: each round's slowest client's
    download + upload, `/rounds.sim_s`), e.g. "time to 40% on a 10 Mbit/s uplink".
    None when no run has simulated times (no `link:` model)."""
    if "sim_s" not in rounds or not rounds["sim_s"].notna().any():
        return None
    r = rounds.sort_values(["run", "round"]).copy()
    r["cum_wall_s"] = r.groupby("run")["wall_s"].cumsum()
    r["cum_sim_s"] = r.groupby("run")["sim_s"].cumsum()
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, xlabel in ((axes[0], "cum_wall_s", "measured wall time (s, MPI on this machine)"),
                          (axes[1], "cum_sim_s", "simulated transfer time (s, link model)")):
        seen: dict[int, int] = {}
        for run, g in r.groupby("run", sort=False):
            g = g[g["test_accuracy"].notna() & g[x].notna()]
            if not len(g):
                continue
            grp = groups.get(run, 0)
            k = seen[grp] = seen.get(grp, -1) + 1
            ax.plot(g[x], 100 * g["test_accuracy"], _STYLES[k % len(_STYLES)],
                    color=_colour(grp), label=labels.get(run, run))
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="test accuracy (%)", title="Accuracy vs measured time")
    axes[1].set(title="Accuracy vs simulated link time")
    _legend(axes[1])
    return save_figure(fig, path)


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
    """Two stacked bars per round (one run) or per run (mean per round).

    Left, the server's time: waiting for workers, aggregation, evaluation and the rest
    of its wall time (its own codec work, HDF5); a black tick marks the wall time. The
    parts add up to the wall time unless the evaluation overlapped the next round's
    training (`run.overlap_eval`): then the bar rises above the tick by the evaluation
    time that ran concurrently. Right, the work done on the workers summed over clients
    (it overlaps across worker ranks, so it can exceed the wall time): training and the
    codec time of all ranks.
    """
    runs = list(dict.fromkeys(rounds["run"]))
    cols = ["wall_s", *TIME_PARTS]
    if len(runs) == 1:
        data = rounds.set_index("round")[cols]
        xlabels, xlabel = [str(r) for r in data.index], "round"
    else:
        data = rounds.groupby("run", sort=False)[cols].mean().loc[runs]
        xlabels, xlabel = [labels.get(r, r) for r in runs], "run (mean per round)"
    server = {
        "wait": data["wait_s"],
        "aggregate": data["aggregate_s"],
        "evaluate": data["evaluate_s"],
        "other (server codec, I/O)": (data["wall_s"] - data["wait_s"] - data["aggregate_s"]
                                      - data["evaluate_s"]).clip(lower=0),
    }
    workers = {"compute (sum over clients)": data["compute_s"],
               "encode (all ranks)": data["encode_s"], "decode (all ranks)": data["decode_s"]}
    fig = Figure(figsize=(max(6.0, 0.5 * len(xlabels) + 3), 4.8))
    ax = fig.add_subplot()
    x = np.arange(len(xlabels))
    colour = 0
    for offset, parts, hatch in ((-0.2, server, None), (0.2, workers, "//")):
        bottom = np.zeros(len(x))
        for name, values in parts.items():
            values = values.to_numpy(float)
            ax.bar(x + offset, values, width=0.38, bottom=bottom, color=_colour(colour),
                   hatch=hatch, label=name)
            bottom += values
            colour += 1
    ax.scatter(x - 0.2, data["wall_s"].to_numpy(float), marker="_", s=300, color="black",
               zorder=3, label="server wall time")
    ax.set_xticks(x, xlabels, rotation=90 if len(x) > 12 or len(runs) > 1 else 0,
                  fontsize="small")
    ax.set(xlabel=xlabel, ylabel="seconds per round",
           title="Time split: server wall time (left) | worker work (right, hatched)")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.legend(fontsize="x-small", ncol=2, loc="upper center")
    return save_figure(fig, path)


def accuracy_vs_bytes_by_link(table: pd.DataFrame, path: Path) -> Path:
    """The zoo figure: one line per method config (mean over seeds), accuracy against
    cumulative wire bytes -- all of them (up + down + control), uplink only, downlink
    only -- so a method that saves on one link and not the other shows it.

    `table` is `fedmpi.report.zoo.build`'s: a `curve` (seed-mean per round) per row.
    """
    panels = (("cum_total_bytes", "total (up + down + control)"),
              ("cum_up_bytes", "uplink (client updates)"),
              ("cum_down_bytes", "downlink (server broadcasts)"))
    fig = Figure(figsize=(15, 5.2))
    axes = fig.subplots(1, 3, sharey=True)
    several = table["setting"].nunique() > 1 if len(table) else False
    for i, (_, row) in enumerate(table.iterrows()):
        c = row["curve"]
        label = f"{row['method']}: {row['config']}"
        if several:
            label = f"[{row['setting']}] {label}"
        style = dict(color="k", lw=2.2, ls="-") if row["dense"] else dict(
            color=f"C{i % 10}", lw=1.2, ls=_STYLES[(i // 10) % len(_STYLES)])
        for ax, (col, _) in zip(axes, panels):
            x = c[col].to_numpy(float) / 1e6
            ok = x > 0
            ax.plot(x[ok], 100 * c["test_accuracy"].to_numpy(float)[ok],
                    marker="." if len(c) < 30 else None, label=label if ax is axes[0] else None,
                    **style)
        if row["dense"]:
            for ax in axes:
                ax.axhline(row["target_accuracy"], color="0.5", lw=0.8, ls="--")
    for ax, (_, title) in zip(axes, panels):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-1 labels overlap
        ax.set(xlabel="cumulative MB on the wire", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), mean over seeds")
    fig.suptitle("Accuracy vs bytes per link (one line per method config; dense in black, "
                 "dashed: dense accuracy − 1 point)")
    if len(table):
        # below the panels, outside the figure box: save_figure's tight bounding box grows
        # to hold it however many method configs there are
        fig.subplots_adjust(bottom=0.13)
        fig.legend(loc="upper center", ncol=2, fontsize="x-small", bbox_to_anchor=(0.5, 0.0),
                   frameon=False)
    return save_figure(fig, path)
