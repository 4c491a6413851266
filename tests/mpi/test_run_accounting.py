"""A real 2-round run under `mpiexec -n 3`: the HDF5 /messages rows must match,
message by message, what the transport actually sent and received."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from inprocess import run_recorded, shared_tmp

pytestmark = pytest.mark.mpi(min_size=3)


QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


@pytest.mark.timeout(300)
def test_messages_match_what_was_sent(monkeypatch, tmp_path_factory):
    from mpi4py import MPI

    from fedmpi.transport import TAG_HELLO
    from fedmpi.wire import Kind

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    out = d / "acc.h5"
    code, seen = run_recorded(monkeypatch, comm, QUICK, out,
                              ["rounds=2", "clients.num_clients=5", "clients.per_round=3"])
    assert code == 0

    # Every rank checks its own real sizes against the file (read-only).
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
        status = f.attrs["status"]
    assert status == "completed"
    np.testing.assert_array_equal(m["sender_bytes"], m["receiver_bytes"])

    rank = comm.rank
    sent = sorted(n for way, _tag, _peer, n in seen if way == "sent")
    received = sorted(n for way, _tag, _peer, n in seen if way == "received")
    if rank == 0:  # the server sends every DOWN message and receives every UP one
        down_actual, up_actual = sent, received
        file_down = sorted(m["sender_bytes"][m["direction"] == 0].tolist())
        file_up = sorted(m["receiver_bytes"][m["direction"] == 1].tolist())
    else:  # a worker: only the messages of its own link
        down_actual, up_actual = received, sent
        at_me = m["worker"] == rank
        file_down = sorted(m["receiver_bytes"][at_me & (m["direction"] == 0)].tolist())
        file_up = sorted(m["sender_bytes"][at_me & (m["direction"] == 1)].tolist())
    assert down_actual == file_down
    assert up_actual == file_up
    assert len(seen) == len(file_down) + len(file_up)

    # Per-round totals in /rounds agree with /messages.
    for i, rnd in enumerate(r["round"]):
        rows = m["round"] == rnd
        upd = rows & (m["kind"] == Kind.UPDATE)
        mod = rows & (m["kind"] == Kind.MODEL)
        assert r["up_bytes"][i] == m["sender_bytes"][upd].sum()
        assert r["down_bytes"][i] == m["sender_bytes"][mod].sum()
        assert r["participants"][i] == upd.sum() == 3
        assert r["control_bytes"][i] == m["sender_bytes"][rows & ~upd & ~mod].sum()
    assert r["cum_wire_bytes"][-1] == m["sender_bytes"][m["round"] <= r["round"][-1]].sum()
    # Compression is real: model messages are smaller than dense float32 on the wire.
    model_rows = m["kind"] == Kind.MODEL
    assert (m["sender_bytes"][model_rows] < m["dense_bytes"][model_rows]).all()
    assert TAG_HELLO  # hellos are logged as round -1
    assert (m["round"] == -1).sum() == comm.size - 1


@pytest.mark.timeout(300)
def test_high_pruning_sends_far_fewer_bytes(monkeypatch, tmp_path_factory):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    totals = {}
    for theta in (0.0, 0.9):
        out = d / f"theta{theta}.h5"
        code, _ = run_recorded(monkeypatch, comm, QUICK, out, [
            "rounds=2", f"compression.uplink.0.prune.rate={theta}",
            f"compression.downlink.0.prune.rate={theta}"])
        assert code == 0
        with h5py.File(out, "r", locking=False) as f:
            totals[theta] = int(f["rounds"]["up_bytes"][()].sum() + f["rounds"]["down_bytes"][()].sum())
    assert totals[0.9] < 0.35 * totals[0.0], totals
