"""Result-file integrity with real mpiexec jobs: two runs of one file at once (exactly one
writes it, the other is refused on every rank before touching it), and a real result file
with bits flipped (every read exact or a ResultsError)."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
from h5files import flip_offsets, read_flipped
from mpijobs import QUICK, attrs, fedmpi_cmd, finish, rounds, run, start, wait_for_rounds

from fedmpi.results import load, synthetic

N = 2  # ranks per job: two jobs at once share the machine's cores
ROUNDS = 60  # long enough that the two jobs overlap however slow their start-up


def refused(res, out) -> None:
    """A second writer: exit 2 after one configuration error naming the file and the holder
    (or, if the winner was quicker still, the file that changed under it)."""
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("configuration error") == 1, res.stderr
    assert str(out) in res.stderr
    assert re.search(r"pid \d+ on host \S+ is still running it|"
                     r"another run just wrote it|does not exist yet", res.stderr), res.stderr


def two_at_once(cmd: list[str]):
    a, b = start(cmd), start(cmd)
    ra, rb = finish(a, 400), finish(b, 400)
    assert sorted([ra.returncode, rb.returncode]) == [0, 2], (ra.stderr, rb.stderr)
    return (ra, rb) if ra.returncode == 0 else (rb, ra)


def test_two_resumes_of_one_interrupted_file(tmp_path):
    out = tmp_path / "cut.h5"
    proc = start(fedmpi_cmd(N, QUICK, "--out", out, "--set", f"rounds={ROUNDS}"))
    wait_for_rounds(out, 2, proc)
    os.kill(int(attrs(out)["server_pid"]), signal.SIGUSR1)
    assert finish(proc, 120).returncode == 75

    winner, loser = two_at_once(fedmpi_cmd(N, "--resume", out))
    refused(loser, out)
    assert "[completed]" in winner.stdout
    res = load(out)  # every checksum holds
    assert res.runs.loc[0, "status"] == "completed"
    np.testing.assert_array_equal(res.rounds["round"], np.arange(ROUNDS))  # each round once
    assert set(res.messages["segment"]) == {0, 1}  # one resume wrote, not two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.h5"]  # no lock, no temp left


@pytest.mark.parametrize("mode", ["overwrite", "plain"])
def test_two_runs_of_one_output(tmp_path, mode):
    out = tmp_path / "x.h5"
    if mode == "overwrite":
        synthetic.write_run(out, rounds=2, name="old")
    cmd = fedmpi_cmd(N, QUICK, "--out", out, "--set", f"rounds={ROUNDS}",
                     *(["--overwrite"] if mode == "overwrite" else []))
    winner, loser = two_at_once(cmd)
    refused(loser, out)
    res = load(out)
    assert res.runs.loc[0, "name"] == "quickstart" and res.runs.loc[0, "status"] == "completed"
    assert res.runs.loc[0, "server_pid"] != -1
    np.testing.assert_array_equal(res.rounds["round"], np.arange(ROUNDS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


def test_bits_flipped_in_a_real_result_file(tmp_path):
    out = tmp_path / "real.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=3"))
    assert res.returncode == 0, res.stderr
    assert len(rounds(out)["round"]) == 3
    offsets = flip_offsets(out, n_meta=120, n_values=50, n_any=30, seed=3)
    outcomes, wrong = read_flipped(out, offsets, tmp_path / "flipped.h5")
    assert not wrong, "\n".join(wrong)
    assert outcomes["error"] > 50 and outcomes["same"] > 50, outcomes
