"""`fedmpi bench <name>`: micro-benchmarks that return rows; `main` prints them.

A benchmark is a module in this package exposing `add_arguments(parser)`,
`run(args) -> list[dict]` and `print_rows(rows)`; register it in BENCHMARKS. An MPI
benchmark returns None on every rank but 0, which then neither prints nor writes.
"""

from __future__ import annotations

import argparse
import importlib
import json

BENCHMARKS: dict[str, tuple[str, str]] = {
    "codec": ("fedmpi.bench.codec", "compression pipelines on a ResNet-18-sized model"),
    "train": ("fedmpi.bench.train", "local-training images/s of one process on a device"),
    "transport": ("fedmpi.bench.transport",
                  "latency and bandwidth of the suite's MPI path vs plain mpi4py (2 ranks)"),
    "round": ("fedmpi.bench.round",
              "a short run's round time split and efficiency Σ training / (workers × wall)"),
    "scale": ("fedmpi.bench.scale", "server peak RSS and time per round at 10..1,000 "
              "clients per round"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        importlib.import_module(module).add_arguments(p)
        p.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.bench][0])
    rows = module.run(args)
    if rows is None:  # not rank 0 of an MPI benchmark
        return 0
    module.print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
