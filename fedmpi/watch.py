"""`fedmpi watch FILE`: follow a running job through its results file.

The file is reopened read-only (locking=False) every interval rather than kept
open: HDF5 caches metadata per open handle, so only a fresh open sees the rows
rank 0 flushed since. A file that does not exist yet, or is caught mid-write,
is simply tried again next interval.

A run killed with -9 (or whose node died) never marks its file: it stays
`running`. So while the status says running, watch also checks the writer:
rank 0's pid (`server_pid` on `server_host`, else the first of `hosts`) must
still exist when it runs on this host; on another host it cannot be checked,
and a file that has not changed for `--stale` seconds (default 3x the run's
liveness limit: a live run records a round, or fails and says so, well within
that) counts as abandoned. Either way watch says so and exits 1 instead of
waiting forever. A live pid with a stale file (a suspended job) only warns.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from fedmpi.liveness import DEFAULT_TIMEOUT_S, Liveness
from fedmpi.results.fmt import nbytes, percent, seconds
from fedmpi.results.hdf import json_attr, open_read, plain

COLUMNS = ("round", "test_accuracy", "cum_wire_bytes", "wall_s")
STALE_FACTOR = 3.0  # x the run's liveness limit: the default --stale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="results file (.h5) of a running or finished job")
    parser.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between reads (default 2)")
    parser.add_argument("--once", action="store_true", help="print what is there and exit")
    parser.add_argument("--stale", type=_positive_seconds, default=None, metavar="S",
                        help="when rank 0 runs on another host (its pid cannot be checked): "
                             "give up after S seconds without a change to the file (default: "
                             f"{STALE_FACTOR:g} x the run's liveness limit)")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--stale: got {text}; allowed: a number of seconds > 0")
    return value


@dataclass
class Snapshot:
    status: str
    reason: str
    planned: int | None
    rows: dict[str, np.ndarray]
    server_pid: int | None = None
    server_host: str | None = None
    stale_s: float = STALE_FACTOR * DEFAULT_TIMEOUT_S  # default --stale for this run
    mtime: float = 0.0
    world_size: int | None = None


def snapshot(path: str) -> Snapshot:
    """Raises OSError/KeyError/ValueError while the file is missing or inconsistent."""
    mtime = os.stat(path).st_mtime
    with open_read(path) as f:
        g = f["rounds"]
        n = min(g[c].shape[0] for c in COLUMNS)
        cfg = json_attr(f, "config_json", {})
        cfg = cfg if isinstance(cfg, dict) else {}
        planned = cfg.get("rounds")
        rows = {c: g[c][:n] for c in COLUMNS}
        pid = plain(f.attrs.get("server_pid", -1))
        hosts = json_attr(f, "hosts", [])
        host = plain(f.attrs.get("server_host", "")) or (
            hosts[0] if isinstance(hosts, list) and hosts else "")
        run = cfg.get("run")
        timeout = run.get("timeout_s") if isinstance(run, dict) else None
        if not isinstance(timeout, (int, float)) or not timeout > 0:  # older or odd files
            timeout = DEFAULT_TIMEOUT_S
        slowest = float(np.max(rows["wall_s"])) if n else 0.0
        return Snapshot(
            status=str(plain(f.attrs.get("status", "running"))),
            reason=str(plain(f.attrs.get("failure_reason", ""))),
            planned=planned if isinstance(planned, int) else None,
            rows=rows,
            server_pid=_positive(pid),
            server_host=str(host) or None,
            stale_s=STALE_FACTOR * Liveness(timeout_s=float(timeout),
                                            slowest_round_s=slowest).limit(),
            mtime=mtime,
            world_size=_positive(plain(f.attrs.get("world_size", -1))),
        )


def _positive(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, unreaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    try:  # a zombie answers kill(0) too, e.g. in a container whose init never reaps
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def check_writer(snap: Snapshot, *, stale_s: float | None = None, now: float | None = None,
                 host: str | None = None) -> tuple[bool, str] | None:
    """Is the writer of a `running` file alive? None when nothing is wrong, else
    (dead, why): dead when its pid is gone on this host, or when it cannot be
    checked (another host) and the file has not changed for `stale_s`; not dead
    (a warning) when the pid is alive here but the file is stale all the same
    (the job is suspended or stopped, or the pid was reused)."""
    host = host or socket.gethostname()
    now = time.time() if now is None else now
    local = snap.server_pid is not None and snap.server_host == host
    if local and not pid_alive(snap.server_pid):
        return True, f"its writer, rank 0 (pid {snap.server_pid} on {host}), no longer exists"
    idle = now - snap.mtime
    limit = snap.stale_s if stale_s is None else stale_s
    if idle <= limit:
        return None
    if local:
        return False, (f"the file has not changed for {seconds(idle)}, yet rank 0 (pid "
                       f"{snap.server_pid}) exists: is the job stopped or suspended?")
    where = (f"pid {snap.server_pid or '?'} on {snap.server_host or 'an unknown host'}")
    return True, (f"the file has not changed for {seconds(idle)} (> {seconds(limit)}) and its "
                  f"writer (rank 0, {where}) cannot be checked from here: taken to be gone")


def line(snap: Snapshot, i: int) -> str:
    r = snap.rows
    total = f"/{snap.planned}" if snap.planned else ""
    # Count of recorded rounds first (whatever base the round index uses), then the index.
    return (f"{i + 1}{total} done  round {int(r['round'][i])}  "
            f"acc {percent(float(r['test_accuracy'][i]))}  "
            f"wire {nbytes(float(r['cum_wire_bytes'][i]))}  {seconds(float(r['wall_s'][i]))}")


def follow(path: str, *, interval: float = 2.0, once: bool = False,
           out: TextIO | None = None, sleep=time.sleep, stale: float | None = None,
           now=time.time) -> int:
    out = out or sys.stdout
    printed = 0
    waiting_said = warned = False
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
        verdict = check_writer(snap, stale_s=stale, now=now())
        if verdict and _finished_meanwhile(path):
            continue  # it ended between the read and the check: report how, next pass
        if verdict and verdict[0]:
            print(f"status: running, but {verdict[1]}: the run is dead after {n} rounds "
                  f"(killed?); continue it with `mpiexec -n {snap.world_size or 'N'} python -m "
                  f"fedmpi run --resume {path}`", file=out, flush=True)
            return 1
        if verdict and not warned:
            print(f"warning: {verdict[1]}", file=out, flush=True)
            warned = True
        if once:
            print(f"status: running, {n} rounds so far", file=out, flush=True)
            return 0
        sleep(interval)


def _finished_meanwhile(path: str) -> bool:
    try:
        return snapshot(path).status != "running"
    except (OSError, KeyError, ValueError, RuntimeError):
        return False


def main(args: argparse.Namespace) -> int:
    try:
        return follow(args.file, interval=args.interval, once=args.once, stale=args.stale)
    except KeyboardInterrupt:
        return 130
