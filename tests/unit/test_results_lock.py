"""One writer per results file; a file readable from the moment it exists; stale
temporaries of dead runs cleaned up, never those of live ones."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import fedmpi
from fedmpi.results import (
    ResultsError,
    ResultsExistError,
    ResultsLockedError,
    ResultsWriter,
    load,
    read_checkpoint,
    synthetic,
)
from fedmpi.results.lock import WriterLock, lock_path

HOST = socket.gethostname()
ROOT = os.path.dirname(os.path.dirname(fedmpi.__file__))  # however pytest was started


def _python(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(path, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------- the lock


@pytest.mark.parametrize("second", ["plain", "overwrite", "resume"])
def test_a_second_writer_is_refused_and_names_the_holder(tmp_path, second):
    path = tmp_path / "run.h5"
    w = synthetic.write_run(path, rounds=2, finish=None)  # open, holding the lock
    before = path.stat().st_mtime_ns, path.stat().st_size
    with pytest.raises(ResultsLockedError) as info:
        ResultsWriter(path, attrs={}, overwrite=second == "overwrite", resume=second == "resume")
    msg = str(info.value)
    assert str(path) in msg and f"pid {os.getpid()} on host {HOST}" in msg, msg
    assert info.value.holder["pid"] == os.getpid()
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.h5.lock", "run.h5"]
    w.finish("completed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]  # lock file removed
    ResultsWriter(path, attrs={}, resume=True).finish("completed")  # free again


def test_lock_of_another_process_holds_until_it_dies(tmp_path):
    path = tmp_path / "x.h5"
    proc = _python(f"""
        import time
        from fedmpi.results.lock import WriterLock
        lock = WriterLock.acquire({str(path)!r})
        print("locked", flush=True)
        time.sleep(120)
    """, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsLockedError, match=f"pid {proc.pid} on host {HOST}"):
            ResultsWriter(path, attrs={})
        assert not path.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert lock_path(path).exists()  # left behind by kill -9, but no longer locked
    ResultsWriter(path, attrs={}).finish("completed")
    assert load(path).runs.loc[0, "status"] == "completed"


def test_without_flock_the_lock_says_so_and_excludes_nobody(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = WriterLock.acquire(tmp_path / "nfs.h5")
    assert not lock.supported and not lock.held and "No locks available" in lock.reason
    w = ResultsWriter(tmp_path / "nfs.h5", attrs={}, lock=lock)
    w.finish("completed")
    assert load(tmp_path / "nfs.h5").runs.loc[0, "status"] == "completed"


def test_a_lock_file_removed_under_a_taker_is_not_trusted(tmp_path, monkeypatch):
    path = tmp_path / "r.h5"
    a = WriterLock.acquire(path)
    stale = os.open(lock_path(path), os.O_RDWR)  # a taker opened the file (inode X) ...
    a.release()  # ... the holder removed it and let go ...
    b = WriterLock.acquire(path)  # ... and a third process holds a new one (inode Y)
    real_open, opened = os.open, []

    def opening(p, flags, mode=0o777):
        opened.append(p)
        return stale if len(opened) == 1 else real_open(p, flags, mode)

    monkeypatch.setattr(os, "open", opening)
    with pytest.raises(ResultsLockedError):  # flock on X succeeds, but X is not the file
        WriterLock.acquire(path)
    assert len(opened) == 2
    monkeypatch.undo()
    b.release()
    assert not lock_path(path).exists()


# ------------------------------------------------------ readable from the start


def test_a_run_killed_at_start_up_leaves_a_readable_file(tmp_path):
    path = tmp_path / "early.h5"
    proc = _python(f"""
        import os, json
        from fedmpi.results import ResultsWriter
        w = ResultsWriter({str(path)!r}, attrs=dict(name="early", seed=3,
                          config_json=json.dumps({{"rounds": 5}})))
        os.kill(os.getpid(), 9)  # before any round, any flush of the caller
    """)
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    run = load(path).runs.iloc[0]  # the fedmpi of before left 96 unreadable bytes
    assert run["status"] == "running" and run["rounds_recorded"] == 0
    assert run["name"] == "early" and run["seed"] == 3 and run["rounds"] == 5
    with pytest.raises(ResultsError, match="no complete checkpoint"):
        read_checkpoint(path)
    # A restart (what --resume does for a file without checkpoint) replaces it.
    w = ResultsWriter(path, attrs={"name": "again"}, overwrite=True)
    w.flush()
    w.finish("completed")
    assert load(path).runs.loc[0, "name"] == "again"


def test_a_kill_while_the_skeleton_is_built_leaves_no_file(tmp_path):
    path = tmp_path / "half.h5"
    proc = _python(f"""
        import os
        from fedmpi.results import writer
        writer.ResultsWriter._publish = lambda self: os.kill(os.getpid(), 9)
        writer.ResultsWriter({str(path)!r}, attrs={{}})
    """)
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert not path.exists()  # nothing half-made under the real name ...
    tmp = tmp_path / f".half.h5.{proc.pid}.{HOST}.tmp"
    assert tmp.exists()
    w = ResultsWriter(path, attrs={})  # ... and the next run is not refused
    assert w.stale_removed == [tmp] and not tmp.exists()
    w.finish("completed")


def test_overwrite_killed_before_a_round_keeps_the_old_file(tmp_path):
    path = tmp_path / "over.h5"
    synthetic.write_run(path, rounds=3)
    proc = _python(f"""
        import os
        from fedmpi.results import ResultsWriter
        ResultsWriter({str(path)!r}, attrs={{"name": "new"}}, overwrite=True)
        os.kill(os.getpid(), 9)
    """)
    proc.communicate(timeout=60)
    assert proc.returncode == -9
    assert load(path).runs.loc[0, "completed_rounds"] == 3  # the old results, intact
    tmp = tmp_path / f".over.h5.{proc.pid}.{HOST}.tmp"
    assert tmp.exists()  # itself complete and readable
    assert load(tmp).runs.loc[0, "name"] == "new"
    w = ResultsWriter(path, attrs={"name": "newer"}, overwrite=True)
    assert w.stale_removed == [tmp]
    w.close()  # no round: the old file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["over.h5"]


def test_stale_temporaries_of_dead_pids_on_this_host_only_are_removed(tmp_path):
    path = tmp_path / "over.h5"
    synthetic.write_run(path, rounds=1)
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        names = {
            "dead": f".over.h5.{dead}.{HOST}.tmp",
            "legacy_dead": f".over.h5.{dead}.tmp",  # the name older versions used
            "live": f".over.h5.{sleeper.pid}.{HOST}.tmp",
            "legacy_live": f".over.h5.{sleeper.pid}.tmp",
            "other_host": f".over.h5.{dead}.elsewhere.example.tmp",
            "other_file": f".over.h5x.{dead}.{HOST}.tmp",
            "not_ours": ".over.h5.notapid.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        w = ResultsWriter(path, attrs={}, overwrite=True)
        w.close()
        left = {p.name for p in tmp_path.iterdir()}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in w.stale_removed) == sorted([names["dead"],
                                                              names["legacy_dead"]])
    assert left == {"over.h5"} | {names[k] for k in ("live", "legacy_live", "other_host",
                                                     "other_file", "not_ours")}


def test_plain_creation_never_replaces_a_file_made_meanwhile(tmp_path, monkeypatch):
    """The skeleton is linked into place, so a file that appeared since the check wins."""
    from fedmpi.results import writer

    path = tmp_path / "race.h5"
    real = writer.ResultsWriter._publish

    def racing(self):
        path.write_bytes(b"someone else's")
        real(self)

    monkeypatch.setattr(writer.ResultsWriter, "_publish", racing)
    with pytest.raises(ResultsExistError):
        ResultsWriter(path, attrs={})
    assert path.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.h5"]  # no temp, no lock
