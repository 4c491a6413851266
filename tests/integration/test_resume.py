"""Crash safety, graceful interrupt + exact resume, and determinism across worker counts."""

from __future__ import annotations

import os
import signal
import time

import h5py
import numpy as np
import pytest
from mpijobs import QUICK, attrs, fedmpi_cmd, finish, rounds, run, start, wait_for_rounds

from fedmpi.results import load

ROUNDS = 12  # enough that a stop requested after round 2 lands before the end
SET = ["--set", f"rounds={ROUNDS}", "--set", "clients.num_clients=6"]


def global_model(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        g = f["checkpoint/global"]
        return {k: g[k][()] for k in g}


def test_kill_9_mid_round_keeps_every_completed_round(tmp_path):
    out = tmp_path / "crash.h5"
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=200"))
    wait_for_rounds(out, 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mpiexec included
    proc.wait(timeout=30)
    r = rounds(out)  # opens: the file is intact
    assert len(r["round"]) >= 2
    np.testing.assert_array_equal(r["round"], np.arange(len(r["round"])))
    assert attrs(out)["status"] == "running"  # never marked completed


EF = QUICK.parent / "examples" / "error-feedback.yaml"


@pytest.mark.parametrize("config", [QUICK, EF], ids=["paper-pruning", "error-feedback"])
def test_sigusr1_checkpoints_and_resume_is_bit_identical(tmp_path, config):
    """Also with error feedback, whose residuals live on the workers (checkpoint_every 2)."""
    full = tmp_path / "full.h5"
    res = run(fedmpi_cmd(3, config, "--out", full, *SET))
    assert res.returncode == 0, res.stderr

    cut = tmp_path / "cut.h5"
    proc = start(fedmpi_cmd(3, config, "--out", cut, *SET))
    wait_for_rounds(cut, 2, proc)
    os.kill(int(attrs(cut)["server_pid"]), signal.SIGUSR1)
    res = finish(proc, 120)
    assert res.returncode == 75, res.stderr
    a = attrs(cut)
    assert a["status"] == "interrupted"
    done = int(a["completed_rounds"])
    assert 2 <= done < ROUNDS

    res = run(fedmpi_cmd(3, "--resume", cut))
    assert res.returncode == 0, res.stderr
    assert attrs(cut)["status"] == "completed"
    a_full, a_cut = rounds(full), rounds(cut)
    np.testing.assert_array_equal(a_cut["round"], np.arange(ROUNDS))
    np.testing.assert_array_equal(a_full["test_accuracy"], a_cut["test_accuracy"])
    np.testing.assert_array_equal(a_full["up_bytes"], a_cut["up_bytes"])
    g_full, g_cut = global_model(full), global_model(cut)
    assert g_full.keys() == g_cut.keys()
    for k in g_full:
        np.testing.assert_array_equal(g_full[k], g_cut[k], err_msg=k)

    # Both incarnations' messages are kept apart: each has its hellos and its STOPs.
    with h5py.File(cut, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in ("segment", "round", "kind", "sender_bytes")}
        cum = int(f.attrs["cum_wire_bytes"])
    for seg in (0, 1):
        rows = m["segment"] == seg
        assert ((m["kind"] == 4) & (m["round"] == -1) & rows).sum() == 2  # hello per worker
        assert ((m["kind"] == 5) & rows).sum() == 2  # STOP per worker
    assert cum == int(m["sender_bytes"].sum())  # every byte of both segments
    again = run(fedmpi_cmd(3, "--resume", cut))  # a resubmitted finished task is a no-op
    assert again.returncode == 0 and "already completed" in again.stdout


def test_same_seed_same_results_with_one_or_two_workers(tmp_path):
    outs = []
    for n in (2, 3):
        out = tmp_path / f"w{n}.h5"
        res = run(fedmpi_cmd(n, QUICK, "--out", out, "--set", "rounds=3", "--set",
                             "clients.num_clients=6", "--set", "clients.per_round=4"))
        assert res.returncode == 0, res.stderr
        outs.append(out)
    a, b = rounds(outs[0]), rounds(outs[1])
    for col in ("test_accuracy", "test_loss", "train_loss", "up_bytes", "down_bytes",
                "up_nnz", "down_nnz"):
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    ga, gb = global_model(outs[0]), global_model(outs[1])
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)


def test_kill_9_at_start_up_leaves_a_file_that_resume_starts_over(tmp_path):
    """Killed before round 0 ends (Slurm requeue after a node failure, say): the file is
    readable, `--resume` starts the run over (a plain rerun still refuses to replace it)."""
    out = tmp_path / "early.h5"
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=2", "--set",
                            "train.local_epochs=5"))
    deadline = time.monotonic() + 180
    while not out.exists():  # kill the moment the file shows
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the result file never appeared"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    a = attrs(out)  # readable (it used to be 96 bytes HDF5 could not open)
    assert a["status"] == "running" and a["completed_rounds"] == 0
    assert load(out).runs.loc[0, "rounds_recorded"] == 0
    again = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=2"), timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    res = run(fedmpi_cmd(3, "--resume", out))
    assert res.returncode == 0, res.stderr
    assert "no checkpoint yet: starting the run over" in res.stderr
    assert attrs(out)["status"] == "completed" and len(rounds(out)["round"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["early.h5"]


def test_resume_refuses_a_file_its_run_is_still_writing(tmp_path):
    out = tmp_path / "live.h5"
    proc = start(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=400"))
    try:
        wait_for_rounds(out, 1, proc)
        res = run(fedmpi_cmd(2, "--resume", out), timeout=120)
        assert res.returncode == 2
        assert "still running" in res.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
