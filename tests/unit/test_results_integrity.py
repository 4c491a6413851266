"""Damaged results files: every read gives the file's exact content or a ResultsError
naming the file and the object; never another exception, never other data silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from h5files import flip_offsets, read_flipped

import fedmpi
from fedmpi.results import ResultsError, ResultsWriter, load, read_checkpoint, schema, synthetic
from fedmpi.results.integrity import CHECKSUMS_ATTR

ROOT = os.path.dirname(os.path.dirname(fedmpi.__file__))


def test_every_read_of_a_bit_flipped_file_is_exact_or_a_results_error(tmp_path):
    path = tmp_path / "good.h5"
    synthetic.write_run(path, rounds=3, theta=0.5)
    offsets = flip_offsets(path, n_meta=180, n_values=80, n_any=40)
    assert len(offsets) >= 290
    outcomes, wrong = read_flipped(path, offsets, tmp_path / "flipped.h5")
    assert not wrong, "\n".join(wrong)
    # The sample is not trivial: many flips are caught, many land where nothing is read.
    assert outcomes["error"] > 100 and outcomes["same"] > 100, outcomes


def test_a_changed_status_or_value_is_caught_and_named(tmp_path):
    path = tmp_path / "r.h5"
    synthetic.write_run(path, rounds=3, finish="failed")
    with h5py.File(path, "r+", locking=False) as f:  # a hand edit, as a flipped bit would
        f.attrs["status"] = "completed"
    with pytest.raises(ResultsError, match=r"r\.h5: root attributes .* checksum"):
        load(path)

    synthetic.write_run(path, rounds=3, overwrite=True)
    with h5py.File(path, "r+", locking=False) as f:
        f["rounds/test_accuracy"][1] = 0.99
    with pytest.raises(ResultsError, match=r"r\.h5: /rounds: its 3 rows do not match"):
        load(path)

    synthetic.write_run(path, rounds=3, overwrite=True)
    with h5py.File(path, "r+", locking=False) as f:
        f["messages/sender_bytes"].resize((10,))  # rows lost
    with pytest.raises(ResultsError, match=r"/messages/sender_bytes: 10 rows, its checksum"):
        load(path)


def test_a_damaged_chunk_names_its_column(tmp_path):
    path = tmp_path / "r.h5"
    synthetic.write_run(path, rounds=3)
    with h5py.File(path, "r", locking=False) as f:
        info = f["rounds/train_loss"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:  # a byte of the chunk's values, behind HDF5's back
        fh.seek(info.byte_offset + 9)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + 9)
        fh.write(bytes([byte ^ 0x10]))
    with pytest.raises(ResultsError, match=r"r\.h5: /rounds/train_loss: unreadable"):
        load(path)


def test_a_damaged_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    synthetic.write_run(path, rounds=2)
    with h5py.File(path, "r+", locking=False) as f:
        f["checkpoint/global/fc.weight"][7] += 1.0
    with pytest.raises(ResultsError, match=r"c\.h5: /checkpoint: model does not match"):
        read_checkpoint(path)
    synthetic.write_run(path, rounds=2, overwrite=True)
    with h5py.File(path, "r+", locking=False) as f:  # the name hides it (a flip in a heap)
        f.move("checkpoint", "checkpoinu")
    with pytest.raises(ResultsError, match="had one at round 1"):
        read_checkpoint(path)
    synthetic.write_run(path, rounds=2, overwrite=True)
    with h5py.File(path, "r+", locking=False) as f:  # a flipped bit in a member's name
        f["checkpoint/rng"].move("numpy", b"num\xf0y")
    with pytest.raises(ResultsError, match=r"/checkpoint/rng: a member named b'num\\xf0y'"):
        read_checkpoint(path)


def v1_file(path):
    """What fedmpi wrote before checksums (schema 1): same layout, no checksums."""
    synthetic.write_run(path, rounds=3, finish="interrupted")
    with h5py.File(path, "r+", locking=False) as f:
        del f.attrs[CHECKSUMS_ATTR]
        del f.attrs["checkpoint_round"]
        del f["checkpoint"].attrs["sha256"]
        f.attrs["schema_version"] = 1


def test_schema_1_files_stay_readable_and_resume_upgrades_them(tmp_path):
    path = tmp_path / "old.h5"
    v1_file(path)
    res = load(path)
    assert res.runs.loc[0, "schema_version"] == 1 and list(res.rounds["round"]) == [0, 1, 2]
    assert read_checkpoint(path).round == 2
    w = ResultsWriter(path, attrs={}, resume=True)
    w.finish("completed")
    res = load(path)
    assert res.runs.loc[0, "schema_version"] == 2 and res.runs.loc[0, "status"] == "completed"
    with h5py.File(path, "r", locking=False) as f:
        assert set(json.loads(f.attrs[CHECKSUMS_ATTR])["tables"]) == {"rounds", "messages",
                                                                      "clients"}
    assert read_checkpoint(path).round == 2  # its old checkpoint, unsummed, still reads


def test_newer_or_invalid_schema_versions_are_clear(tmp_path):
    path = tmp_path / "n.h5"
    synthetic.write_run(path, rounds=1)
    with h5py.File(path, "r+", locking=False) as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema_version 99 is newer"):
        load(path)
    with h5py.File(path, "r+", locking=False) as f:
        f.attrs["schema_version"] = 0
    with pytest.raises(ResultsError, match="schema_version: invalid value 0"):
        load(path)


def test_resuming_a_damaged_file_is_refused_before_it_is_touched(tmp_path):
    path = tmp_path / "r.h5"
    synthetic.write_run(path, rounds=3, finish="interrupted")
    with h5py.File(path, "r+", locking=False) as f:
        f["rounds/wall_s"][0] = 5.0
    before = path.read_bytes()
    with pytest.raises(ResultsError, match="/rounds: its 3 rows do not match"):
        ResultsWriter(path, attrs={}, resume=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # lock released


@pytest.mark.parametrize("command", ["inspect", "report"])
def test_cli_says_one_line_and_exits_nonzero_on_a_damaged_file(tmp_path, command):
    path = tmp_path / "r.h5"
    synthetic.write_run(path, rounds=3)
    with h5py.File(path, "r+", locking=False) as f:
        f.attrs["seed"] = 7
    args = [str(path)] + (["--out", str(tmp_path / "rep")] if command == "report" else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "fedmpi", command, *args], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"fedmpi {command}: {path}: root attributes")


def _row(r: int) -> dict:
    row = {c: 0 for c in schema.columns("rounds")}
    row.update(round=r, test_accuracy=0.1 * r)
    return row


def _messages(r: int, n: int) -> dict:
    cols = {c: np.arange(n) % 7 for c in schema.columns("messages")}
    cols.update(round=np.full(n, r), kind=np.full(n, 3), direction=np.ones(n))
    return cols


def test_checksums_follow_appends_truncation_and_resume_across_blocks(tmp_path):
    """The writer hashes appended rows incrementally; the reader hashes the whole table."""
    path = tmp_path / "big.h5"
    w = ResultsWriter(path, attrs={})
    for r in range(6):  # 700 message rows a round: blocks of 1024 fill and spill
        w.append_round(_row(r))
        w.append_messages(_messages(r, 700))
        w.flush()
        assert len(load(path).messages) == 700 * (r + 1)  # a reader sees each flush, intact
    w.truncate_after(3)
    w.flush()
    assert len(load(path).messages) == 4 * 700
    w.finish("interrupted")
    w = ResultsWriter(path, attrs={}, resume=True)
    w.append_round(_row(4))
    w.append_messages(_messages(4, 1500))
    w.finish("completed")
    res = load(path)
    assert list(res.rounds["round"]) == [0, 1, 2, 3, 4] and len(res.messages) == 4 * 700 + 1500
    with h5py.File(path, "r", locking=False) as f:
        sums = json.loads(f.attrs[CHECKSUMS_ATTR])
    assert sums["tables"]["messages"]["rows"] == 4300 and sums["block_rows"] == 1024


_LIVE_WRITER = """
import numpy as np
from fedmpi.results import synthetic
from fedmpi.results.synthetic import messages_for_round, round_row
w = synthetic.write_run({path!r}, rounds=1, finish=None)
rng, cum = np.random.default_rng(0), 0
print("started", flush=True)
for r in range(1, 120):
    cols = messages_for_round(r, 0.5, rng, clients=4, workers=2)
    row = round_row(r, cols, 0.5, 1, rng, cum)
    cum = row["cum_wire_bytes"]
    w.append_round(row)
    w.append_messages(cols)
    w.save_checkpoint(round=r, global_state={{"fc.weight": rng.random(10000, dtype=np.float32)}},
                      memories={{}}, rng={{}})
    w.set_attrs(completed_rounds=r + 1)
    w.flush()
w.finish("completed")
"""


def test_a_file_being_written_reads_without_error(tmp_path):
    """Readers take no lock and may catch a flush half-way: they read again, not fail."""
    path = tmp_path / "live.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _LIVE_WRITER.format(path=str(path))],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    seen = []
    while proc.poll() is None:
        res = load(path)
        seen.append(len(res.rounds))
        assert list(res.rounds["round"]) == list(range(len(res.rounds)))
        assert res.runs.loc[0, "completed_rounds"] == len(res.rounds)
    assert proc.wait(timeout=60) == 0
    assert len(seen) > 10 and seen == sorted(seen)
    assert load(path).runs.loc[0, "status"] == "completed" and read_checkpoint(path).round == 119
