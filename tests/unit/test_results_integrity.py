"""Damaged results files: every read gives the file's exact content or a ResultsError
naming the file and the object; never another exception, never other data silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

import fedmpi
from fedmpi.results import ResultsError, ResultsWriter, load, read_checkpoint, synthetic
from fedmpi.results.integrity import CHECKSUMS_ATTR

ROOT = os.path.dirname(os.path.dirname(fedmpi.__file__))
TABLES = ("runs", "rounds", "messages", "clients")


def content(path):
    """Everything the readers return, with the file name taken out (copies differ by it)."""
    res = load(path)
    frames = {t: getattr(res, t).drop(columns=["run", "path"], errors="ignore") for t in TABLES}
    return frames, list(res.configs.values())


def assert_same_content(a, b) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(a[0][t], b[0][t], check_exact=True, obj=t)
    assert a[1] == b[1]


def assert_same_checkpoint(a, b) -> None:
    assert (a.round, a.rng, a.attrs) == (b.round, b.rng, b.attrs)
    for mine, theirs in ((a.global_state, b.global_state),
                         *zip(a.memories.values(), b.memories.values())):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]), k
    assert a.memories.keys() == b.memories.keys()


def raw_data_mask(path) -> np.ndarray:
    """Bytes of the file that hold dataset values (chunks, contiguous storage)."""
    mask = np.zeros(os.path.getsize(path), bool)

    def visit(_, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                mask[info.byte_offset:info.byte_offset + info.size] = True
        elif obj.id.get_offset() is not None:
            mask[obj.id.get_offset():obj.id.get_offset() + obj.id.get_storage_size()] = True

    with h5py.File(path, "r", locking=False) as f:
        f.visititems(visit)
    return mask


def flip_offsets(data: np.ndarray, raw: np.ndarray, seed: int = 10) -> list[int]:
    """A seeded sample: mostly metadata (headers, heaps, B-trees, attribute strings),
    some dataset bytes, some anywhere (free space included)."""
    rng = np.random.default_rng(seed)
    meta = np.flatnonzero(~raw & (data != 0))
    values = np.flatnonzero(raw & (data != 0))
    picks = [rng.choice(meta, 180, replace=False), rng.choice(values, 80, replace=False),
             rng.choice(len(data), 40, replace=False)]
    return sorted({int(i) for p in picks for i in p})


def test_every_read_of_a_bit_flipped_file_is_exact_or_a_results_error(tmp_path):
    path = tmp_path / "good.h5"
    synthetic.write_run(path, rounds=3, theta=0.5)
    good, good_ckpt = content(path), read_checkpoint(path)
    data = np.fromfile(path, np.uint8)
    offsets = flip_offsets(data, raw_data_mask(path))
    assert len(offsets) >= 290
    outcomes = {"same": 0, "error": 0}
    wrong = []
    bad = tmp_path / "flipped.h5"
    for off in offsets:
        flipped = data.copy()
        flipped[off] ^= 1 << (off % 8)  # one bit
        flipped.tofile(bad)
        for what, read, same in (("load", content, lambda got: assert_same_content(good, got)),
                                 ("checkpoint", read_checkpoint,
                                  lambda got: assert_same_checkpoint(good_ckpt, got))):
            try:
                got = read(bad)
            except ResultsError as exc:
                assert str(bad) in str(exc), exc  # names the file (and the object)
                outcomes["error"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - exactly what must not happen
                wrong.append(f"offset {off} {what}: {type(exc).__name__}: {exc}")
                continue
            try:
                same(got)
                outcomes["same"] += 1
            except AssertionError as exc:
                wrong.append(f"offset {off} {what}: different data, no error: {exc}"[:300])
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
