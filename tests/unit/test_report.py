"""fedmpi report: PNGs plus a Table II whose numbers are recomputed here from the files."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from fedmpi.cli import main as cli
from fedmpi.report import table
from fedmpi.report.plots import pareto_front
from fedmpi.results import synthetic

PNGS = ("accuracy_vs_round.png", "accuracy_vs_mb.png", "pareto.png", "time_split.png")
RUNS = {  # file -> (theta, E, seed)
    "a.h5": (0.0, 1, 0), "b.h5": (0.5, 1, 0), "c.h5": (0.5, 1, 1),
    "d.h5": (0.0, 2, 0), "e.h5": (0.9, 2, 3),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    for name, (theta, e, seed) in RUNS.items():
        synthetic.write_run(d / name, theta=theta, local_epochs=e, seed=seed, rounds=4)
    synthetic.write_run(d / "failed.h5", theta=0.5, local_epochs=1, seed=2, rounds=2,
                        finish="failed")
    return d


def _expected(path) -> dict:
    """A run's table inputs, straight from the HDF5 file."""
    with h5py.File(path, "r", locking=False) as f:
        r, m = f["rounds"], f["messages"]
        kind, size = m["kind"][()], m["sender_bytes"][()]
        model = r["up_bytes"][()].sum() + r["down_bytes"][()].sum()
        dense = r["dense_up_bytes"][()].sum() + r["dense_down_bytes"][()].sum()
        return {"acc": r["test_accuracy"][-1], "up": size[kind == 3].mean(),
                "down": size[kind == 2].mean(), "ratio": dense / model,
                "mb": size.sum() / 1e6}  # every message, the final STOP exchange included


def test_report_writes_plots_and_a_recomputable_table(files, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli(["report", str(files / "*.h5"), "--out", str(out)]) == 0
    for name in PNGS:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    tab = pd.read_csv(out / "table.csv")
    assert list(zip(tab["theta"], tab["local_epochs"], tab["n"])) == [
        (0.0, 1, 1), (0.5, 1, 2), (0.0, 2, 1), (0.9, 2, 1)]  # failed run left out
    exp = {name: _expected(files / name) for name in RUNS}
    pair = [exp["b.h5"], exp["c.h5"]]
    row = tab.iloc[1]
    assert row["accuracy_mean"] == pytest.approx(np.mean([e["acc"] for e in pair]))
    assert row["accuracy_std"] == pytest.approx(np.std([e["acc"] for e in pair], ddof=1))
    assert row["delta_vs_theta0"] == pytest.approx(row["accuracy_mean"] - exp["a.h5"]["acc"])
    assert row["mean_up_message_bytes"] == pytest.approx(np.mean([e["up"] for e in pair]))
    assert row["mean_down_message_bytes"] == pytest.approx(np.mean([e["down"] for e in pair]))
    assert row["compression_ratio"] == pytest.approx(np.mean([e["ratio"] for e in pair]))
    assert row["total_mb"] == pytest.approx(np.mean([e["mb"] for e in pair]))
    last = tab.iloc[3]
    assert last["delta_vs_theta0"] == pytest.approx(exp["e.h5"]["acc"] - exp["d.h5"]["acc"])
    assert np.isnan(tab.iloc[0]["accuracy_std"]) and tab.iloc[0]["delta_vs_theta0"] == 0
    md = (out / "table.md").read_text()
    assert "5 of 6 runs" in md and "--all-runs" in md
    acc = f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"
    assert f"| 0.5 | 1 | {acc} |" in md
    assert len(pd.read_csv(out / "runs.csv")) == 6
    assert str(out / "table.md") in capsys.readouterr().out


def test_all_runs_flag_and_extra_varying_key(files, tmp_path):
    d = tmp_path / "lr"
    for threads in (1, 2):
        for theta in (0.0, 0.5):
            synthetic.write_run(d / f"t{theta}_{threads}.h5", theta=theta, rounds=2,
                                run={"threads": threads})
    out = tmp_path / "out"
    assert cli(["report", str(d), str(files / "failed.h5"), "--out", str(out),
                "--all-runs"]) == 0
    tab = pd.read_csv(out / "table.csv")
    assert "run.threads" in tab.columns and len(tab) == 5  # 4 + the failed run
    for threads in (1, 2):
        acc = {t: _expected(d / f"t{t}_{threads}.h5")["acc"] for t in (0.0, 0.5)}
        row = tab[(tab["run.threads"] == threads) & (tab["theta"] == 0.5)].iloc[0]
        assert row["delta_vs_theta0"] == pytest.approx(acc[0.5] - acc[0.0])
    assert "run.threads" in (out / "table.md").read_text()


def test_report_bad_input_exits_2(tmp_path, capsys):
    assert cli(["report", str(tmp_path / "none*.h5"), "--out", str(tmp_path)]) == 2
    assert "no results files match" in capsys.readouterr().err


def test_theta_and_keys_rules():
    assert table.theta_of({"compression.uplink.0.prune.rate": 0.7}) == 0.7
    assert table.theta_of({"compression.uplink.1.name": "prune",
                           "compression.uplink.1.rate": 0.3}) == 0.3
    assert table.theta_of({"compression.uplink": "[]"}) == 0.0
    configs = {  # 'tag' follows theta, 'lr' is a real second axis, seed/name never count
        "a": {"compression.uplink.0.prune.rate": 0.5, "tag": "p", "lr": 1, "seed": 0, "name": "a"},
        "b": {"compression.uplink.0.prune.rate": 0.5, "tag": "p", "lr": 2, "seed": 1, "name": "b"},
        "c": {"compression.uplink": "[]", "tag": "d", "lr": 1, "seed": 2, "name": "c"},
    }
    assert table.other_keys(configs) == ["lr"]
    assert table.other_keys(configs, ignore=["lr"]) == []


def test_pareto_front():
    mb = np.array([1.0, 2.0, 3.0, 2.5, 1.0])
    acc = np.array([0.5, 0.7, 0.6, 0.8, 0.4])
    assert pareto_front(mb, acc).tolist() == [0, 1, 3]


def test_accuracy_vs_time_only_with_simulated_times(tmp_path):
    """The simulated-time figure needs /rounds.sim_s (a link model); without it, none."""
    from fedmpi.report.plots import accuracy_vs_time

    rounds = pd.DataFrame({"run": ["a"] * 3, "round": [0, 1, 2], "wall_s": [1.0, 1.0, 1.0],
                           "test_accuracy": [0.2, 0.3, 0.4], "sim_s": [np.nan] * 3})
    assert accuracy_vs_time(rounds, {}, {}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    rounds["sim_s"] = [8.0, 8.0, 8.0]
    out = accuracy_vs_time(rounds, {"a": "a"}, {"a": 0}, tmp_path / "t.png")
    assert out.exists() and out.stat().st_size > 1000


def test_report_has_no_time_figure_without_a_link_model(files, tmp_path):
    assert cli(["report", str(files), "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "accuracy_vs_time.png").exists()
