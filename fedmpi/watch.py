"""`fedmpi watch FILE`: follow a running job through its results file.

The file is reopened read-only (locking=False) every interval rather than kept
open: HDF5 caches metadata per open handle, so only a fresh open sees the rows
rank 0 flushed since. A file that does not exist yet, or is caught mid-write,
is simply tried again next interval.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from fedmpi.results.fmt import nbytes, percent, seconds
from fedmpi.results.hdf import json_attr, open_read, plain

COLUMNS = ("round", "test_accuracy", "cum_wire_bytes", "wall_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="results file (.h5) of a running or finished job")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between reads (default 2)")
    parser.add_argument("--once", action="store_true", help="print what is there and exit")


@dataclass
class Snapshot:
    status: str
    reason: str
    planned: int | None
    rows: dict[str, np.ndarray]


def snapshot(path: str) -> Snapshot:
    """Raises OSError/KeyError/ValueError while the file is missing or inconsistent."""
    with open_read(path) as f:
        g = f["rounds"]
        n = min(g[c].shape[0] for c in COLUMNS)
        cfg = json_attr(f, "config_json", {})
        planned = cfg.get("rounds") if isinstance(cfg, dict) else None
        return Snapshot(
            status=str(plain(f.attrs.get("status", "running"))),
            reason=str(plain(f.attrs.get("failure_reason", ""))),
            planned=planned if isinstance(planned, int) else None,
            rows={c: g[c][:n] for c in COLUMNS},
        )


def line(snap: Snapshot, i: int) -> str:
    r = snap.rows
    total = f"/{snap.planned}" if snap.planned else ""
    # Count of recorded rounds first (whatever base the round index uses), then the index.
    return (f"{i + 1}{total} done  round {int(r['round'][i])}  "
            f"acc {percent(float(r['test_accuracy'][i]))}  "
            f"wire {nbytes(float(r['cum_wire_bytes'][i]))}  {seconds(float(r['wall_s'][i]))}")


def follow(path: str, *, interval: float = 2.0, once: bool = False,
           out: TextIO | None = None, sleep=time.sleep) -> int:
    out = out or sys.stdout
    printed = 0
    waiting_said = False
    while True:
        try:
            snap = snapshot(path)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            if once:
                print(f"fedmpi watch: cannot read {path} yet ({exc})", file=out)
                return 1
            if not waiting_said:
                print(f"waiting for {path} ...", file=out, flush=True)
                waiting_said = True
            sleep(interval)
            continue
        n = len(snap.rows["round"])
        if n < printed:  # a resume truncated rows: show them again from there
            printed = n
        for i in range(printed, n):
            print(line(snap, i), file=out, flush=True)
        printed = n
        if snap.status != "running":
            reason = f" ({snap.reason})" if snap.reason else ""
            print(f"status: {snap.status}{reason} after {n} rounds", file=out, flush=True)
            return 0 if snap.status == "completed" else 1
        if once:
            print(f"status: running, {n} rounds so far", file=out, flush=True)
            return 0
        sleep(interval)


def main(args: argparse.Namespace) -> int:
    try:
        return follow(args.file, interval=args.interval, once=args.once)
    except KeyboardInterrupt:
        return 130
