"""`fedmpi report FILES... --out DIR`: plots and the paper-style table.

Writes accuracy_vs_round.png, accuracy_vs_mb.png, pareto.png, time_split.png,
table.md, table.csv (Table II: theta x E) and runs.csv (one row per file), each
atomically. The table and the Pareto plot use completed runs only unless
--all-runs; the curves show every run given, so a job still running can be
compared with finished ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedmpi.results import ResultsError, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="results files, globs or directories")
    parser.add_argument("--out", default="report", metavar="DIR",
                        help="output directory (default ./report)")
    parser.add_argument("--all-runs", action="store_true",
                        help="also put running/failed/interrupted runs in the table")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="config key (or prefix) never to split table rows on; repeatable")


def _labels(table_runs, configs, others) -> tuple[dict[str, str], dict[str, int]]:
    """Legend text per run and a group index per (theta, E, others) for colours."""
    from fedmpi.report.table import EPOCHS_KEY, theta_of

    labels, groups, index = {}, {}, {}
    for run, seed in zip(table_runs["run"], table_runs["seed"]):
        flat = configs[run]
        key = f"θ={theta_of(flat):g} E={flat.get(EPOCHS_KEY)}" + "".join(
            f" {k.rsplit('.', 1)[-1]}={flat.get(k)}" for k in others)
        groups[run] = index.setdefault(key, len(index))
        labels[run] = f"{key} s{seed}"
    return labels, groups


def _in_order(runs, rounds, configs):
    """Runs sorted by (θ, E, other config, seed) so legends and bars read in order."""
    from fedmpi.report.table import EPOCHS_KEY, theta_of

    def key(run_and_seed):
        run, seed = run_and_seed
        flat = configs[run]
        return (theta_of(flat), flat.get(EPOCHS_KEY) or 0, str(sorted(flat.items())), seed)

    order = [run for run, _ in sorted(zip(runs["run"], runs["seed"]), key=key)]
    pos = {run: i for i, run in enumerate(order)}
    runs = runs.iloc[runs["run"].map(pos).argsort(kind="stable")].reset_index(drop=True)
    rounds = rounds.iloc[rounds["run"].map(pos).argsort(kind="stable")].reset_index(drop=True)
    return runs, rounds


def report(files, out: Path, *, all_runs: bool = False, ignore=()) -> list[Path]:
    from fedmpi.report import plots, table
    from fedmpi.report.output import write_text

    res = load(files)
    runs, rounds = _in_order(res.runs, res.rounds, res.configs)
    chosen = runs if all_runs else runs[runs["status"] == "completed"]
    tab, others = table.build(chosen, res.configs, ignore=ignore) if len(chosen) else (None, [])
    _, all_others = table.build(runs, res.configs, ignore=ignore)
    labels, groups = _labels(runs, res.configs, all_others)
    written = [
        plots.accuracy_vs_round(rounds, labels, groups, out / "accuracy_vs_round.png"),
        plots.accuracy_vs_mb(rounds, labels, groups, out / "accuracy_vs_mb.png"),
        plots.pareto(chosen, labels, groups, out / "pareto.png"),
        plots.time_split(rounds, labels, out / "time_split.png"),
    ]
    skipped = len(runs) - len(chosen)
    note = (f"{len(chosen)} of {len(runs)} runs"
            + (f" ({skipped} not completed, left out; --all-runs includes them)" if skipped else "")
            + ". Accuracy: final test accuracy, mean ± std over seeds (n). Δ: accuracy minus the "
            "θ = 0 row with the same E and other keys, in percentage points. Message sizes: "
            "mean wire bytes of one uplink update / downlink model message. Compression: "
            "dense float32 bytes / wire bytes of model messages. Total MB: all wire bytes "
            "(up + down + control) per run, 1 MB = 10^6 bytes.")
    if tab is None:
        write_text(out / "table.md", f"No completed runs among {len(runs)} files; "
                                     "use --all-runs to tabulate them anyway.\n")
        write_text(out / "table.csv", "")
    else:
        write_text(out / "table.md", table.markdown(tab, others, note=note))
        write_text(out / "table.csv", tab.to_csv(index=False))
    write_text(out / "runs.csv", runs.to_csv(index=False))
    written += [out / "table.md", out / "table.csv", out / "runs.csv"]
    return written


def main(args: argparse.Namespace) -> int:
    try:
        written = report(args.files, Path(args.out), all_runs=args.all_runs, ignore=args.ignore)
    except ResultsError as exc:
        print(f"fedmpi report: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
