"""Helpers to launch real `mpiexec` jobs from pytest, always with a time bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from h5files import attrs, completed_rounds, rounds  # noqa: F401  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quickstart.yaml"
BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else "mpiexec"


def fedmpi_cmd(n: int, *args: str) -> list[str]:
    return [MPIEXEC, "-n", str(n), sys.executable, "-m", "fedmpi", "run", *map(str, args)]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "FEDMPI_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


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
