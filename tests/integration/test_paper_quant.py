"""A cell of the pruning × quantization study (configs/paper/sweep-quant.yaml), taken from
the sweep file itself, through the wire on the quick-start data: θ = 0.5 + 1-bit sign +
error feedback on the client update."""

from __future__ import annotations

import json

import h5py
import pytest
import yaml
from mpijobs import QUICK, ROOT, fedmpi_cmd, run

from fedmpi.compress.prune import n_drop
from fedmpi.wire import Kind

# The library under test here is fedmpi's codecs/methods/reports, not MPI: the mpich
# leg runs it, `make test-openmpi` leaves it out (pyproject: any_mpi).
pytestmark = pytest.mark.any_mpi


def test_sign_cell_with_feedback_runs_and_is_an_eighth_of_pruned_float32(tmp_path):
    sweep = yaml.safe_load((ROOT / "configs" / "paper" / "sweep-quant.yaml").read_text())
    uplink = sweep["grid"]["compression.uplink"]["b1-ef-on"]
    uplink[0]["prune"]["rate"] = 0.5
    out = tmp_path / "cell.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=2",
                         "--set", "compression.target=update",
                         "--set", "compression.downlink=[{sparse: {}}]",
                         "--set", f"compression.uplink={json.dumps(uplink)}"), timeout=300)
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        assert f.attrs["status"] == "completed"
    up = m["kind"] == int(Kind.UPDATE)
    numel = int(m["numel"][up][0])
    assert (m["nnz"][up] <= numel - n_drop(0.5, numel)).all()
    # 1 bit per kept value + positions (a bitmap at most: 1 bit per entry) + headers
    assert (m["sender_bytes"][up] < (numel + numel // 2) / 8 + 600).all()
