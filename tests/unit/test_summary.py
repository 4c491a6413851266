"""The end-of-run summary `fedmpi run` prints: its byte lines add up from /rounds."""

from __future__ import annotations

import h5py

from fedmpi.results import synthetic
from fedmpi.summary import MB, summary_lines


def test_summary_lines_add_up_from_the_rounds(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, theta=0.5, rounds=3)
    with h5py.File(path, "r") as f:
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
    lines = summary_lines(path)
    assert lines[0].endswith("[completed]") and "  rounds            3" in lines
    wire = next(x for x in lines if x.startswith("  wire MB"))
    assert (f"{r['up_bytes'].sum() / MB:.3f} / {r['down_bytes'].sum() / MB:.3f}   "
            f"(control {r['control_bytes'].sum() / MB:.4f} MB, "
            f"infrastructure {r['infra_bytes'].sum() / MB:.4f} MB)") in wire
    dense = (r["dense_up_bytes"].sum() + r["dense_down_bytes"].sum()) / MB
    assert f"  dense MB          {dense:.3f}" in lines


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=0, finish=None).close()
    assert summary_lines(path) == [f"fedmpi: {path}: no completed round"]
