"""`fedmpi report FILES... --out DIR`: plots and the paper-style table.

Writes accuracy_vs_round.png, accuracy_vs_mb.png, pareto.png, time_split.png,
table.md, table.csv (Table II: theta x E) and runs.csv (one row per file), each
atomically. The table and the Pareto plot use completed runs only unless
--all-runs; the curves show every run given, so a job still running can be
compared with finished ones.

The compressor zoo (`zoo.py`, `methods.py`), from the same runs: accuracy_vs_bytes.png
(accuracy vs cumulative total, uplink and downlink bytes, one line per method
config), ranking.md / ranking.csv (methods ranked by the bytes to reach the dense
run's accuracy - 1 point, with codec seconds per round) and zoo-table.csv (one
row per method config; `--zoo-table PATH` writes it to PATH as well).

Pruning × quantization (`heatmap.py`, when the runs vary an uplink quantize stage):
heatmap_quant_ef-on.png / heatmap_quant_ef-off.png (Δ accuracy and uplink compression
over θ × value bits) and quant.md / quant.csv.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--zoo-table", metavar="PATH",
                        help="also write the zoo table (one row per method config, ratios vs "
                             "the dense run) to PATH, e.g. results/zoo-table.csv")


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


def report(files, out: Path, *, all_runs: bool = False, ignore=(),
           zoo_table: Path | None = None) -> list[Path]:
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
    timed = plots.accuracy_vs_time(rounds, labels, groups, out / "accuracy_vs_time.png")
    if timed is not None:  # runs with a link model (`link:`): simulated transfer times
        written.append(timed)
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
    written += _zoo(chosen, rounds, res.messages, res.configs, out, zoo_table)
    from fedmpi.report import heatmap

    written += heatmap.write(chosen, res.configs, out)
    return written


def _zoo(chosen, rounds, messages, configs, out: Path, zoo_table: Path | None) -> list[Path]:
    """The compressor-zoo outputs (see fedmpi/report/zoo.py) of the chosen runs."""
    from fedmpi.report import plots, zoo
    from fedmpi.report.output import write_text

    tab = zoo.build(chosen, rounds, configs, messages)
    settings = _setting_differences(chosen, configs)
    text = (zoo.NOTE.format(pp=zoo.TARGET_PP) + "\n\n" + zoo.markdown(tab, settings)
            if len(tab) else "No completed runs; use --all-runs to rank them anyway.\n")
    csv = zoo.zoo_csv(tab) if len(tab) else ",".join(zoo.TABLE_COLUMNS) + "\n"
    written = [plots.accuracy_vs_bytes_by_link(tab, out / "accuracy_vs_bytes.png"),
               write_text(out / "ranking.md", text),
               write_text(out / "ranking.csv", zoo.ranking_csv(tab) if len(tab) else ""),
               write_text(out / "zoo-table.csv", csv)]
    if zoo_table is not None:
        written.append(write_text(Path(zoo_table), csv))
    return written


def _setting_differences(chosen, configs) -> list[dict]:
    """Per zoo setting index, the setting keys whose values differ between settings."""
    from fedmpi.report.methods import setting_of, with_defaults

    seen: dict[str, dict] = {}
    for run in chosen["run"]:
        flat = setting_of(with_defaults(configs[run]))
        seen.setdefault(json.dumps(flat, sort_keys=True, default=str), flat)
    settings = list(seen.values())
    keys = {k for s in settings for k in s}
    varying = sorted(k for k in keys if len({repr(s.get(k)) for s in settings}) > 1)
    return [{k: s.get(k) for k in varying} for s in settings]


def main(args: argparse.Namespace) -> int:
    try:
        written = report(args.files, Path(args.out), all_runs=args.all_runs, ignore=args.ignore,
                         zoo_table=args.zoo_table)
    except ResultsError as exc:
        print(f"fedmpi report: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
