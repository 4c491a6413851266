"""A well-framed message with valid checksums but a wrong field (a buggy or hostile
sender) ends the job like a corrupted one: WireFormatError naming rank, round and
client, found by the receiver's field checks, not by a CRC."""

from __future__ import annotations

import re

import pytest
from mpijobs import QUICK, attrs, fedmpi_cmd, run

# The library under test here is fedmpi's codecs/methods/reports, not MPI: the mpich
# leg runs it, `make test-openmpi` leaves it out (pyproject: any_mpi).
pytestmark = pytest.mark.any_mpi


@pytest.mark.parametrize("where, receiver, names", [
    ("forge", 0, r"server \(rank 0\), round 1, update from rank 1 \(client \d+\): "),
    ("forge_down", 1, r"rank 1, round 1 client 0: "),
])
def test_a_forged_message_ends_the_job_naming_it(tmp_path, where, receiver, names):
    out = tmp_path / "f.h5"
    sender = 1 if where == "forge" else 0
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=4", "--set",
                         f"run.fail_at={{rank: {sender}, round: 1, where: {where}}}"),
              timeout=120)
    assert res.returncode != 0
    assert f"rank {receiver} failed: WireFormatError" in res.stderr, res.stderr
    m = re.search(names + r"(UPDATE|MODEL) declares (\d+) tensors, the model has (\d+)",
                  res.stderr)
    assert m and int(m.group(2)) == int(m.group(3)) + 1, res.stderr
    assert "checksum" not in res.stderr
    a = attrs(out)
    assert a["status"] == "failed" and "WireFormatError" in a["failure_reason"]
    assert a["completed_rounds"] == 1  # round 0 is kept
