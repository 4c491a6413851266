"""Progress lines: content, ETA, and when they are shown."""

from __future__ import annotations

import io

from fedmpi.progress import Progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def _row(r, **kw):
    return {"round": r, "test_accuracy": 0.5 + r / 100, "cum_wire_bytes": (r + 1) * 2_500_000,
            "wall_s": 2.0, **kw}


def test_lines_and_eta():
    out = io.StringIO()
    p = Progress(100, enabled=True, stream=out)
    p.update(_row(0))
    p.update(_row(1, wall_s=4.0))
    p.close()
    first, second = out.getvalue().splitlines()
    assert first.startswith("round   1/100  acc  50.00%  wire      2.50 MB")
    assert "2.00 s/round" in first and first.endswith("ETA 3m18s")  # 99 rounds x 2 s
    assert second.startswith("round   2/100  acc  51.00%  wire      5.00 MB")
    assert second.endswith("ETA 4m54s")  # 98 rounds x mean 3 s


def test_resumed_count_and_clock_fallback():
    ticks = iter([0.0, 1.5])
    p = Progress(10, enabled=True, stream=io.StringIO(), initial=7, clock=lambda: next(ticks))
    line = p.format({"round": 7, "test_accuracy": 0.9, "cum_wire_bytes": 0})
    assert line.startswith("round  8/10") and "1.50 s/round" in line
    assert line.endswith("ETA 3.00 s")  # 2 rounds left x 1.5 s


def test_enabled_for_terminals_or_by_env(monkeypatch):
    monkeypatch.delenv("FEDMPI_PROGRESS", raising=False)
    assert Progress(3, stream=Tty()).enabled
    batch = io.StringIO()
    p = Progress(3, stream=batch)
    p.update(_row(0))
    assert not p.enabled and batch.getvalue() == ""
    monkeypatch.setenv("FEDMPI_PROGRESS", "1")
    assert Progress(3, stream=io.StringIO()).enabled
    monkeypatch.setenv("FEDMPI_PROGRESS", "0")
    assert not Progress(3, stream=Tty()).enabled
    assert Progress(3, stream=Tty(), enabled=True).enabled  # an explicit choice wins
