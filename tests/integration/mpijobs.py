"""Helpers to launch real MPI jobs from pytest, always with a time bound.

The launcher and the ranks' interpreter come from the environment, so the same
tests run under every MPI (see "Tests" in the README):
- FEDMPI_MPIEXEC: the launcher command, split like a shell line, e.g.
  `mpirun.openmpi --oversubscribe`; default: the `mpiexec` beside this Python
  (the MPICH wheel's), else the one on PATH;
- FEDMPI_PYTHON: the Python the ranks run; default: the one running pytest.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from h5files import attrs, completed_rounds, rounds  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quickstart.yaml"
PYTHON = os.environ.get("FEDMPI_PYTHON") or sys.executable
_BIN = Path(PYTHON).parent
MPIEXEC = shlex.split(os.environ.get("FEDMPI_MPIEXEC", "")) or [
    str(_BIN / "mpiexec") if (_BIN / "mpiexec").exists() else "mpiexec"]


@functools.cache
def mpi_vendor() -> str:
    """'MPICH', 'Open MPI', ...: the MPI library the ranks' mpi4py was built against."""
    res = subprocess.run([PYTHON, "-c", "from mpi4py import MPI; print(MPI.get_vendor()[0])"],
                         capture_output=True, text=True, timeout=60, check=True)
    return res.stdout.strip()


def fedmpi_cmd(n: int, *args: str) -> list[str]:
    return [*MPIEXEC, "-n", str(n), PYTHON, "-m", "fedmpi", "run", *map(str, args)]


def _default_signals() -> None:
    """In the child: SIGINT and SIGQUIT at their defaults. A test runner started in the
    background by a non-interactive shell (`cmd &`, nohup) has them ignored, every child
    inherits that, and bash cannot trap a signal ignored at its entry: jobs/workstation.sh
    would then never see the Ctrl-C its test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "FEDMPI_PROGRESS": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True,
                            preexec_fn=_default_signals)


def finish(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"job did not end within {timeout} s (a hang)\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return finish(start(cmd), timeout)


def wait_for_rounds(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while completed_rounds(path) < n:
        if proc.poll() is not None:
            pytest.fail(f"job ended early (exit {proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not reach {n} rounds in {timeout} s")
        time.sleep(0.2)


RANK_VARS = (b"PMI_RANK", b"OMPI_COMM_WORLD_RANK", b"PMIX_RANK")  # MPICH, Open MPI, PMIx


def rank_pids(out: Path) -> dict[int, int]:
    """{rank: pid} of this machine's `fedmpi run` processes writing `out` (by /proc)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"fedmpi" not in argv or str(out).encode() not in argv:
                continue
            env = dict(kv.split(b"=", 1) for kv in
                       Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
        except OSError:  # gone, or not ours to read
            continue
        rank = next((env[v] for v in RANK_VARS if v in env), None)
        if rank is not None:
            found[int(rank)] = int(pid)
    return found


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (its /proc status SigCgt mask)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False
