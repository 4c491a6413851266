"""The torch codec path inside real runs gives the numpy path's run, bit for bit.

On a GPU rank the server and workers encode, decode and aggregate with torch on the
device (`run.codec: auto`); `run.codec: torch` runs that same code on the CPU, so
this CPU-only test covers the device integration (worker decode to the device,
state encoded from device tensors, server aggregation of device tensors,
checkpoints written from them) against the numpy path.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpijobs import QUICK, attrs, fedmpi_cmd, rounds, run

# The library under test here is fedmpi's codecs/methods/reports, not MPI: the mpich
# leg runs it, `make test-openmpi` leaves it out (pyproject: any_mpi).
pytestmark = pytest.mark.any_mpi

EF = QUICK.parent / "examples" / "error-feedback.yaml"


def checkpoint(path):
    with h5py.File(path, "r", locking=False) as f:
        return {k: f["checkpoint/global"][k][()] for k in f["checkpoint/global"]}


# downlink_target update: the replicas (server and workers) advance on the device
UPDATE_DOWN = ("--set", "compression.downlink_target=update", "--set", "clients.per_round=3")


@pytest.mark.parametrize("config, extra", [(QUICK, ()), (EF, ()), (EF, UPDATE_DOWN)],
                         ids=["prune-zstd", "ef-uniform4-fp16", "ef-downlink-update"])
def test_torch_codec_run_equals_numpy_codec_run(tmp_path, config, extra):
    files = {}
    for codec in ("numpy", "torch"):
        files[codec] = tmp_path / f"{codec}.h5"
        res = run(fedmpi_cmd(3, config, "--out", files[codec], "--set", "rounds=3",
                             "--set", f"run.codec={codec}", *extra), timeout=300)
        assert res.returncode == 0, res.stderr
    a, b = rounds(files["numpy"]), rounds(files["torch"])
    for col in ("test_accuracy", "test_loss", "train_loss", "up_bytes", "down_bytes",
                "up_nnz", "down_nnz"):
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    ga, gb = checkpoint(files["numpy"]), checkpoint(files["torch"])
    assert sorted(ga) == sorted(gb)
    for k in ga:
        assert np.array_equal(ga[k].view(np.uint32), gb[k].view(np.uint32)), k
    assert '"codec": "torch"' in attrs(files["torch"])["config_json"]
