"""Client state where it lives, under `mpiexec -n 3` (issue 12): each worker rank keeps
its clients' compressor state in its own files, none of it crosses MPI.

- an error-feedback run (configs/examples/error-feedback.yaml, shrunk) sends no MEMORY
  message in any round (only the start-up run identity, counted in infra_bytes, not
  in up/down/control); at the stop its workers' files are the ones the retention
  policy names (the checkpoint round and the one before), with every hosted client;
  a completed run leaves none;
- interrupted and resumed, a run with a stateful compressor (top-k with feedback;
  PowerSGD, whose state is not model-shaped) and a stateful strategy (FedAdam) is
  bit-identical to one never stopped;
- on --resume a missing or foreign state file stops every rank with exit 2 and a
  message naming the file, before the result file is touched;
- `--overwrite` removes the replaced run's state files, even when the new run keeps none.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from inprocess import shared_tmp

pytestmark = pytest.mark.mpi(min_size=3)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EF = CONFIGS / "examples" / "error-feedback.yaml"
QUICK = CONFIGS / "quickstart.yaml"
SMALL = ["rounds=6", "clients.num_clients=6", "clients.per_round=3", "run.checkpoint_every=2"]


def _run(comm, config, out, overrides, *, resume=False, overwrite=False):
    from fedmpi import run

    args = argparse.Namespace(config=None if resume else str(config),
                              out=None if resume else str(out), overwrite=overwrite,
                              resume=str(out) if resume else None,
                              overrides=[] if resume else overrides)
    code = run.main(args)
    comm.Barrier()
    return code


def _interrupted(monkeypatch, comm, config, out, overrides, after: int):
    """Run until a graceful stop requested while round `after` is accounted (as SIGUSR1;
    the round's row itself may be written later, with the overlapped evaluation)."""
    from fedmpi import server, signals

    orig_account = server.Server._account

    def account(self, rnd, *a):
        out = orig_account(self, rnd, *a)
        if rnd == after:
            self.stop.requested = True
        return out

    monkeypatch.setattr(server.Server, "_account", account)
    try:
        return _run(comm, config, out, overrides)
    finally:
        monkeypatch.setattr(server.Server, "_account", orig_account)
        signals.install().requested = False  # as in a fresh process


def _hosted(rank: int, num_clients: int = 6, workers: int = 2) -> list[int]:
    return [c for c in range(num_clients) if 1 + c % workers == rank]


@pytest.mark.timeout(300)
def test_error_feedback_state_stays_on_the_workers(monkeypatch, tmp_path_factory):
    from mpi4py import MPI

    from fedmpi import run, signals
    from fedmpi.results import clientstate
    from fedmpi.wire import Kind

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    out = d / "ef.h5"
    assert _interrupted(monkeypatch, comm, EF, out, SMALL, after=3) == signals.EXIT_INTERRUPTED
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
        assert f.attrs["status"] == "interrupted" and int(f.attrs["checkpoint_round"]) == 3
        assert not [k for k in f["checkpoint/memory"] if k.startswith("client_")]
    memory = m["kind"] == Kind.MEMORY
    # Only the start-up run identity, one per worker, down; no state in any round.
    assert memory.sum() == 2 and (m["round"][memory] == -1).all()
    assert (m["direction"][memory] == 0).all() and (m["client"][memory] == -1).all()
    assert r["infra_bytes"][0] == m["sender_bytes"][memory].sum() > 0
    assert (r["infra_bytes"][1:] == 0).all()
    for i, rnd in enumerate(r["round"]):  # infra is in no FL column, but in the total
        this = m["round"] == rnd
        fl = m["kind"] != Kind.MEMORY
        assert (r["up_bytes"][i] + r["down_bytes"][i] + r["control_bytes"][i]
                == m["sender_bytes"][this & fl].sum())
    assert r["cum_wire_bytes"][-1] == m["sender_bytes"][m["round"] <= r["round"][-1]].sum()

    ident, ckpt = run.run_id_of(out)
    assert ckpt == 3
    for rank in (1, 2):  # the policy: the checkpoint round and the one before, per rank
        assert list(clientstate.generations(out, rank)) == [1, 3]
        states = clientstate.read_states(clientstate.state_path(out, rank, 3), run=ident,
                                         rank=rank, round=3)
        assert sorted(states) == _hosted(rank)
        trained = [c for c in states if states[c]]  # sampled at least once by round 3
        assert trained and all(np.isfinite(v).all() for c in trained
                               for v in states[c].values())
        assert any(np.abs(v).sum() > 0 for c in trained for v in states[c].values())
    assert not list(d.glob(".*.tmp"))

    assert _run(comm, EF, out, [], resume=True) == 0
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in ("kind", "round", "segment")}
        assert f.attrs["status"] == "completed"
    # The resumed segment sent no MEMORY at all (the workers read their own files).
    assert not ((m["kind"] == Kind.MEMORY) & (m["segment"] == 1)).any()
    assert clientstate.all_files(out) == []  # a completed run keeps no state files
    assert not [p for p in os.listdir(d) if p.endswith(".lock")]


