"""`fedmpi run`'s lock phase (rank 0, during the configuration check), without MPI."""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedmpi import run
from fedmpi.errors import ConfigError
from fedmpi.results import synthetic
from fedmpi.results.lock import lock_path

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def args_for(out, **kw) -> argparse.Namespace:
    values = dict(config=str(QUICK), out=out and str(out), overwrite=False, resume=None,
                  overrides=[])
    values.update(kw)
    return argparse.Namespace(**values)


def test_the_lock_names_the_run_that_holds_it(tmp_path):
    out = tmp_path / "x.h5"
    w = synthetic.write_run(out, rounds=1, finish=None)  # a live writer: this process
    args = args_for(out, overwrite=True)
    plan = run._plan(args, 3)
    with pytest.raises(ConfigError) as info:
        run._lock_output(args, plan, 3)
    msg = str(info.value)
    assert "'--out'" in msg and str(out) in msg
    assert f"pid {os.getpid()} on host {socket.gethostname()} is still running it" in msg
    assert f"kill -USR1 {os.getpid()}" in msg and ".x.h5.lock" in msg
    w.finish("completed")


def test_a_file_written_between_planning_and_locking_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "x.h5"
    args = args_for(out)
    plan = run._plan(args, 3)  # the file does not exist yet ...
    synthetic.write_run(out, rounds=1)  # ... another run was quicker: planned again, refused
    with pytest.raises(ConfigError, match="'--out'.*does not exist yet"):
        run._lock_output(args, plan, 3)
    assert not lock_path(out).exists()  # released again
    # A resumed file another run completed meanwhile: the other ranks' plan is stale.
    other = tmp_path / "y.h5"
    plan = run._plan(args_for(other), 3)
    monkeypatch.setattr(run, "_plan", lambda a, n: {**plan, "already_completed": True})
    with pytest.raises(ConfigError, match="another run just wrote it: run the command again"):
        run._lock_output(args_for(other), plan, 3)
    assert not lock_path(other).exists()


def test_the_lock_is_held_for_the_writer_and_released_after(tmp_path):
    out = tmp_path / "x.h5"
    args = args_for(out)
    plan = run._lock_output(args, run._plan(args, 3), 3)
    assert plan["lock"].held and lock_path(out).exists()
    assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    run._unlock(plan)
    assert "lock" not in plan and not lock_path(out).exists()


def test_without_flock_a_live_run_on_this_host_is_still_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.h5"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        w = synthetic.write_run(out, rounds=1, finish=None)
        w.set_attrs(server_pid=sleeper.pid, hosts=[socket.gethostname()])
        w.flush()
        w.close()  # status stays running: as if that run still wrote it, without a lock

        def no_flock(fd, op):
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(fcntl, "flock", no_flock)
        args = args_for(out, overwrite=True)
        with pytest.raises(ConfigError, match=f"pid {sleeper.pid} on this host is still running"):
            run._lock_output(args, run._plan(args, 3), 3)
        assert "no file locking here" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    run._unlock(run._lock_output(args, run._plan(args, 3), 3))  # that run is gone now


def test_resume_of_a_file_mid_write_says_its_run_holds_it(tmp_path):
    """A read racing the live writer can fail midway (HDF5 'len exceeds EOA'); that is its
    run still writing, not a damaged file, and `--resume` must say so before the lock phase."""
    from fedmpi.results.lock import WriterLock

    out = tmp_path / "live.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # what a half-written file reads as
    lock = WriterLock.acquire(out)  # the live run (its own open file description)
    try:
        with pytest.raises(ConfigError) as info:
            run._plan(args_for(None, config=None, resume=str(out)), 3)
        msg = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()} is still running it" in msg
        assert f"kill -USR1 {os.getpid()}" in msg
    finally:
        lock.release()
    with pytest.raises(ConfigError, match="a readable fedmpi result file; rerun its config"):
        run._plan(args_for(None, config=None, resume=str(out)), 3)  # no writer: damaged


def test_resume_with_its_config_ignores_only_how_the_run_executes(tmp_path):
    """--resume FILE CONFIG: the CONFIG may differ from the stored one only in keys that
    say how the run executes (an upgrade changed run.eval_batch_size's default, say)."""
    from fedmpi import config as cfgmod

    stored, _ = cfgmod.load(str(QUICK), ["run.eval_batch_size=1000", "run.threads=3"])
    resolved = json.loads(stored.to_json())
    run._refuse_changes(tmp_path / "x.h5", stored, resolved, args_for(None))  # no error
    with pytest.raises(ConfigError, match="'rounds'.*the value stored in"):
        run._refuse_changes(tmp_path / "x.h5", stored, resolved,
                            args_for(None, overrides=["rounds=99"]))
