"""Every compression stage, from config, in a real MPI run on both links: the run
completes, both ends agree on every byte, and what /messages reports (nnz, dense size,
codec) is what the configured pipeline really produced."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from inprocess import run_recorded, shared_tmp

pytestmark = pytest.mark.mpi(min_size=3)
QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
MLP_PARAMS = 9_610

PIPELINES = {
    "uniform8-delta-weights": (
        "weights",
        [{"prune": {"rate": 0.8, "scope": "tensor", "tensors": "weights"}},
         {"quantize": {"method": "uniform", "bits": 8}}, {"sparse": {"format": "delta"}},
         {"zstd": {"level": 1}}],
        [{"quantize": {"method": "bfloat16"}}, {"zstd": {"level": 3, "shuffle": False}}],
    ),
    "pow2-memory-update": (
        "update",
        [{"prune": {"rate": 0.7}}, {"quantize": {"method": "pow2", "bits": 4}}, {"memory": {}},
         {"sparse": {"format": "bitmap"}}],
        [{"prune": {"rate": 0.3}}, {"quantize": {"method": "float16"}}, {"memory": {}},
         {"sparse": {}}, {"zstd": {}}],
    ),
    "dense": ("weights", [], []),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_stage_combinations_in_a_real_run(monkeypatch, tmp_path_factory, name):
    from mpi4py import MPI

    target, up, down = PIPELINES[name]
    comm = MPI.COMM_WORLD
    out = shared_tmp(comm, tmp_path_factory) / f"{name}.h5"
    code, _ = run_recorded(monkeypatch, comm, QUICK, out, [
        "rounds=2", f"compression.target={target}", f"compression.uplink={up}",
        f"compression.downlink={down}"])
    assert code == 0
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
        codecs = f["messages"].attrs["codecs"]
    np.testing.assert_array_equal(m["sender_bytes"], m["receiver_bytes"])
    assert np.isfinite(r["test_accuracy"]).all() and r["test_accuracy"][-1] > 0.3
    for kind, stages in ((2, down), (3, up)):
        rows = m["kind"] == kind
        assert set(m["numel"][rows]) == {MLP_PARAMS}
        assert set(m["dense_bytes"][rows]) == {4 * MLP_PARAMS}
        prune = next((s["prune"] for s in stages if "prune" in s), None)
        if prune is None:
            assert (m["nnz"][rows] <= MLP_PARAMS).all()
        elif prune.get("scope", "global") == "global":
            kept = MLP_PARAMS - int(prune["rate"] * MLP_PARAMS + 1e-6)
            assert (m["nnz"][rows] <= kept).all() and (m["nnz"][rows] >= 0.95 * kept).all()
        else:  # per tensor, weights only: fewer zeros than a global cut of the same rate
            assert (m["nnz"][rows] > MLP_PARAMS * (1 - prune["rate"])).all()
        if stages:
            assert (m["sender_bytes"][rows] < 4 * MLP_PARAMS).all(), name
    assert "pow2" in codecs or "uniform8" in codecs or name == "dense"
