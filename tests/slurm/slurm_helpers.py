"""Helpers to submit real Slurm jobs from pytest: bounded waits, logs in tmp_path, scancel.

Needs a running cluster (`bash .ci/slurm-up.sh` as root starts a one-node one). Without
`sbatch` or a responding controller the tests skip with the reason -- except under
CI=true, where a missing cluster is a failure: CI must have started it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from h5files import attrs as h5_attrs  # noqa: F401  (re-exported)
from h5files import completed_rounds  # noqa: F401
from h5files import rounds as h5_rounds  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quickstart.yaml"
VENV = Path(sys.executable).parent.parent  # run.sbatch uses $VENV/bin/python: this one
# The quick start with more (fast, ~0.25 s) rounds: long enough to be stopped in the
# middle, short enough for 2 shared cores (~25 s per job, mostly start-up).
ROUNDS = 30
QUICK_SET = ["--set", f"rounds={ROUNDS}"]
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
               "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def cluster_problem() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "sbatch/scontrol not on PATH (start a test cluster: sudo bash .ci/slurm-up.sh)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer: {exc}"
    states = res.stdout.split()
    if res.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no usable Slurm node (sinfo: {res.stdout.strip() or res.stderr.strip()})"
    return None


class Jobs:
    """Submits batch jobs and cancels whatever is still alive at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ids: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        """The job's environment (sbatch exports it); a value None removes a variable."""
        env = {**os.environ, "FEDMPI_DIR": str(ROOT), "VENV": str(VENV),
               "RESULTS_DIR": str(self.tmp / "results"), "FEDMPI_PROGRESS": "0",
               "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}
        return {k: v for k, v in env.items() if v is not None}

    def submit(self, script: str, *args: str, sbatch_opts: tuple[str, ...] = (),
               cwd: Path | None = None, **env: str) -> str:
        # One torch thread per rank unless a test asks (--cpus-per-task): 3 ranks share
        # 2 cores here, and the reference and requeued runs must use the same count.
        cmd = ["sbatch", "--parsable", "--time=15", "--cpus-per-task=1",
               f"--output={self.tmp}/slurm-%x-%j.out",
               *sbatch_opts, str(ROOT / "jobs" / "slurm" / script), *map(str, args)]
        res = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=60,
                             env=self.env(**env))
        assert res.returncode == 0, f"sbatch failed: {res.stderr}"
        job_id = res.stdout.strip().split(";")[0]
        self.ids.append(job_id)
        return job_id

    def logs(self) -> str:
        return "\n".join(f"==> {p.name}\n{p.read_text(errors='replace')}"
                         for p in sorted(self.tmp.glob("slurm-*.out")))

    def cancel_all(self) -> None:
        for job_id in self.ids:
            subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


def wait_rounds(jobs: Jobs, job_id: str, out: Path, rounds: int, timeout: float) -> None:
    """Poll until `out` holds `rounds` completed rounds while the job still runs."""
    deadline = time.monotonic() + timeout
    while completed_rounds(out) < rounds:
        rec = job_records(job_id)
        assert rec and rec[0]["JobState"] in ("PENDING", "RUNNING"), jobs.logs()
        assert time.monotonic() < deadline, f"no {rounds} rounds in time\n" + jobs.logs()
        time.sleep(0.5)


def job_records(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job` records (one per array task) as dicts; [] when unknown."""
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, timeout=30)
    if res.returncode != 0:
        return []
    records = []
    for line in res.stdout.splitlines():
        records.append(dict(m.groups() for m in re.finditer(r"(\w[\w/:]*)=(\S*)", line)))
    return records


def wait_done(jobs: Jobs, job_id: str, timeout: float, n_tasks: int = 1) -> list[dict]:
    """Poll until every (array) task of `job_id` reached a final state; fail on timeout.

    A final state means the batch script has exited too: while it runs, a cancelled job
    shows COMPLETING (and its script could still requeue it).
    """
    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if len(records) >= n_tasks and all(r.get("JobState") in DONE_STATES for r in records):
            return records
        time.sleep(2)
    jobs.cancel_all()
    pytest.fail(f"job {job_id} not done within {timeout} s: "
                f"{[r.get('JobState') for r in records]}\n{jobs.logs()}")


