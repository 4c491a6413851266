"""Command line: `fedmpi <command> ...`.

Each command lives in its own module exposing `add_arguments(parser)` and
`main(args) -> int`; this file only maps names to modules, imported lazily so
that `fedmpi inspect` does not pay for importing torch or MPI.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("fedmpi.run", "run one experiment (under mpiexec / srun)"),
    "sweep": ("fedmpi.sweep", "expand a sweep file into tasks; run one task"),
    "report": ("fedmpi.report", "plots and paper-style tables from result files"),
    "inspect": ("fedmpi.inspect", "human summary of one result file"),
    "watch": ("fedmpi.watch", "follow a running job's result file"),
    "bench": ("fedmpi.bench", "benchmarks (codec, ...)"),
    "list": ("fedmpi.listing", "what is registered: compressors, stages, strategies, datasets, "
             "models"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmpi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the module that will run
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        return _dispatch(argv)
    # `run`: the stop signals are handled from before MPI_Init (importing mpi4py) until
    # the process exits, so no signal at the edges can kill a rank (see fedmpi.signals).
    from fedmpi import signals

    signals.install()
    try:
        return _dispatch(argv)
    finally:
        signals.release()


def _dispatch(argv: list[str]) -> int:
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)