RESUMABLE = {
    "topk-fedadam": ["compression.uplink={topk: {fraction: 0.1}}",
                     "strategy={fedadam: {lr: 0.01}}"],
    "powersgd-fedadam": ["compression.uplink={powersgd: {rank: 2}}",
                         "strategy={fedadam: {lr: 0.01}}"],
}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("extra", RESUMABLE.values(), ids=RESUMABLE.keys())
def test_resume_is_bit_identical_with_state_in_worker_files(monkeypatch, tmp_path_factory,
                                                             extra):
    from mpi4py import MPI

    from fedmpi import signals
    from fedmpi.results import read_checkpoint

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    overrides = SMALL + ["compression.target=update", "compression.downlink=[]",
                         "run.checkpoint_every=4", *extra]
    assert _run(comm, QUICK, d / "full.h5", overrides) == 0
    # A stop seen in round 1 ends the run after round 2, no checkpoint_every round: the
    # workers are told to save their clients' state in round 2 (ASSIGN SAVE_STATE).
    assert _interrupted(monkeypatch, comm, QUICK, d / "cut.h5", overrides,
                        after=1) == signals.EXIT_INTERRUPTED
    assert _run(comm, QUICK, d / "cut.h5", [], resume=True) == 0
    with h5py.File(d / "full.h5", "r", locking=False) as a, \
            h5py.File(d / "cut.h5", "r", locking=False) as b:
        assert b.attrs["status"] == "completed" and int(b.attrs["resumed_from_round"]) == 2
        for k in ("test_accuracy", "test_loss", "train_loss", "up_bytes", "down_bytes",
                  "up_nnz"):
            np.testing.assert_array_equal(a["rounds"][k][()], b["rounds"][k][()], err_msg=k)
    full, cut = read_checkpoint(d / "full.h5"), read_checkpoint(d / "cut.h5")
    assert full.memories["strategy"]  # FedAdam's moments are checkpointed
    for k in full.global_state:
        np.testing.assert_array_equal(full.global_state[k], cut.global_state[k], err_msg=k)
    for owner in full.memories:
        for k in full.memories[owner]:
            np.testing.assert_array_equal(full.memories[owner][k], cut.memories[owner][k],
                                          err_msg=f"{owner}/{k}")


@pytest.mark.timeout(300)
def test_resume_refuses_a_missing_or_foreign_state_file(monkeypatch, tmp_path_factory,
                                                        capfd):
    from mpi4py import MPI

    from fedmpi import run, signals
    from fedmpi.results import clientstate

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    out = d / "cut.h5"
    overrides = SMALL + ["compression.target=update", "compression.downlink=[]",
                         "compression.uplink={topk: {fraction: 0.1}}"]
    assert _interrupted(monkeypatch, comm, QUICK, out, overrides,
                        after=1) == signals.EXIT_INTERRUPTED
    ident, ckpt = run.run_id_of(out)
    assert ckpt == 1
    path = clientstate.state_path(out, 1, ckpt)
    assert path.exists()
    comm.Barrier()
    capfd.readouterr()
    before = out.stat().st_mtime_ns

    def refused(message: str) -> None:
        assert _run(comm, QUICK, out, [], resume=True) == 2  # as other resume errors
        err = capfd.readouterr().err
        if comm.rank == 1:
            assert "rank 1: configuration error" in err and str(path) in err, err
            assert message in err, err
        elif comm.rank == 0:
            assert "configuration error: on another rank" in err, err
        assert out.stat().st_mtime_ns == before  # the result file is untouched
        comm.Barrier()

    if comm.rank == 1:
        saved = path.read_bytes()
        path.unlink()
    comm.Barrier()
    refused("no client-state file for rank 1 at round 1")

    if comm.rank == 1:  # a well-formed file of another run, under this run's name
        with clientstate.ClientStateStore(out, 1, "another run") as store:
            store.save(ckpt, {c: {"residual": np.zeros(3, np.float32)} for c in _hosted(1)})
    comm.Barrier()
    refused("belongs to another run")

    if comm.rank == 1:  # the right file back: the resume goes through
        path.write_bytes(saved)
    comm.Barrier()
    assert _run(comm, QUICK, out, [], resume=True) == 0
    with h5py.File(out, "r", locking=False) as f:
        assert f.attrs["status"] == "completed"


@pytest.mark.timeout(300)
def test_overwrite_removes_the_replaced_runs_state_files(monkeypatch, tmp_path_factory,
                                                         capfd):
    from mpi4py import MPI

    from fedmpi import signals
    from fedmpi.results import clientstate

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    out = d / "over.h5"
    overrides = SMALL + ["compression.target=update", "compression.downlink=[]",
                         "compression.uplink={topk: {fraction: 0.1}}"]
    assert _interrupted(monkeypatch, comm, QUICK, out, overrides,
                        after=1) == signals.EXIT_INTERRUPTED
    old = clientstate.all_files(out)
    assert [p.name for p in old] == ["over.h5.rank1.round1.state", "over.h5.rank2.round1.state"]
    comm.Barrier()
    capfd.readouterr()
    # A new run of the result with a stateless uplink: no worker store would prune them.
    assert _run(comm, QUICK, out, ["rounds=1", "clients.num_clients=6"], overwrite=True) == 0
    assert clientstate.all_files(out) == []
    if comm.rank == 0:
        err = capfd.readouterr().err
        assert all(f"removed {p}" in err for p in old), err
