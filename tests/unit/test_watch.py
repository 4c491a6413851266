"""fedmpi watch: follows rounds, stops when the run ends, waits for a missing file, and
exits when the run writing the file is gone (killed with -9)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from fedmpi.cli import main as cli
from fedmpi.results import synthetic
from fedmpi.watch import follow, pid_alive, snapshot


def test_watch_finished_file(tmp_path, capsys):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=3)
    assert cli(["watch", str(path), "--interval", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:4] for ln in lines[:3]] == [
        ["1/3", "done", "round", "0"], ["2/3", "done", "round", "1"], ["3/3", "done", "round", "2"]]
    assert "acc" in lines[0] and "kB" in lines[2]
    assert lines[-1] == "status: completed after 3 rounds"


def test_watch_running_file_once_and_failed(tmp_path):
    path = tmp_path / "run.h5"
    writer = synthetic.write_run(path, rounds=2, finish=None)  # still open, status running
    out = io.StringIO()
    assert follow(str(path), once=True, out=out) == 0
    assert out.getvalue().splitlines()[-1] == "status: running, 2 rounds so far"
    writer.finish("failed", "rank 2 died")
    out = io.StringIO()
    assert follow(str(path), interval=0, out=out) == 1
    assert out.getvalue().splitlines()[-1] == "status: failed (rank 2 died) after 2 rounds"


def test_watch_waits_for_the_file(tmp_path):
    path = tmp_path / "later.h5"
    out = io.StringIO()
    assert follow(str(path), once=True, out=out) == 1

    def sleep(_):  # the job creates its file while we wait
        if not path.exists():
            synthetic.write_run(path, rounds=1)

    out = io.StringIO()
    assert follow(str(path), interval=5, out=out, sleep=sleep) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"waiting for {path} ..." and lines[-1].startswith("status: completed")


# ---------------------------------------------------------------- a writer that is gone


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (no such process now)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def give_up_after(n: int):
    """A sleep for follow() that fails the test if it is called more than n times."""
    calls = []

    def sleep(_):
        calls.append(1)
        if len(calls) > n:
            raise AssertionError("fedmpi watch kept waiting on a run that is gone")

    return sleep


def running_file(path, **attrs):
    writer = synthetic.write_run(path, rounds=2, finish=None)
    writer.set_attrs(**attrs)
    writer.flush()
    return writer


def test_watch_exits_when_the_writer_pid_is_gone_on_this_host(tmp_path):
    path = tmp_path / "killed.h5"
    pid = dead_pid()
    running_file(path, server_pid=pid, server_host=socket.gethostname(), world_size=3)
    out = io.StringIO()
    assert follow(str(path), interval=0, out=out, sleep=give_up_after(3)) == 1
    last = out.getvalue().splitlines()[-1]
    assert last == (f"status: running, but its writer, rank 0 (pid {pid} on "
                    f"{socket.gethostname()}), no longer exists: the run is dead after 2 rounds "
                    f"(killed?); continue it with `mpiexec -n 3 python -m fedmpi run --resume "
                    f"{path}`")
    out = io.StringIO()  # --once says the same
    assert follow(str(path), once=True, out=out) == 1
    assert "no longer exists" in out.getvalue()


def test_watch_falls_back_to_the_first_host_of_older_files(tmp_path):
    path = tmp_path / "old.h5"
    pid = dead_pid()
    running_file(path, server_pid=pid, hosts=[socket.gethostname(), "node1", "node2"])
    out = io.StringIO()
    assert follow(str(path), interval=0, out=out, sleep=give_up_after(3)) == 1
    assert f"rank 0 (pid {pid} on {socket.gethostname()}), no longer exists" in out.getvalue()


def test_a_killed_but_unreaped_writer_counts_as_gone(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie
    try:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not pid_alive(proc.pid)
        path = tmp_path / "zombie.h5"
        running_file(path, server_pid=proc.pid, server_host=socket.gethostname())
        out = io.StringIO()
        assert follow(str(path), interval=0, out=out, sleep=give_up_after(3)) == 1
        assert "no longer exists" in out.getvalue()
    finally:
        proc.wait()
    assert pid_alive(os.getpid())


def test_a_live_writer_on_this_host_is_followed_even_when_quiet(tmp_path):
    path = tmp_path / "live.h5"
    writer = running_file(path, server_pid=os.getpid(), server_host=socket.gethostname())
    long_ago = time.time() - 10 * 3600
    os.utime(path, (long_ago, long_ago))  # stale, yet its pid exists: stopped or suspended?
    calls = []

    def sleep(_):
        calls.append(1)
        if len(calls) == 3:  # it goes on and finishes
            writer.finish("completed", "")

    out = io.StringIO()
    assert follow(str(path), interval=0, out=out, sleep=sleep) == 0
    lines = out.getvalue().splitlines()
    assert sum(ln.startswith("warning: the file has not changed for 10h00m, yet rank 0 (pid "
                             f"{os.getpid()}) exists") for ln in lines) == 1  # said once
    assert lines[-1] == "status: completed after 2 rounds"


def test_a_writer_on_another_host_is_given_up_when_the_file_is_stale(tmp_path):
    path = tmp_path / "remote.h5"
    running_file(path, server_pid=os.getpid(), server_host="elsewhere")
    out = io.StringIO()  # fresh file: followed (the pid cannot be checked from here)
    with pytest.raises(AssertionError, match="kept waiting"):
        follow(str(path), interval=0, out=out, sleep=give_up_after(3))
    assert "warning" not in out.getvalue()
    # Default --stale: 3 x the run's liveness limit, max(600 s, 10 x slowest round) here.
    snap = snapshot(str(path))
    assert snap.stale_s == 3 * 600
    now = snap.mtime + 1801  # just past it
    out = io.StringIO()
    assert follow(str(path), interval=0, out=out, sleep=give_up_after(3), now=lambda: now) == 1
    assert out.getvalue().splitlines()[-1].startswith(
        "status: running, but the file has not changed for 30m01s (> 30m00s) and its writer "
        f"(rank 0, pid {os.getpid()} on elsewhere) cannot be checked from here: taken to be gone")
    out = io.StringIO()  # --stale overrides the default
    assert follow(str(path), once=True, out=out, stale=60.0, now=lambda: snap.mtime + 61) == 1
    assert "has not changed for 1m01s (> 1m00s)" in out.getvalue()
    assert cli(["watch", str(path), "--once", "--stale", "1e9"]) == 0


def test_the_default_stale_limit_follows_the_run_timeout_and_its_slowest_round(tmp_path):
    path = tmp_path / "slow.h5"
    writer = synthetic.write_run(path, rounds=2, finish=None, run={"timeout_s": 50})
    slowest = float(max(rounds_of(path)["wall_s"]))
    assert snapshot(str(path)).stale_s == 3 * max(50, 10 * slowest)
    writer.finish("completed", "")


def rounds_of(path):
    with h5py.File(path, "r", locking=False) as f:
        return {k: f["rounds"][k][()] for k in f["rounds"]}
