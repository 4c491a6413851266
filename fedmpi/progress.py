"""One line per round on rank 0: where the run is, what it has cost, when it ends.

On by default only for an interactive terminal, so batch logs (Slurm) stay
quiet; FEDMPI_PROGRESS=1 / 0 forces it on / off. The caller creates it on
rank 0 only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from fedmpi.results.fmt import percent, seconds


def _enabled(stream: TextIO) -> bool:
    env = os.environ.get("FEDMPI_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    def __init__(self, total_rounds: int, *, enabled: bool | None = None,
                 stream: TextIO = sys.stderr, initial: int = 0, clock=time.monotonic):
        # initial: rounds already done (a resumed run), so the count and ETA stay right.
        self.total = int(total_rounds)
        self.stream = stream
        self.enabled = _enabled(stream) if enabled is None else bool(enabled)
        self._clock = clock
        self._last = clock()
        self._initial = int(initial)
        self._done = 0
        self._seconds = 0.0

    def format(self, row: Mapping[str, float]) -> str:
        """The line for one /rounds row (also counts it towards the ETA)."""
        now = self._clock()
        spent = float(row.get("wall_s", now - self._last))
        self._last = now
        self._done += 1
        self._seconds += spent
        per_round = self._seconds / self._done
        shown = self._initial + self._done
        left = max(self.total - shown, 0)
        width = len(str(self.total))
        mb = float(row.get("cum_wire_bytes", 0)) / 1e6
        return (f"round {shown:>{width}}/{self.total}  "
                f"acc {percent(float(row.get('test_accuracy', float('nan')))):>7}  "
                f"wire {mb:9.2f} MB  {seconds(spent):>7}/round  "
                f"ETA {seconds(per_round * left)}")

    def update(self, row: Mapping[str, float]) -> None:
        line = self.format(row)
        if self.enabled:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.stream.flush()
