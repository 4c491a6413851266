"""The compressor-zoo outputs of `fedmpi report`, checked against numbers computed by
hand from the constants the synthetic runs were written with."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fedmpi.cli import main as cli
from fedmpi.report import methods, zoo
from fedmpi.results import synthetic
from fedmpi.results.synthetic import CONTROL, Exact

ROUNDS, CLIENTS, WORKERS = 4, 4, 2  # synthetic: 8 clients, fraction 0.5, 2 worker ranks
DENSE = {"target": "update", "uplink": [], "downlink": []}
TOPK = {"target": "update", "uplink": {"topk": {"fraction": 0.1}},
        "downlink": {"topk": {"fraction": 0.1}}, "downlink_target": "update"}
QSGD = {"target": "update", "uplink": {"qsgd": {"levels": 4}}, "downlink": []}
SNAPSHOT = 30000  # error-feedback checkpoint snapshot bytes per round of the topk runs
# (file, compression, local epochs, seed, up bytes, down bytes, accuracy per round, encode s)
RUNS = [
    ("dense-0", DENSE, 1, 0, 40064, 40064, [0.50, 0.70, 0.80, 0.90], 0.001),
    ("dense-1", DENSE, 1, 1, 40064, 40064, [0.52, 0.72, 0.82, 0.92], 0.001),
    ("dense-2", DENSE, 1, 2, 40064, 40064, [0.48, 0.68, 0.78, 0.88], 0.001),
    ("topk-0", TOPK, 1, 0, 4064, 8064, [0.60, 0.85, 0.895, 0.90], 0.003),
    ("topk-1", TOPK, 1, 1, 4064, 8064, [0.60, 0.87, 0.890, 0.88], 0.003),
    ("topk-2", TOPK, 1, 2, 4064, 8064, [0.60, 0.87, 0.885, 0.89], 0.003),
    ("qsgd-0", QSGD, 1, 0, 10064, 40064, [0.30, 0.50, 0.70, 0.80], 0.002),
    ("qsgd-1", QSGD, 1, 1, 10064, 40064, [0.30, 0.50, 0.70, 0.80], 0.002),
    # a second setting (E = 2): compared with its own dense run only
    ("e2-dense-0", DENSE, 2, 0, 40064, 40064, [0.60, 0.80, 0.90, 0.95], 0.001),
    ("e2-topk-0", TOPK, 2, 0, 2064, 4064, [0.20, 0.30, 0.94, 0.95], 0.003),
]


def run_bytes(up: int, down: int) -> tuple[int, int, int]:
    """(up, down, total) wire bytes of a whole run, control and the final STOP included,
    checkpoint snapshots not."""
    control = ROUNDS * (CLIENTS + WORKERS) * CONTROL + 2 * WORKERS * CONTROL
    return ROUNDS * CLIENTS * up, ROUNDS * CLIENTS * down, ROUNDS * CLIENTS * (up + down) + control


def cum_bytes(up: int, down: int, round_: int) -> int:
    """Cumulative wire bytes at the end of `round_` (no STOP exchange yet)."""
    return (round_ + 1) * (CLIENTS * (up + down) + (CLIENTS + WORKERS) * CONTROL)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    for name, comp, epochs, seed, up, down, acc, enc in RUNS:
        synthetic.write_run(d / f"{name}.h5", seed=seed, local_epochs=epochs, rounds=ROUNDS,
                            name=f"zoo-{name}",  # names differ per seed: not what groups runs
                            exact=Exact(up=up, down=down, accuracy=acc, compression=comp,
                                        encode_s=enc, snapshot=SNAPSHOT if comp is TOPK else 0))
    synthetic.write_run(d / "topk-3-failed.h5", seed=3, rounds=ROUNDS, finish="failed",
                        exact=Exact(up=4064, down=8064, accuracy=[0.1] * ROUNDS,
                                    compression=TOPK))
    return d


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    table = out / "elsewhere" / "zoo-table.csv"
    assert cli(["report", str(files), "--out", str(out), "--zoo-table", str(table)]) == 0
    return out, table


def test_zoo_table_matches_a_hand_computation(report):
    out, path = report
    tab = pd.read_csv(path, keep_default_na=False, na_values=[""])
    assert list(tab.columns) == zoo.TABLE_COLUMNS
    assert path.read_text() == (out / "zoo-table.csv").read_text()
    # ranked within each setting by bytes to dense - 1 pt; the failed run left out
    assert list(zip(tab["method"], tab["seeds"])) == [
        ("topk", "0,1,2"), ("dense", "0,1,2"), ("qsgd", "0,1"), ("topk", "0"), ("dense", "0")]
    d_up, d_down, d_total = run_bytes(40064, 40064)
    t_up, t_down, t_total = run_bytes(4064, 8064)
    q_up, q_down, q_total = run_bytes(10064, 40064)
    topk, dense, qsgd = (tab.iloc[i] for i in range(3))
    assert dense["accuracy_mean"] == pytest.approx(90.0)
    assert dense["accuracy_std"] == pytest.approx(2.0, abs=1e-4)  # 88, 90, 92
    assert topk["accuracy_mean"] == pytest.approx(89.0)  # 90, 88, 89
    assert topk["accuracy_std"] == pytest.approx(1.0, abs=1e-4)
    assert topk["delta_pp"] == pytest.approx(-1.0, abs=1e-4)
    assert qsgd["delta_pp"] == pytest.approx(-10.0, abs=1e-4)
    assert math.isnan(qsgd["accuracy_std"]) is False and qsgd["accuracy_std"] == 0
    assert (topk["up_bytes"], topk["down_bytes"], topk["total_bytes"]) == (t_up, t_down, t_total)
    assert (dense["up_bytes"], dense["total_bytes"]) == (d_up, d_total)
    assert topk["total_ratio"] == pytest.approx(d_total / t_total, abs=1e-3)
    assert topk["uplink_ratio"] == pytest.approx(d_up / t_up, abs=1e-3)
    assert qsgd["total_ratio"] == pytest.approx(d_total / q_total, abs=1e-3)
    assert qsgd["uplink_ratio"] == pytest.approx(d_up / q_up, abs=1e-3)
    assert dense["total_ratio"] == 1 and dense["uplink_ratio"] == 1
    e2_topk = tab.iloc[3]  # against the E = 2 dense run, not the E = 1 one
    assert e2_topk["uplink_ratio"] == pytest.approx(d_up / run_bytes(2064, 4064)[0], abs=1e-3)
    assert e2_topk["delta_pp"] == pytest.approx(0.0, abs=1e-4)
    assert np.isnan(tab.iloc[4]["accuracy_std"])  # one seed
    assert topk["config"] == ("up: topk(fraction=0.1); down: topk(fraction=0.1); "
                              "downlink_target=update")
    assert dense["config"] == "up: dense; down: dense"


def test_ranking_by_bytes_to_dense_minus_one_point(report):
    out, _ = report
    rk = pd.read_csv(out / "ranking.csv")
    # dense mean per round 0.50 0.70 0.80 0.90 -> target 0.89 first met in round 3;
    # topk mean per round 0.60 0.8633 0.89 0.89 -> round 2 (0.89 >= 0.89)
    assert list(rk["round_reached"]) == [2, 3, -1, 2, 3]
    assert rk["target_accuracy"].iloc[0] == pytest.approx(89.0)
    assert rk["bytes_to_target"].iloc[0] == cum_bytes(4064, 8064, 2)
    assert rk["bytes_to_target"].iloc[1] == cum_bytes(40064, 40064, 3)
    assert np.isnan(rk["bytes_to_target"].iloc[2])
    assert rk["bytes_to_target"].iloc[3] == cum_bytes(2064, 4064, 2)  # E = 2: target 94
    # 4 updates + 4 models per round, each encoded in the run's encode_s, decoded in 0.002
    assert rk["encode_s_per_round"].iloc[0] == pytest.approx(8 * 0.003)
    assert rk["encode_s_per_round"].iloc[1] == pytest.approx(8 * 0.001)
    assert rk["decode_s_per_round"].iloc[2] == pytest.approx(8 * 0.002)
    assert list(rk["snapshot_bytes"]) == [ROUNDS * SNAPSHOT, 0, 0, ROUNDS * SNAPSHOT, 0]
    md = (out / "ranking.md").read_text()
    assert "Setting 0: {'train.local_epochs': 1}" in md and "Setting 1" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| 1 | topk | up: topk(fraction=0.1)")
    assert f"| {cum_bytes(4064, 8064, 2) / 1e6:,.3f} | 2 |" in lines[1]
    assert "| 2 | **dense** |" in lines[2] and "| 89.00 ± 1.00 | -1.00 |" in lines[1]
    assert "| not reached | — |" in lines[3]
    png = (out / "accuracy_vs_bytes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000


def test_all_runs_brings_in_the_failed_seed(files, tmp_path):
    assert cli(["report", str(files), "--out", str(tmp_path), "--all-runs"]) == 0
    tab = pd.read_csv(tmp_path / "zoo-table.csv")
    assert list(tab["seeds"]) == ["0,1,2", "0,1", "0,1,2,3", "0", "0"]  # topk: not reached now
    assert tab["accuracy_mean"].iloc[2] == pytest.approx((90 + 88 + 89 + 10) / 4)


def test_without_a_dense_run_there_is_no_target_and_no_ratio(files, tmp_path):
    paths = [str(files / f"{name}.h5") for name in ("topk-0", "qsgd-0")]
    assert cli(["report", *paths, "--out", str(tmp_path)]) == 0
    tab = pd.read_csv(tmp_path / "zoo-table.csv")
    assert tab[["delta_pp", "total_ratio", "uplink_ratio"]].isna().all().all()
    assert "No dense run" in (tmp_path / "ranking.md").read_text()


def test_method_names_and_texts_from_the_stored_config():
    assert methods.describe_link([]) == ("dense", "dense")
    stages = [{"prune": {"rate": 0.9, "scope": "global", "tensors": "all"}},
              {"sparse": {"format": "auto"}}, {"zstd": {"level": 3, "shuffle": True}}]
    assert methods.describe_link(stages) == ("prune", "prune(rate=0.9)+sparse+zstd")  # defaults hidden
    assert methods.describe_link([{"zstd": {"level": 9}}]) == ("stages", "zstd(level=9)")
    assert methods.describe_link({"stc": {"fraction": 0.05}}) == ("stc", "stc(fraction=0.05)")
    assert methods.describe_link({"stc": {"fraction": 0.01}}) == ("stc", "stc")  # the default
    flat = {"compression.uplink": "[]", "compression.downlink.0.prune.rate": 0.5,
            "compression.target": "weights", "seed": 3, "name": "x", "rounds": 9,
            "run.threads": 2, "data.path": "/a", "data.dataset": "cifar10"}
    assert methods.subtree(flat, "compression") == {"uplink": [], "downlink": [{"prune": {"rate": 0.5}}],
                                                "target": "weights"}
    assert methods.setting_of(flat) == {"rounds": 9, "data.dataset": "cifar10"}
    m = methods.identify(flat)
    assert (m.method, m.up, m.down, m.dense) == ("dense/prune", "dense", "prune(rate=0.5)", False)
    assert methods.identify({**flat, "compression.downlink": "[]"}).dense
    assert not methods.identify({**flat, "compression.downlink": "[]", "strategy.fedadam.lr": 0.1}).dense


def test_a_seed_given_twice_is_flagged(files, tmp_path):
    again = tmp_path / "again.h5"
    synthetic.write_run(again, seed=0, rounds=ROUNDS, exact=Exact(
        up=4064, down=8064, accuracy=[0.6, 0.85, 0.895, 0.9], compression=TOPK))
    out = tmp_path / "out"
    assert cli(["report", str(files / "topk-0.h5"), str(again), "--out", str(out)]) == 0
    assert "0,0, repeated seed" in (out / "ranking.md").read_text()


def test_no_completed_run_gives_an_empty_table_with_its_header(files, tmp_path):
    assert cli(["report", str(files / "topk-3-failed.h5"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "zoo-table.csv").read_text() == ",".join(zoo.TABLE_COLUMNS) + "\n"
    assert "No completed runs" in (tmp_path / "ranking.md").read_text()


def test_a_file_that_predates_a_config_key_is_in_the_same_setting_and_method():
    """Old files lack keys added since (link, compression.client_rate): at today's
    defaults they are the same setting and method config as new files."""
    from fedmpi.config import Config
    from fedmpi.results.flatten import flatten

    new = flatten(Config().to_dict())
    old = {k: v for k, v in new.items()
           if not k.startswith("link.") and k != "compression.client_rate"}
    old_in_table = {**old, **{k: None for k in new if k not in old}}  # a union of columns
    a, b, c = (methods.identify(x) for x in (new, old, old_in_table))
    assert a.setting == b.setting == c.setting and a.key == b.key == c.key
    other = methods.identify({**new, "link.kind": "fixed"})
    assert other.setting != a.setting
