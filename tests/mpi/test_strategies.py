"""Every server strategy learns digits under `mpiexec -n 3` (issue 11, "What must be
shown"): a short real run (6 rounds, 6 clients) per strategy, with its default
parameters, reaches a sane accuracy, and its server state (if any) is checkpointed."""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import pytest
from inprocess import shared_tmp

pytestmark = pytest.mark.mpi(min_size=3)
QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

# Final test accuracy measured on 2026-11-27 (2-core VM, MPICH, 3 ranks, 40 s for all
# four): fedavgm 0.939, fedadam 0.855, fedyogi 0.855, fedprox 0.947. FedAdam/FedYogi at
# their default server lr 0.01 start slowly (0.13 after round 0, 0.805 after round 3).
FLOOR = 0.8


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy, stateful", [("fedavgm", True), ("fedadam", True),
                                                ("fedyogi", True), ("fedprox", False)])
def test_strategy_learns_digits(tmp_path_factory, strategy, stateful):
    from mpi4py import MPI

    from fedmpi import run
    from fedmpi.results import read_checkpoint

    comm = MPI.COMM_WORLD
    out = shared_tmp(comm, tmp_path_factory) / f"{strategy}.h5"
    args = argparse.Namespace(config=str(QUICK), out=str(out), overwrite=False, resume=None,
                              overrides=["rounds=6", "clients.num_clients=6",
                                         f"strategy={strategy}"])
    assert run.main(args) == 0
    comm.Barrier()
    with h5py.File(out, "r", locking=False) as f:
        assert f.attrs["status"] == "completed"
        assert strategy in f.attrs["config_json"]
        acc = f["rounds/test_accuracy"][()]
    assert len(acc) == 6 and acc[-1] >= FLOOR, acc
    assert bool(read_checkpoint(out).memories.get("strategy")) == stateful
