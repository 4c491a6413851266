"""jobs/gpu-check-table.py turns what jobs/gpu-check.sh leaves behind into one table."""

import json
import subprocess
import sys
from pathlib import Path

from fedmpi.results import synthetic

SCRIPT = Path(__file__).resolve().parents[2] / "jobs" / "gpu-check-table.py"


def _table(out: Path) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_table_from_a_complete_check(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({
        "card": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.2, "sms": 132, "torch": "2.11.0",
        "cuda": "13.0", "python": "3.12.3", "numba": "0.61.0", "zstandard": "0.25.0"}))
    (tmp_path / "mpi.json").write_text('{"mpi4py_finds_mpi": 1, "mpiexec_runs_2_ranks": 1}')
    (tmp_path / "steps.tsv").write_text("venv\t0\t1\nfl-run\t0\t40\nbench-codec-cuda\t124\t120\n")
    (tmp_path / "gpu-tests.xml").write_text(
        '<testsuites><testsuite tests="18" failures="1" errors="0" skipped="2" time="41.5">'
        "</testsuite></testsuites>")
    (tmp_path / "bench-codec-cuda.json").write_text(json.dumps([{
        "pipeline": "p0.5+sparse", "device": "cuda", "copy_gbps": 1500.0, "encode_gbps": 60.0,
        "encode_vs_copy": 0.04, "decode_gbps": 90.0, "decode_vs_copy": 0.06, "ratio": 0.53,
        "same_bytes_as_cpu": True}]))
    synthetic.write_run(tmp_path / "fl-run.h5", theta=0.5, rounds=3)
    table = _table(tmp_path)
    lines = table.strip().splitlines()
    assert lines[0] == "| gpu-check | |" and lines[1] == "|---|---|"
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])
    assert "NVIDIA H100 80GB HBM3 (79.2 GiB, 132 SMs)" in table
    assert "15 passed, 1 failed, 2 skipped" in table
    assert "encode 60.00 GB/s = 0.040 x copy" in table and "same bytes as CPU: yes" in table
    assert "images/s per client rank" in table and "time split per round" in table
    assert "bench-codec-cuda rc=124 120s" in table


def test_table_says_what_is_missing(tmp_path):
    table = _table(tmp_path)
    assert "not run (no GPU, or no report)" in table
    assert "no result file" in table
