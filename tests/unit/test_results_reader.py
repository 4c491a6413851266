"""fedmpi.results.load: files, globs, directories -> DataFrames with config columns."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fedmpi.results import ResultsError, load, synthetic
from fedmpi.results.flatten import flatten


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    for theta in (0.0, 0.5):
        for seed in (0, 1):
            synthetic.write_run(d / f"t{theta}_s{seed}.h5", theta=theta, seed=seed,
                                local_epochs=2, rounds=4)
    synthetic.write_run(d / "failed.h5", theta=0.5, local_epochs=1, rounds=2, finish="failed")
    return d


def test_glob_gives_one_row_per_run_with_flat_config(sweep):
    res = load(str(sweep / "t*.h5"))
    assert len(res.runs) == 4 and set(res.runs["status"]) == {"completed"}
    assert set(res.runs["train.local_epochs"]) == {2}
    rates = res.runs.set_index("seed")["compression.uplink.0.prune.rate"]
    assert rates.dropna().tolist() == [0.5, 0.5]
    # One groupby per sweep dimension.
    by = res.runs.groupby(res.runs["compression.uplink.0.prune.rate"].fillna(0.0))
    assert by["final_accuracy"].count().to_dict() == {0.0: 2, 0.5: 2}
    assert len(res.rounds) == 16 and res.rounds["run"].nunique() == 4


def test_run_summary_matches_the_file(sweep):
    path = str(sweep / "t0.5_s1.h5")
    row = load(path).runs.iloc[0]
    with h5py.File(path, "r", locking=False) as f:
        r, m = f["rounds"], f["messages"]
        assert row["final_accuracy"] == r["test_accuracy"][-1]
        assert row["up_bytes"] == r["up_bytes"][()].sum()
        # All wire bytes: the rounds' plus the STOP exchange after the last round.
        stop = m["sender_bytes"][()][m["round"][()] == len(r["round"])].sum()
        assert stop > 0 and row["wire_bytes"] == r["cum_wire_bytes"][-1] + stop
        assert row["wire_bytes"] == m["sender_bytes"][()].sum()
        dense = r["dense_up_bytes"][()].sum() + r["dense_down_bytes"][()].sum()
        model = r["up_bytes"][()].sum() + r["down_bytes"][()].sum()
        assert row["compression_ratio"] == pytest.approx(dense / model)
        up = m["sender_bytes"][()][m["kind"][()] == 3]
        assert row["mean_up_message_bytes"] == pytest.approx(up.mean())
    assert row["name"] == "theta0.5_e2" and row["seed"] == 1
    assert row["hosts"] == '["node0", "node0", "node0"]'


def test_extra_attributes_are_kept(tmp_path):
    w = synthetic.write_run(tmp_path / "x.h5", rounds=1, finish=None)
    w.set_attrs(server_pid=123, uplink_codec="prune>zstd", custom={"a": 1}, flag=True)
    w.finish("completed")
    row = load(tmp_path / "x.h5").runs.iloc[0]
    assert row["server_pid"] == 123 and row["uplink_codec"] == "prune>zstd"
    assert row["custom"] == '{"a": 1}' and bool(row["flag"])


def test_tables_carry_run_and_names(sweep):
    res = load([sweep / "t0.0_s0.h5", sweep / "failed.h5"])
    m = res.messages
    assert set(m["kind_name"]) == {"assign", "model", "update", "report", "stop"}
    assert set(m.loc[m["direction"] == 1, "direction_name"]) == {"up"}
    assert set(m["run"]) == {str(sweep / "t0.0_s0.h5"), str(sweep / "failed.h5")}
    assert {"class_0", "class_9", "samples"} <= set(res.clients.columns)
    joined = res.rounds_with_config()
    assert "train.local_epochs" in joined and len(joined) == len(res.rounds)
    joined = res.messages_with_config(["train.local_epochs", "seed"])
    assert joined.groupby("train.local_epochs")["run"].nunique().to_dict() == {1: 1, 2: 1}


def test_directory_and_status_filter(sweep):
    assert len(load(sweep).runs) == 5
    assert list(load(sweep, statuses=["failed"]).runs["status"]) == ["failed"]


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load(tmp_path / "nope.h5")
    with pytest.raises(ResultsError, match="match"):
        load(str(tmp_path / "*.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ResultsError, match="not a readable HDF5"):
        load(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(2)
    with pytest.raises(ResultsError, match="not a fedmpi results file"):
        load(tmp_path / "other.h5")


def test_flatten():
    cfg = {"a": {"b": 1, "c": [{"prune": {"rate": 0.5}}, 3]}, "d": [], "e": {}, "f": None}
    assert flatten(cfg) == {"a.b": 1, "a.c.0.prune.rate": 0.5, "a.c.1": 3, "d": "[]",
                            "e": "{}", "f": None}
