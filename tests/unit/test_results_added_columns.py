"""A results file written before /rounds/infra_bytes existed (same schema version 2)
still reads, checked against its own checksums, with the column as zeros; `--resume`
refuses it with a clear message instead of failing later; a new file missing the
column is damaged."""

from __future__ import annotations

import argparse

import h5py
import pytest

from fedmpi import run
from fedmpi.errors import ConfigError
from fedmpi.results import ResultsError, ResultsWriter, load, schema

ROW = {f.name: 0 for f in schema.ROUNDS} | {"round": 0, "test_accuracy": 0.5,
                                            "up_bytes": 10, "control_bytes": 3}


def _write(path, monkeypatch, older: bool):
    if older:  # the layout of before: /rounds without infra_bytes
        rounds = tuple(f for f in schema.ROUNDS if f.name != "infra_bytes")
        monkeypatch.setattr(schema, "ROUNDS", rounds)
        monkeypatch.setitem(schema.TABLES, "rounds", rounds)
    with ResultsWriter(path, attrs={"config_json": "{}", "status": "interrupted"}) as w:
        w.append_round({k: v for k, v in ROW.items() if k in schema.columns("rounds")})
    monkeypatch.undo()


def test_an_older_file_reads_with_zero_infra_bytes(tmp_path, monkeypatch):
    path = tmp_path / "old.h5"
    _write(path, monkeypatch, older=True)
    with h5py.File(path, "r") as f:
        assert "infra_bytes" not in f["rounds"]
    data = load(path)
    assert list(data.rounds["infra_bytes"]) == [0]
    assert list(data.rounds["up_bytes"]) == [10]
    with pytest.raises(ConfigError, match="/rounds/infra_bytes .* before it existed"):
        run._resume_config(path, argparse.Namespace(overwrite=False, out=None, config=None,
                                                    overrides=[]))
    with h5py.File(path, "r+") as f:  # its checksums still cover every column it has
        f["rounds/up_bytes"][0] = 11
    with pytest.raises(ResultsError, match="/rounds: its 1 rows do not match"):
        load(path)


def test_a_new_file_without_the_column_is_damaged(tmp_path, monkeypatch):
    path = tmp_path / "new.h5"
    _write(path, monkeypatch, older=False)
    assert list(load(path).rounds["infra_bytes"]) == [0]
    with h5py.File(path, "r+") as f:
        del f["rounds/infra_bytes"]
    with pytest.raises(ResultsError, match="/rounds: its 1 rows do not match their checksum"):
        load(path)


def test_an_older_files_snapshots_are_read_as_infrastructure_not_control(tmp_path, monkeypatch):
    """Older files counted the EF snapshots shipped to rank 0 (kind memory) in
    control_bytes: the reader moves them to infra_bytes, so totals mean the same as in
    newer files (where client state never travels)."""
    import numpy as np

    from fedmpi.accounting import MESSAGE_COLUMNS
    from fedmpi.wire import Kind

    path = tmp_path / "old-ef.h5"
    rounds = tuple(f for f in schema.ROUNDS if f.name != "infra_bytes")
    monkeypatch.setattr(schema, "ROUNDS", rounds)
    monkeypatch.setitem(schema.TABLES, "rounds", rounds)
    kinds = [Kind.ASSIGN, Kind.UPDATE, Kind.MEMORY, Kind.REPORT]
    sizes = [48, 1000, 4000, 200]
    cols = {name: np.zeros(4) for name in MESSAGE_COLUMNS}
    cols.update(round=np.zeros(4, "<i4"), kind=np.array(kinds, "u1"),
                direction=np.array([0, 1, 1, 1], "u1"), client=np.array([-1, 0, 0, -1], "<i4"),
                worker=np.ones(4, "<i4"), sender_bytes=np.array(sizes, "<i8"),
                receiver_bytes=np.array(sizes, "<i8"), segment=np.zeros(4, "<i4"))
    with ResultsWriter(path, attrs={"config_json": "{}", "status": "completed"}) as w:
        w.append_messages({k: v for k, v in cols.items() if k in schema.columns("messages")})
        w.append_round({k: v for k, v in ROW.items() if k in schema.columns("rounds")}
                       | {"up_bytes": 1000, "control_bytes": 4248})
    monkeypatch.undo()
    data = load(path)
    assert list(data.rounds["control_bytes"]) == [248]
    assert list(data.rounds["infra_bytes"]) == [4000]
    assert int(data.runs["control_bytes"].iloc[0]) == 248
