"""Fail fast, never hang: config errors, failing ranks and malformed messages end the
whole MPI job quickly with a non-zero exit, and the result file says why."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from mpijobs import PYTHON, QUICK, ROOT, attrs, fedmpi_cmd, run

FAST = ["--set", "rounds=4"]


def test_config_error_is_reported_once_and_every_rank_exits_nonzero(tmp_path):
    res = run(fedmpi_cmd(3, QUICK, "--out", tmp_path / "x.h5", "--set", "clients.fraction=1.5"),
              timeout=120)
    assert res.returncode != 0
    assert res.stderr.count("configuration error") == 1, res.stderr
    assert "clients.fraction" in res.stderr and "1.5" in res.stderr and "(0, 1]" in res.stderr
    assert not (tmp_path / "x.h5").exists()


def test_more_workers_than_clients(tmp_path):
    res = run(fedmpi_cmd(4, QUICK, "--out", tmp_path / "x.h5", "--set", "clients.num_clients=2"),
              timeout=120)
    assert res.returncode != 0
    assert "clients.num_clients" in res.stderr and "worker ranks (3)" in res.stderr


def test_without_mpiexec_needs_two_ranks(tmp_path):
    res = subprocess.run([PYTHON, "-m", "fedmpi", "run", str(QUICK), "--out",
                          str(tmp_path / "x.h5")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "needs >= 2 ranks" in res.stderr


def failure_seconds(stderr: str) -> float:
    """Seconds between the injected failure and the job's end, from the failure message."""
    m = re.search(r"injected failure .*? at t=([0-9.]+)", stderr)
    assert m, stderr
    return time.time() - float(m.group(1))


@pytest.mark.parametrize(
    "rank, where, cause",
    [
        (1, "train", "InjectedFault"),  # a client, in round 1
        (0, "aggregate", "InjectedFault"),  # the server, during aggregation
        (2, "data", "InjectedFault"),  # a worker that cannot read its data
        (1, "corrupt", "WireFormatError"),  # a malformed update reaches the server
        (0, "corrupt_down", "WireFormatError"),  # a malformed model reaches a worker
    ],
)
def test_a_failing_rank_ends_the_job_fast(tmp_path, rank, where, cause):
    out = tmp_path / "f.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, *FAST, "--set",
                         f"run.fail_at={{rank: {rank}, round: 1, where: {where}}}"), timeout=120)
    assert res.returncode != 0
    # who fails: the receiver of a corrupted message (client 0 lives on rank 1)
    failed_rank = {"corrupt": 0, "corrupt_down": 1}.get(where, rank)
    assert f"rank {failed_rank} failed: {cause}" in res.stderr, res.stderr
    if where == "corrupt":  # names rank, round and client of the bad message
        assert re.search(r"round 1, update from rank 1 \(client \d+\): .*checksum",
                         res.stderr), res.stderr
    elif where == "corrupt_down":
        assert re.search(r"rank 1, round 1 client 0: .*checksum", res.stderr), res.stderr
    else:
        assert failure_seconds(res.stderr) < 10
    a = attrs(out)
    assert a["status"] == "failed"
    assert cause in a["failure_reason"]
    if where != "data":
        assert a["completed_rounds"] == 1  # round 0 is kept


def test_never_overwrites_without_flag(tmp_path):
    out = tmp_path / "r.h5"
    out.write_bytes(b"precious")
    res = run(fedmpi_cmd(3, QUICK, "--out", out, *FAST), timeout=120)
    assert res.returncode == 2
    assert "--out" in res.stderr and "--overwrite" in res.stderr
    assert out.read_bytes() == b"precious"


def test_missing_cifar_is_a_config_error(tmp_path):
    res = run(fedmpi_cmd(3, ROOT / "configs" / "paper" / "cpu.yaml", "--out", tmp_path / "x.h5",
                         "--set", f"data.path={tmp_path / 'nowhere'}"), timeout=120)
    assert res.returncode == 2
    assert res.stderr.count("configuration error") == 1
    assert "data.path" in res.stderr


def test_data_dependent_config_error_leaves_no_file(tmp_path):
    out = tmp_path / "x.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "data.partition.min_samples=500"),
              timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("configuration error") == 1
    assert "data.partition.min_samples" in res.stderr
    assert not out.exists()  # a corrected rerun needs no --overwrite
