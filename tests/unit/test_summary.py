"""The end-of-run summary `fedmpi run` prints: its byte lines are the run's totals as the
reader gives them (fedmpi report, Results.runs), final STOP / report exchange included."""

from __future__ import annotations

import h5py

from fedmpi.results import load, synthetic
from fedmpi.summary import MB, summary_lines


def test_summary_lines_are_the_readers_totals(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, theta=0.5, rounds=3)
    row = load([path]).runs.iloc[0]
    lines = summary_lines(path)
    assert lines[0].endswith("[completed]") and "  rounds            3" in lines
    wire = next(x for x in lines if x.startswith("  wire MB"))
    assert (f"{row.up_bytes / MB:.3f} / {row.down_bytes / MB:.3f}   "
            f"(control {row.control_bytes / MB:.4f} MB, "
            f"infrastructure {row.infra_bytes / MB:.4f} MB)") in wire
    dense = (row.dense_up_bytes + row.dense_down_bytes) / MB
    assert f"  dense MB          {dense:.3f}" in lines
    with h5py.File(path, "r") as f:  # the messages after the last round are counted
        in_rounds = f["rounds"]["control_bytes"][()].sum()
    assert row.control_bytes > in_rounds


def test_an_empty_file_says_so(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=0, finish=None).close()
    assert summary_lines(path) == [f"fedmpi: {path}: no completed round"]
