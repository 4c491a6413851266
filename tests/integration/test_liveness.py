"""Hangs: a stopped rank (`kill -STOP`) ends the job fast with a message naming the rank,
the round and what was awaited; the file says so (or, when rank 0 itself is stopped,
stays `running` with a dead writer) and `--resume` completes it. `fedmpi watch` exits
when the run writing a file was killed with -9."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpijobs import QUICK, ROOT, attrs, fedmpi_cmd, finish, rounds, run, start, wait_for_rounds

from fedmpi.watch import pid_alive

TIMEOUT = 10  # run.timeout_s: rank 0 gives a silent worker 10 s, a worker gives rank 0 20 s
ROUNDS = 40
SET = ["--set", f"rounds={ROUNDS}", "--set", f"run.timeout_s={TIMEOUT}"]
# what a worker says when rank 0 is silent (the rank in group 1 is the worker's)
WORKER_SAYS = (r"LivenessError: rank \1: (no .+? from rank 0|rank 0 did not take the .+?|"
               r"rank 0 did not finish sending the .+?) "
               r"in round (\d+) within ([\d.]+) s")
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # MPICH/Hydra, Open MPI


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        key, _, value = item.decode("utf-8", "replace").partition("=")
        if key in RANK_ENV and value.isdigit():
            return int(value)
    return None


def rank_pids(launcher: int, size: int, timeout: float = 90) -> dict[int, int]:
    """{rank: pid} of a job's ranks: the launcher's descendants, by the rank their MPI sets
    in their environment (Hydra puts each rank in a session of its own, so process groups
    cannot find them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and (ppid := _ppid(d.name)) is not None:
                children.setdefault(ppid, []).append(int(d.name))
        found, todo = {}, list(children.get(launcher, []))
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            if (rank := _rank(pid)) is not None and rank not in found:
                found[rank] = pid
        if len(found) == size:
            return found
        time.sleep(0.2)
    pytest.fail(f"could not find the {size} ranks of job {launcher} (found {found})")


def kill_all(pids) -> None:
    """Whatever a failed test left behind (a stopped rank would stay forever)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def leftovers(pids, wait_s: float = 15) -> list[int]:
    """The pids still alive after `wait_s` (the launcher may exit before they are gone)."""
    deadline = time.monotonic() + wait_s
    while (alive := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def watch(path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "fedmpi", "watch", str(path), "--interval",
                               "0.2"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fedmpi watch did not exit within {timeout} s: {exc.stdout}")


def stop_rank_after_two_rounds(out: Path, rank: int):
    """Start a run, SIGSTOP `rank` once two rounds are recorded; returns the finished job,
    the seconds from the stop to the job's end and every rank's pid."""
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, *SET))
    pids = {}
    try:
        pids = rank_pids(proc.pid, 3)
        wait_for_rounds(out, 2, proc)
        os.kill(pids[rank], signal.SIGSTOP)
        stopped = time.monotonic()
        res = finish(proc, 150)
        return res, time.monotonic() - stopped, pids
    finally:
        if proc.poll() is None:
            kill_all([proc.pid])
        left = leftovers(pids.values())
        if left:
            kill_all(left)
            pytest.fail(f"ranks still alive 15 s after the job ended: {left} of {pids}")


def resume_completes(out: Path) -> None:
    res = run(fedmpi_cmd(3, "--resume", out))
    assert res.returncode == 0, res.stderr
    assert attrs(out)["status"] == "completed"
    np.testing.assert_array_equal(rounds(out)["round"], np.arange(ROUNDS))


def test_a_stopped_worker_is_named_by_rank_0_and_the_failed_file_resumes(tmp_path):
    out = tmp_path / "stopped-worker.h5"
    res, took, _ = stop_rank_after_two_rounds(out, rank=2)
    assert res.returncode != 0
    # Updates are received from any rank as they come (the reorder window), so rank 0
    # names every client still owing and the ranks they were placed on: rank 2 only.
    m = re.search(r"rank 0 failed: LivenessError: (rank 0: no (.+?) from rank(?:\(s\))? 2 in "
                  r"round (\d+) within ([\d.]+) s)", res.stderr)
    assert m, res.stderr
    awaited, rnd, limit = m.group(2), int(m.group(3)), float(m.group(4))
    assert re.fullmatch(r"UPDATE of client(\(s\))? \d+(, \d+)*|REPORT", awaited), awaited
    assert limit >= TIMEOUT
    # rank 0's wait may have begun up to a round before the stop; then the limit, then Abort
    assert limit - 5 < took < limit + 30, (took, limit)
    a = attrs(out)
    assert a["status"] == "failed"
    assert m.group(1) in a["failure_reason"]
    assert rnd == a["completed_rounds"] >= 2  # the round in progress; earlier ones kept
    resume_completes(out)


def test_a_stopped_rank_0_ends_the_job_and_the_file_resumes(tmp_path):
    out = tmp_path / "stopped-server.h5"
    res, took, pids = stop_rank_after_two_rounds(out, rank=0)
    assert res.returncode != 0
    m = re.search(rf"rank ([12]) failed: {WORKER_SAYS}", res.stderr)
    assert m, res.stderr
    rnd, limit = int(m.group(3)), float(m.group(4))
    assert limit >= 2 * TIMEOUT  # workers give rank 0 twice as long
    # the limit, then the worker's FAIL grace (rank 0 cannot react), then Abort
    assert limit - 5 < took < limit + 30, (took, limit)
    a = attrs(out)
    assert int(a["server_pid"]) == pids[0] and not pid_alive(pids[0])
    assert rnd in (a["completed_rounds"], a["completed_rounds"] + 1)
    w = watch(out)
    assert w.returncode == 1
    if a["status"] == "failed":
        # Open MPI's mpirun continues (SIGCONT) and terminates a rank before it kills it:
        # rank 0 wakes up, reads the worker's FAIL message and records it.
        assert re.fullmatch(rf"RemoteFailure: rank ([12]) failed: rank \1: {WORKER_SAYS}.*",
                            a["failure_reason"]), a["failure_reason"]
        assert w.stdout.splitlines()[-1].startswith("status: failed (RemoteFailure: rank ")
    else:
        # MPICH's mpiexec kills it at once. Only rank 0 writes the file, so it stays
        # `running` with every completed round, as after a kill -9; its writer is gone.
        assert a["status"] == "running" and a["failure_reason"] == ""
        assert f"rank 0 (pid {pids[0]} on " in w.stdout and "no longer exists" in w.stdout
    resume_completes(out)


def test_a_suspended_job_resumes_instead_of_failing(tmp_path):
    """Every rank stopped for longer than any limit, then continued (Slurm's `scontrol
    suspend` / `resume`): the time a rank was stopped itself does not count as silence."""
    out = tmp_path / "suspended.h5"
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, *SET))
    pids = {}
    try:
        pids = rank_pids(proc.pid, 3)
        wait_for_rounds(out, 2, proc)
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)
        time.sleep(2 * TIMEOUT + 5)  # past every rank's limit (workers: 2 x TIMEOUT)
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)
        res = finish(proc, 150)
    finally:
        kill_all(leftovers(pids.values(), wait_s=0) if proc.poll() is not None
                 else [proc.pid, *pids.values()])
    assert res.returncode == 0, res.stderr
    assert attrs(out)["status"] == "completed"
    np.testing.assert_array_equal(rounds(out)["round"], np.arange(ROUNDS))


def test_watch_exits_when_the_run_was_killed_with_9(tmp_path):
    out = tmp_path / "killed.h5"
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, "--set", f"rounds={ROUNDS * 4}"))
    try:
        pids = rank_pids(proc.pid, 3)
        wait_for_rounds(out, 2, proc)
    finally:
        kill_all([proc.pid])
    kill_all(pids.values())
    proc.wait(timeout=30)
    assert attrs(out)["status"] == "running"
    t0 = time.monotonic()
    w = watch(out)
    assert w.returncode == 1, w.stdout
    last = w.stdout.splitlines()[-1]
    assert last.startswith(f"status: running, but its writer, rank 0 (pid {pids[0]} on ")
    assert "no longer exists" in last and f"--resume {out}" in last
    assert time.monotonic() - t0 < 30
