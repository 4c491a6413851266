"""`fedmpi bench round`: where a round's time goes, and how much of it the workers train.

Runs a short real run (`mpiexec -n RANKS python -m fedmpi run CONFIG`) and reads
its /rounds rows. The round efficiency is Σ training / (workers × wall): the
share of the worker ranks' time spent in `train_local`. A round's `wall_s` is the
time from its start to the next round's start (the last: to its row's write), so
the rounds' walls add up to the run's loop time even when the evaluation of a
round overlaps the next one (see "How a round works" in the README). The first
`--skip` rounds are left out (start-up: data on the device, first kernels); the
efficiency is also given without the last round, whose evaluation has no next round
to overlap with.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

SPLIT = ("compute_s", "encode_s", "decode_s", "aggregate_s", "evaluate_s", "wait_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/paper/cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=None,
                        metavar="KEY=VALUE",
                        help="config overrides (default: train.model=resnet12 rounds=6)")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks (server + workers)")
    parser.add_argument("--skip", type=int, default=1, help="first rounds left out")
    parser.add_argument("--mpiexec", default=None,
                        help="launcher command (default: the mpiexec beside this Python)")
    parser.add_argument("--out", default=None, help="keep the result file here")


def run(args: argparse.Namespace) -> list[dict]:
    import h5py
    import numpy as np

    if args.ranks < 2:
        raise SystemExit(f"--ranks must be >= 2 (a server and a worker), got {args.ranks}")
    overrides = args.overrides or ["train.model=resnet12", "rounds=6"]
    launcher = shlex.split(args.mpiexec) if args.mpiexec else [_mpiexec()]
    with tempfile.TemporaryDirectory(prefix="fedmpi-bench-round-") as tmp:
        out = Path(args.out or Path(tmp) / "round.h5")
        cmd = [*launcher, "-n", str(args.ranks), sys.executable, "-m", "fedmpi", "run",
               args.config, "--out", str(out), "--overwrite"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "FEDMPI_PROGRESS": "0"}
        subprocess.run(cmd, check=True, env=env)
        with h5py.File(out, "r", locking=False) as f:
            r = {k: f["rounds"][k][()] for k in f["rounds"].dtype.names} \
                if isinstance(f["rounds"], h5py.Dataset) else \
                {k: f["rounds"][k][()] for k in f["rounds"]}
    workers = args.ranks - 1
    keep = r["round"] >= args.skip
    if not keep.any():
        raise SystemExit(f"--skip {args.skip} leaves no round of {len(r['round'])}")
    rows = []
    for i in np.flatnonzero(keep):
        row = {"round": int(r["round"][i]), "wall_s": float(r["wall_s"][i])}
        row.update({k: float(r[k][i]) for k in SPLIT})
        row["efficiency"] = row["compute_s"] / (workers * row["wall_s"])
        rows.append(row)
    total = {"round": "all", "wall_s": sum(x["wall_s"] for x in rows)}
    total.update({k: sum(x[k] for x in rows) for k in SPLIT})
    total["efficiency"] = total["compute_s"] / (workers * total["wall_s"])
    total.update(workers=workers, config=args.config, overrides=" ".join(overrides))
    # The last round evaluates at once (no next round to overlap it with): the steady
    # state is the rounds before it.
    steady = rows[:-1] or rows
    total["steady_efficiency"] = (sum(x["compute_s"] for x in steady)
                                  / (workers * sum(x["wall_s"] for x in steady)))
    total["mean_wall_s"] = total["wall_s"] / len(rows)
    return rows + [total]


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def print_rows(rows: list[dict]) -> None:
    total = rows[-1]
    print(f"{total['config']} ({total['overrides']}), {total['workers']} worker rank(s)")
    print(f"{'round':>5} {'wall_s':>7} " + " ".join(f"{k:>11}" for k in SPLIT)
          + f" {'efficiency':>10}")
    for r in rows:
        print(f"{r['round']:>5} {r['wall_s']:7.2f} " + " ".join(f"{r[k]:11.2f}" for k in SPLIT)
              + f" {100 * r['efficiency']:9.1f}%")
    print(f"round efficiency Σ training / (workers × wall) = {100 * total['efficiency']:.1f}% "
          f"(without the last round: {100 * total['steady_efficiency']:.1f}%); "
          f"mean round wall {total['mean_wall_s']:.2f} s")
