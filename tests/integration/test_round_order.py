"""A round under MPI whatever the placement and the arrival order of its updates.

Deterministic mode must give the same bytes (results and checkpoint) with updates
delayed at random (`FEDMPI_TEST_DELAY`, a test-only hook of the worker), another
number of worker ranks (another placement) and any reorder window; the arrival-order
mode must give the same model within float tolerance. And 200 clients per round over
2 workers: every message accounted exactly, the clients spread by their work.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from mpijobs import QUICK, fedmpi_cmd, finish, rounds, start

from fedmpi.wire import Kind

pytestmark = pytest.mark.timeout(600)

SHORT = ["--set", "rounds=2", "--set", "run.checkpoint_every=1"]


def _run(tmp_path, name, n, *sets, delay=0.0):
    out = tmp_path / f"{name}.h5"
    env = {"FEDMPI_TEST_DELAY": str(delay)} if delay else {}
    args = [QUICK, "--out", out, *SHORT]
    for s in sets:
        args += ["--set", s]
    res = finish(start(fedmpi_cmd(n, *args), env=env), 300)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _global(path):
    with h5py.File(path, "r", locking=False) as f:
        g = f["checkpoint"]["global"]
        return {k: g[k][()] for k in g}


def test_arrival_order_and_placement_do_not_change_results(tmp_path):
    strict = _run(tmp_path, "strict", 3, "run.reorder_window=0")
    shuffled = _run(tmp_path, "shuffled", 4, "run.reorder_window=2", delay=0.08)
    a, b = rounds(strict), rounds(shuffled)
    for key in ("test_accuracy", "test_loss", "train_loss", "up_bytes", "down_bytes"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ga, gb = _global(strict), _global(shuffled)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert np.array_equal(ga[k], gb[k]), k

    # arrival order (non-deterministic mode): the same model within float tolerance
    loose = _run(tmp_path, "loose", 3, "run.deterministic=false", delay=0.08)
    gl = _global(loose)
    for k in ga:
        np.testing.assert_allclose(gl[k], ga[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_200_clients_over_2_workers_exact_accounting(tmp_path):
    out = _run(tmp_path, "many", 3, "clients.num_clients=200", "clients.per_round=200",
               "train.local_epochs=1", "data.partition.min_samples=1")
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        status = f.attrs["status"]
    assert status == "completed"
    np.testing.assert_array_equal(m["sender_bytes"], m["receiver_bytes"])
    r = rounds(out)
    for rnd in (0, 1):
        this = m["round"] == rnd
        upd, mod = this & (m["kind"] == Kind.UPDATE), this & (m["kind"] == Kind.MODEL)
        assert sorted(m["client"][upd].tolist()) == list(range(200))
        assert sorted(m["client"][mod].tolist()) == list(range(200))
        # each client's MODEL and UPDATE go to the same rank: the round's placement
        where = dict(zip(m["client"][mod].tolist(), m["worker"][mod].tolist()))
        assert dict(zip(m["client"][upd].tolist(), m["worker"][upd].tolist())) == where
        assert int(r["up_bytes"][rnd]) == int(m["sender_bytes"][upd].sum())
        assert int(r["participants"][rnd]) == 200
    # balanced by work: the two ranks' sample counts differ by at most one client's
    with h5py.File(out, "r", locking=False) as f:
        samples = f["clients"]["samples"][()]
    upd0 = (m["round"] == 0) & (m["kind"] == Kind.UPDATE)
    load = {w: int(samples[m["client"][upd0][m["worker"][upd0] == w]].sum()) for w in (1, 2)}
    assert abs(load[1] - load[2]) <= int(samples.max()), load


def test_bench_round_reports_the_time_split(tmp_path):
    import json
    import subprocess
    import sys

    from mpijobs import ROOT

    out = tmp_path / "rows.json"
    res = subprocess.run([sys.executable, "-m", "fedmpi", "bench", "round", "--config",
                          str(QUICK), "--set", "rounds=3", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FEDMPI_PROGRESS": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "round efficiency" in res.stdout
    rows = json.loads(out.read_text())
    per_round, total = rows[:-1], rows[-1]
    assert [r["round"] for r in per_round] == [1, 2]  # round 0 (start-up) left out
    assert total["wall_s"] == pytest.approx(sum(r["wall_s"] for r in per_round))
    assert total["efficiency"] == pytest.approx(total["compute_s"] / (2 * total["wall_s"]))
    assert all(r["compute_s"] > 0 and r["wall_s"] > 0 for r in per_round)
