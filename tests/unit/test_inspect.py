"""fedmpi inspect on finished, failed and missing files."""

from __future__ import annotations

from fedmpi.cli import main as cli
from fedmpi.inspect import pipeline
from fedmpi.results import load, synthetic


def test_inspect_finished_file(tmp_path, capsys):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, theta=0.5, local_epochs=2, rounds=3)
    runs = load(path).runs.iloc[0]
    assert cli(["inspect", str(path), "--rounds"]) == 0
    out = capsys.readouterr().out
    assert "status:   completed" in out
    assert "rounds:   3 of 3 recorded" in out
    assert f"final {100 * runs['final_accuracy']:.2f}%" in out
    assert "uplink prune(rate=0.5) > zstd(level=3); downlink none" in out
    assert f"compression ratio {runs['compression_ratio']:.2f}x" in out
    from fedmpi.results.fmt import nbytes

    assert f"; infrastructure {nbytes(runs['infra_bytes'])} (not FL traffic)" in out
    assert "E=2" in out and "split:    compute" in out
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:2] == ["round", "acc"] and len(table) == 4


def test_inspect_failed_and_missing(tmp_path, capsys):
    path = tmp_path / "f.h5"
    synthetic.write_run(path, rounds=1, finish="failed")
    assert cli(["inspect", str(path)]) == 0
    assert "status:   failed (synthetic failure)" in capsys.readouterr().out
    assert cli(["inspect", str(tmp_path / "missing.h5")]) == 2
    assert "no such results file" in capsys.readouterr().err


def test_pipeline_text():
    assert pipeline([]) == "none"
    assert pipeline([{"name": "quantize", "bits": 8}, {"zstd": {}}]) == "quantize(bits=8) > zstd"


def test_inspect_shows_polling_link_model_and_simulated_time(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "net.h5"
    w = synthetic.write_run(
        path, rounds=1, finish=None,
        run={"poll": {"spin_s": 0.001, "min_sleep_s": 1e-5, "max_sleep_s": 0.002}},
        link={"kind": "fixed", "up_bps": 1e7, "down_bps": 1e8, "latency_s": 0.05})
    rng = np.random.default_rng(0)
    cols = synthetic.messages_for_round(1, 0.0, rng, clients=2, workers=2)
    w.append_messages(cols)
    w.append_round({**synthetic.round_row(1, cols, 0.0, 1, rng, 0), "sim_s": 2.5})
    w.finish("completed")
    assert cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("network:  poll spin 0.001 s, sleeps 1e-05..0.002 s; link fixed: up 10 Mbit/s, "
            "down 100 Mbit/s, latency 0.05 s") in out
    assert "link:     2.50 s simulated transfer time over 1 rounds" in out
    synthetic.write_run(tmp_path / "old.h5", rounds=1)  # a run without these sections
    assert cli(["inspect", str(tmp_path / "old.h5")]) == 0
    assert "network:  poll: fixed 0.5 ms sleeps (older run); no link model" in \
        capsys.readouterr().out
