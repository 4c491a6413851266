"""The zoo end to end at CI size: configs/zoo/quick.yaml through `fedmpi sweep` (real MPI
runs), then `fedmpi report --zoo-table`, whose byte columns are recomputed here from the
result files' /messages."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from mpijobs import MPIEXEC, PYTHON, ROOT, finish, start

from fedmpi import config as cfgmod

# The library under test here is fedmpi's codecs/methods/reports, not MPI: the mpich
# leg runs it, `make test-openmpi` leaves it out (pyproject: any_mpi).
pytestmark = pytest.mark.any_mpi

QUICK = ROOT / "configs" / "zoo" / "quick.yaml"
NEEDS = ("topk", "qsgd", "stc")  # the quick sweep's methods besides dense and the stages


def _missing() -> list[str]:
    from fedmpi.compressors import REGISTRY

    missing = [k for k in NEEDS if k not in REGISTRY]
    if "downlink_target" not in {f.name for f in dataclasses.fields(cfgmod.CompressionConfig)}:
        missing.append("compression.downlink_target")
    return missing


def run_sweep_and_report(sweep: Path, out: Path, timeout: float = 600) -> Path:
    """Every task of `sweep` under 3 ranks into `out`, then the report; the zoo table."""
    def fedmpi(*args: str) -> str:
        res = finish(start([PYTHON, "-m", "fedmpi", *map(str, args)]), timeout)
        assert res.returncode == 0, f"fedmpi {' '.join(map(str, args))}:\n{res.stderr[-3000:]}"
        return res.stdout

    launch = shlex.join([*MPIEXEC, "-n", "3"])
    for i in range(int(fedmpi("sweep", sweep, "--count"))):
        fedmpi("sweep", sweep, "--task", i, "--out-dir", out, "--launch", launch)
    table = out / "zoo-table.csv"
    fedmpi("report", *sorted(out.glob("*.h5")), "--out", out / "report", "--zoo-table", table)
    return table


def _bytes(path: Path) -> tuple[int, int, int]:
    """(up, down, total without checkpoint snapshots) straight from /messages."""
    with h5py.File(path, "r", locking=False) as f:
        m = f["messages"]
        kind, size = m["kind"][()], m["sender_bytes"][()]
    up, down, snapshot = kind == 3, kind == 2, kind == 7
    return int(size[up].sum()), int(size[down].sum()), int(size[~snapshot].sum())


@pytest.mark.skipif(bool(_missing()), reason=f"not merged yet: {', '.join(_missing())}")
def test_quick_zoo_runs_and_its_table_adds_up(tmp_path):
    table = pd.read_csv(run_sweep_and_report(QUICK, tmp_path))
    assert sorted(table["method"]) == ["dense", "prune", "qsgd", "stc", "topk"]
    assert set(table["seeds"].astype(str)) == {"0"}
    for _, row in table.iterrows():
        name = {"dense": "dense", "prune": "prune-0.9", "qsgd": "qsgd-4", "stc": "stc-0.1",
                "topk": "topk-0.1"}[row["method"]]
        up, down, total = _bytes(tmp_path / f"method={name}_seed=0.h5")
        assert (row["up_bytes"], row["down_bytes"], row["total_bytes"]) == (up, down, total)
    dense = table[table["method"] == "dense"].iloc[0]
    assert (dense["delta_pp"], dense["total_ratio"], dense["uplink_ratio"]) == (0, 1, 1)
    compressed = table[table["method"] != "dense"]
    assert (compressed["uplink_ratio"] > 1).all() and (compressed["total_ratio"] > 1).all()
    assert np.isfinite(table["accuracy_mean"]).all()
    assert (tmp_path / "report" / "ranking.md").read_text().count("| ") > 5
