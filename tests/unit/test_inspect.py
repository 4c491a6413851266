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
