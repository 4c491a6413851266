"""The batch scripts on a real (one-node) Slurm with the real `fedmpi run`.

1. run.sbatch completes the quick start (srun --mpi=pmi2 launcher);
2. a 2-task sweep array completes both grid points and `fedmpi report` reads them;
3. a job stopped with SIGUSR1 mid-run checkpoints, requeues itself, resumes and ends
   with exactly the accuracy of the uninterrupted run (mpiexec launcher, so both
   launchers are covered);
4. a plain `scancel` ends the job CANCELLED, not requeued, the file `interrupted`; a
   job submitted by hand from another folder with `--resume` finishes it, to the
   uninterrupted run's accuracy;
5. with --time=1 the job stops a quarter of a minute before the limit (not at its
   start), requeues only after progress, and runs with --cpus-per-task torch threads;
6. a wrong VENV fails the job at once with one line that says what to set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from slurm_helpers import (
    QUICK,
    QUICK_SET,
    ROOT,
    ROUNDS,
    Jobs,
    completed_rounds,
    h5_attrs,
    h5_rounds,
    DONE_STATES,
    job_records,
    wait_done,
    wait_rounds,
)

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

JOB_TIMEOUT = 420  # one quick-start job on 2 shared cores, queueing included


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """An uninterrupted run.sbatch job: (result file, scontrol record, Jobs)."""
    jobs = Jobs(tmp_path_factory.mktemp("reference"))
    try:
        job_id = jobs.submit("run.sbatch", QUICK, *QUICK_SET)
        (record,) = wait_done(jobs, job_id, JOB_TIMEOUT)
        yield jobs.tmp / "results" / f"quickstart-{job_id}.h5", record, jobs
    finally:
        jobs.cancel_all()


def test_run_sbatch_completes(reference):
    out, record, jobs = reference
    assert record["JobState"] == "COMPLETED", jobs.logs()
    assert record["ExitCode"] == "0:0"
    a = h5_attrs(out)
    assert a["status"] == "completed"
    assert int(a["completed_rounds"]) == ROUNDS
    np.testing.assert_array_equal(h5_rounds(out)["round"], np.arange(ROUNDS))


def test_sweep_array_runs_every_task_and_report_reads_them(jobs):
    sweep = jobs.tmp / "seeds.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "seeds",
        "base": str(QUICK),
        "set": {"rounds": 2, "clients.num_clients": 6, "train.local_epochs": 1},
        "seeds": [0, 1],
    }))
    count = subprocess.run([sys.executable, "-m", "fedmpi", "sweep", str(sweep), "--count"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert count.returncode == 0, count.stderr
    n = int(count.stdout)
    assert n == 2
    job_id = jobs.submit("sweep.sbatch", sweep, sbatch_opts=(f"--array=0-{n - 1}",))
    records = wait_done(jobs, job_id, JOB_TIMEOUT, n_tasks=n)
    assert [r["JobState"] for r in records] == ["COMPLETED"] * n, jobs.logs()

    out_dir = jobs.tmp / "results" / "seeds"
    files = sorted(out_dir.glob("*.h5"))
    assert [f.name for f in files] == ["seed=0.h5", "seed=1.h5"]
    for f in files:
        a = h5_attrs(f)
        assert a["status"] == "completed" and int(a["completed_rounds"]) == 2, f
    assert (out_dir / "seed=1.yaml").is_file()  # the resolved config, next to its result

    cmd = [sys.executable, "-m", "fedmpi", "report", *map(str, files), "--out", jobs.tmp / "rep"]
    report = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr
    assert any((jobs.tmp / "rep").iterdir())


def test_usr1_checkpoints_requeues_resumes_to_the_same_result(jobs, reference):
    ref_out = reference[0]
    job_id = jobs.submit("run.sbatch", QUICK, *QUICK_SET, LAUNCHER="mpiexec")
    out = jobs.tmp / "results" / f"quickstart-{job_id}.h5"

    # Signal once round 0 is on disk (signal handlers are installed by then) and well
    # before the last round, the way --signal=B:USR1@T does near the time limit.
    deadline = time.monotonic() + JOB_TIMEOUT
    while completed_rounds(out) < 1:
        rec = job_records(job_id)
        assert rec and rec[0]["JobState"] in ("PENDING", "RUNNING"), jobs.logs()
        assert time.monotonic() < deadline, "no round finished in time\n" + jobs.logs()
        time.sleep(0.5)
    sig = subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], capture_output=True,
                         text=True, timeout=30)
    assert sig.returncode == 0, sig.stderr

    # The script requeues the job; Slurm holds a requeued job cred_expire + 1 s before it
    # may start again (16 s with .ci/slurm-up.sh's AuthInfo=cred_expire=15).
    while True:
        rec = job_records(job_id)[0]
        if int(rec.get("Restarts", 0)) >= 1:
            break
        assert rec["JobState"] not in ("COMPLETED", "FAILED", "CANCELLED"), \
            f"job ended ({rec['JobState']}) instead of requeueing\n{jobs.logs()}"
        assert time.monotonic() < deadline, "job was not requeued in time\n" + jobs.logs()
        time.sleep(0.5)
    assert h5_attrs(out)["status"] == "interrupted"
    stopped_at = int(h5_attrs(out)["completed_rounds"])
    assert 1 <= stopped_at < ROUNDS, "the signal should stop the run before its end"

    (record,) = wait_done(jobs, job_id, JOB_TIMEOUT)
    logs = jobs.logs()
    assert record["JobState"] == "COMPLETED", logs
    assert int(record["Restarts"]) == 1
    assert "requeueing job" in logs and "restart 1 on" in logs
    a = h5_attrs(out)
    assert a["status"] == "completed" and int(a["completed_rounds"]) == ROUNDS
    got, want = h5_rounds(out), h5_rounds(ref_out)
    np.testing.assert_array_equal(got["round"], np.arange(ROUNDS))
    np.testing.assert_array_equal(got["test_accuracy"], want["test_accuracy"])
    assert got["test_accuracy"][-1] == want["test_accuracy"][-1]


def test_plain_scancel_cancels_for_good_and_the_file_resumes_by_hand(jobs, reference):
    """Issue 10: `scancel JOBID` used to end in a requeue (the run exits 75 on SIGTERM)."""
    ref_out = reference[0]
    job_id = jobs.submit("run.sbatch", QUICK, *QUICK_SET)
    out = jobs.tmp / "results" / f"quickstart-{job_id}.h5"
    wait_rounds(jobs, job_id, out, 1, JOB_TIMEOUT)
    subprocess.run(["scancel", job_id], check=True, capture_output=True, timeout=30)
    (record,) = wait_done(jobs, job_id, 180)  # final state: the batch script has exited
    logs = jobs.logs()
    assert record["JobState"] == "CANCELLED", logs
    assert int(record["Restarts"]) == 0, logs
    assert "stopped for good by SIGTERM" in logs and "requeueing job" not in logs
    # What is guaranteed: rank 0 gets SIGTERM straight from Slurm and has KillWait (30 s
    # here) to finish the round and checkpoint -- ample for these rounds.
    a = h5_attrs(out)
    assert a["status"] == "interrupted", logs
    stopped_at = int(a["completed_rounds"])
    assert 1 <= stopped_at < ROUNDS

    # By hand: from another folder, a relative path, no FEDMPI_DIR (the job finds the
    # repository from the submitted script's path).
    elsewhere = jobs.tmp / "elsewhere"
    elsewhere.mkdir()
    again = jobs.submit("run.sbatch", "--resume", os.path.relpath(out, elsewhere), cwd=elsewhere,
                        FEDMPI_DIR=None)
    (record,) = wait_done(jobs, again, JOB_TIMEOUT)
    logs = jobs.logs()
    assert record["JobState"] == "COMPLETED", logs
    assert f"fedmpi from {ROOT}/fedmpi/__init__.py" in logs  # this checkout's fedmpi ran
    a = h5_attrs(out)
    assert a["status"] == "completed" and int(a["completed_rounds"]) == ROUNDS
    got, want = h5_rounds(out), h5_rounds(ref_out)
    np.testing.assert_array_equal(got["round"], np.arange(ROUNDS))
    np.testing.assert_array_equal(got["test_accuracy"], want["test_accuracy"])


def _log_seconds(logs: str, marker: str) -> int:
    """Seconds of the day of the first job-log line containing `marker`."""
    for line in logs.splitlines():
        m = re.match(r"\[(\d\d):(\d\d):(\d\d) fedmpi-job", line)
        if m and marker in line:
            h, mi, sec = map(int, m.groups())
            return h * 3600 + mi * 60 + sec
    raise AssertionError(f"no log line with {marker!r}:\n{logs}")


def test_short_time_limit_stops_before_the_limit_and_does_not_loop(jobs):
    """Issue 10: with --time <= 5 min a fixed --signal=B:USR1@300 stopped every
    incarnation at its start, one round each, for ever."""
    job_id = jobs.submit("run.sbatch", QUICK, "--set", "rounds=5000",
                         sbatch_opts=("--time=1", "--cpus-per-task=2"))
    out = jobs.tmp / "results" / f"quickstart-{job_id}.h5"
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:  # until the first incarnation is over: requeued, or ended for good
        rec = job_records(job_id)[0]
        if int(rec.get("Restarts", 0)) >= 1 or rec["JobState"] in DONE_STATES:
            break
        assert time.monotonic() < deadline, "first incarnation not over\n" + jobs.logs()
        time.sleep(1)
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)  # not 5000 rounds
    wait_done(jobs, job_id, 180)
    logs = jobs.logs()

    m = re.search(r"time left (\d+)s: stopping to requeue (\d+)s before the limit", logs)
    assert m, logs
    left, margin = int(m.group(1)), int(m.group(2))
    assert left <= 60 and margin == left // 4, logs
    waited = (_log_seconds(logs, "got SIGUSR1") - _log_seconds(logs, "restart 0 on")) % 86400
    assert waited >= left - margin - 5, f"stopped {waited} s after the start\n{logs}"
    a = h5_attrs(out)
    if "requeueing job" in logs:  # a requeue only after this incarnation completed rounds
        assert a["status"] == "interrupted" and int(a["completed_rounds"]) >= 1, logs
    else:
        assert int(job_records(job_id)[0]["Restarts"]) == 0, logs
    # --cpus-per-task reaches torch: run.threads (null in the quick start) follows it
    assert json.loads(a["config_json"])["run"]["threads"] == min(2, os.cpu_count() or 1)


def test_a_missing_venv_fails_the_job_at_once_with_one_line(jobs):
    job_id = jobs.submit("run.sbatch", QUICK, VENV="/nonexistent")
    (record,) = wait_done(jobs, job_id, 120)
    logs = jobs.logs()
    assert record["JobState"] == "FAILED" and record["ExitCode"] == "2:0", logs
    lines = [line for line in logs.splitlines() if line and not line.startswith("==>")]
    assert len(lines) == 1 and "VENV=/nonexistent has no bin/python: set VENV" in lines[0], logs
