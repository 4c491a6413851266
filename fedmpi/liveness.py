"""The liveness rule: how long a rank waits on a silent peer before it ends the job.

A stopped (`kill -STOP`), hung or unreachable rank sends nothing, and MPI never
tells the others: without a deadline every wait on it lasts forever. But silence
is also normal: a worker training a client sends nothing until its update is
ready, and start-up (data decoding, moving data to a GPU) can take minutes. So the
limit is the larger of an absolute floor and a multiple of what this run has
shown a round to take:

    limit = max(run.timeout_s, 10 x the slowest round this rank has seen)

on rank 0, and twice that on the worker ranks. Why these numbers:
- `run.timeout_s` (default 600 s) covers start-up and round 0, where nothing has
  been measured yet; a first round whose single client trains for longer than
  that needs a larger `run.timeout_s` (every later round is covered by the 10x).
- A wait inside one round never lasts longer than a round, and rounds of one run
  are alike: 10x the slowest is far beyond a slow round (load, a GC pause, a
  checkpoint on a busy file system) yet still ends a stalled job in minutes.
- Rank 0 is the hub: it waits on every worker, every worker waits only on it. A
  healthy worker blocked behind a stopped one is waiting on rank 0 too, so the
  workers give rank 0 twice as long; rank 0 then names the silent worker (and
  records it in the result file) before any worker blames rank 0. Only when rank
  0 itself is silent does a worker's limit expire first.
The limit counts from the start of a wait or from the last progress within it,
less any time this rank itself was not running (a gap of over PAUSE_S between
two polls: a suspended job, `scontrol suspend`, resumes without every wait
expiring at once). Collectives (barrier, all_ok) cannot tell who is missing, so
they name the phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fedmpi.errors import FedMPIError

DEFAULT_TIMEOUT_S = 600.0
ROUND_FACTOR = 10.0  # x the slowest round seen
WORKER_FACTOR = 2.0  # workers wait this much longer than rank 0 (see the module docstring)
PAUSE_S = 5.0  # a gap this long between two polls: this rank was stopped, not its peer silent


class LivenessError(FedMPIError):
    """A peer (or a collective) stayed silent past the liveness limit."""


@dataclass
class Liveness:
    """The rule above for one rank; `observe_round` feeds it the rounds as they pass."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    hub: bool = True  # rank 0
    slowest_round_s: float = 0.0

    def observe_round(self, seconds: float) -> None:
        if seconds > self.slowest_round_s:
            self.slowest_round_s = float(seconds)

    def limit(self) -> float:
        base = max(self.timeout_s, ROUND_FACTOR * self.slowest_round_s)
        return base if self.hub else WORKER_FACTOR * base

    def explain(self) -> str:
        """How the limit was reached, for the error message."""
        rule = (f"max(run.timeout_s {seconds(self.timeout_s)}, {ROUND_FACTOR:g} x slowest round "
                f"{seconds(self.slowest_round_s)})")
        return rule if self.hub else f"{WORKER_FACTOR:g} x {rule} on a worker rank"


class Stopwatch:
    """Time since a wait started or last made progress; `expired` is called every poll."""

    def __init__(self, limit: float, clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self.since = self.last = clock()

    def progress(self) -> None:
        self.since = self.clock()

    def expired(self) -> bool:
        now = self.clock()
        if now - self.last > PAUSE_S:  # we were stopped ourselves: not the peer's silence
            self.since += now - self.last
        self.last = now
        return now - self.since > self.limit


def seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 10 else f"{x:.1f} s"


def when(round: int | None) -> str:
    return "during start-up" if round is None or round < 0 else f"in round {round}"
