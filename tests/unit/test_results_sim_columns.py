"""/rounds.sim_s and /messages.sim_s (the link model's simulated times) are optional
columns of schema 2: written as given or NaN, NaN in files written before they
existed, added when such a file is resumed, and covered by the checksums."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fedmpi.results import ResultsError, ResultsWriter, load, schema, synthetic


def _without_optional(monkeypatch):
    """The schema as it was before the optional columns (what older files follow)."""
    for table, fields in list(schema.TABLES.items()):
        monkeypatch.setitem(schema.TABLES, table, tuple(f for f in fields if not f.optional))


def test_sim_columns_are_optional_in_the_schema():
    assert [f.name for f in schema.ROUNDS if f.optional] == ["sim_s"]
    assert [f.name for f in schema.MESSAGES if f.optional] == ["sim_s"]
    assert "sim_s" not in schema.required_columns("messages")


def test_written_as_given_or_nan(tmp_path):
    path = tmp_path / "run.h5"
    w = synthetic.write_run(path, rounds=2, finish=None)
    rng = np.random.default_rng(0)
    cols = synthetic.messages_for_round(2, 0.0, rng, clients=2, workers=2)
    row = synthetic.round_row(2, cols, 0.0, 1, rng, 0)
    sim = np.arange(len(cols["round"]), dtype=float)
    w.append_messages({**cols, "sim_s": sim})
    w.append_round({**row, "sim_s": 12.5})
    w.finish("completed")
    res = load(path)
    assert np.isnan(res.rounds["sim_s"][:2]).all() and res.rounds["sim_s"].iloc[2] == 12.5
    np.testing.assert_array_equal(res.messages["sim_s"].iloc[-len(sim):], sim)
    assert np.isnan(res.messages["sim_s"].iloc[:-len(sim)]).all()


def test_an_older_file_without_them_reads_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "old.h5"
    with monkeypatch.context() as mp:
        _without_optional(mp)
        synthetic.write_run(path, rounds=2, finish="interrupted")
    with h5py.File(path, "r", locking=False) as f:
        assert "sim_s" not in f["rounds"] and "sim_s" not in f["messages"]
    res = load(path)  # checked against its checksums, which predate the columns
    assert list(res.rounds["round"]) == [0, 1] and np.isnan(res.rounds["sim_s"]).all()
    assert len(res.messages) and np.isnan(res.messages["sim_s"]).all()

    w = ResultsWriter(path, attrs={}, resume=True)
    rng = np.random.default_rng(1)
    cols = synthetic.messages_for_round(2, 0.0, rng, clients=2, workers=2)
    w.append_messages({**cols, "sim_s": np.ones(len(cols["round"]))})
    w.append_round({**synthetic.round_row(2, cols, 0.0, 1, rng, 0), "sim_s": 3.0})
    w.finish("completed")
    res = load(path)
    assert list(res.rounds["round"]) == [0, 1, 2]
    np.testing.assert_array_equal(res.rounds["sim_s"], [np.nan, np.nan, 3.0])
    n = len(cols["round"])  # the rows appended after the resume (round 2 also has the STOPs)
    assert (res.messages["sim_s"].iloc[-n:] == 1.0).all()
    assert np.isnan(res.messages["sim_s"].iloc[:-n]).all()


def test_removing_the_column_from_a_new_file_is_caught(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=2)
    with h5py.File(path, "r+", locking=False) as f:
        del f["messages"]["sim_s"]
    with pytest.raises(ResultsError, match="/messages: its .* rows do not match"):
        load(path)
