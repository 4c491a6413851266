"""fedmpi watch: follows rounds, stops when the run ends, waits for a missing file."""

from __future__ import annotations

import io

from fedmpi.cli import main as cli
from fedmpi.results import synthetic
from fedmpi.watch import follow


def test_watch_finished_file(tmp_path, capsys):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=3)
    assert cli(["watch", str(path), "--interval", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:4] for ln in lines[:3]] == [
        ["1/3", "done", "round", "0"], ["2/3", "done", "round", "1"], ["3/3", "done", "round", "2"]]
    assert "acc" in lines[0] and "kB" in lines[2]
    assert lines[-1] == "status: completed after 3 rounds"


def test_watch_running_file_once_and_failed(tmp_path):
    path = tmp_path / "run.h5"
    writer = synthetic.write_run(path, rounds=2, finish=None)  # still open, status running
    out = io.StringIO()
    assert follow(str(path), once=True, out=out) == 0
    assert out.getvalue().splitlines()[-1] == "status: running, 2 rounds so far"
    writer.finish("failed", "rank 2 died")
    out = io.StringIO()
    assert follow(str(path), interval=0, out=out) == 1
    assert out.getvalue().splitlines()[-1] == "status: failed (rank 2 died) after 2 rounds"


def test_watch_waits_for_the_file(tmp_path):
    path = tmp_path / "later.h5"
    out = io.StringIO()
    assert follow(str(path), once=True, out=out) == 1

    def sleep(_):  # the job creates its file while we wait
        if not path.exists():
            synthetic.write_run(path, rounds=1)

    out = io.StringIO()
    assert follow(str(path), interval=5, out=out, sleep=sleep) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == f"waiting for {path} ..." and lines[-1].startswith("status: completed")
