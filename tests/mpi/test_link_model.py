"""The link model in a real run: every MODEL/UPDATE row's /messages.sim_s is exactly
latency + 8 x bytes / bandwidth of its direction, control messages have none, and each
round's /rounds.sim_s is its slowest client's download + upload."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from inprocess import run_recorded, shared_tmp

pytestmark = pytest.mark.mpi(min_size=3)

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
UP_BPS, DOWN_BPS, LATENCY = 1_000_000, 8_000_000, 0.02


@pytest.mark.timeout(300)
def test_simulated_times_follow_bytes_bandwidth_and_latency(monkeypatch, tmp_path_factory):
    from mpi4py import MPI

    from fedmpi.wire import Kind

    comm = MPI.COMM_WORLD
    out = shared_tmp(comm, tmp_path_factory) / "link.h5"
    code, _ = run_recorded(monkeypatch, comm, QUICK, out, [
        "rounds=2", "clients.num_clients=5", "clients.per_round=3", "link.kind=fixed",
        f"link.up_bps={UP_BPS}", f"link.down_bps={DOWN_BPS}", f"link.latency_s={LATENCY}"])
    assert code == 0
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
    up, model = m["kind"] == Kind.UPDATE, m["kind"] == Kind.MODEL
    expect = np.full(len(m["kind"]), np.nan)
    expect[up] = LATENCY + 8 * m["sender_bytes"][up] / UP_BPS
    expect[model] = LATENCY + 8 * m["sender_bytes"][model] / DOWN_BPS
    np.testing.assert_allclose(m["sim_s"], expect, rtol=1e-12, equal_nan=True)
    assert np.isnan(m["sim_s"][~(up | model)]).all()
    for i, rnd in enumerate(r["round"]):
        rows = (m["round"] == rnd) & (up | model) & (m["client"] >= 0)
        per_client = {}
        for c, t in zip(m["client"][rows], m["sim_s"][rows]):
            per_client[int(c)] = per_client.get(int(c), 0.0) + float(t)
        assert r["sim_s"][i] == pytest.approx(max(per_client.values()), rel=1e-12)
