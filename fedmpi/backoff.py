"""How a rank waits for MPI without a blocking call: spin, then back off (pure, no MPI).

Why not block: MPICH's blocking calls spin a core at 100% for as long as they wait,
and a worker waits for whole rounds; with a server and workers sharing a few cores
that steals the cores from training. Why not a fixed sleep: a sleep from the first
miss puts a floor of one sleep (0.5 ms before this module) under every message hop.

So a wait (see `Backoff`) does what mpi4py.futures does, with one more bound:
- spin first: for `spin_s` after the wait starts (or last made progress) it polls
  without sleeping, yielding the core between polls (`os.sched_yield`) so that an
  oversubscribed peer can run; a message that is already on its way is seen at once;
- then sleep, starting at `min_sleep_s` and doubling after every miss, up to
  `max_sleep_s`; and never longer than `LATE_FRACTION` of the time waited so far,
  so that a message arriving in the middle of a sleep is seen at most ~3% late
  (a 20 ms transfer of 64 MiB is not stretched by a 10 ms sleep);
- any progress (a posted send completed) starts the cycle over.
An idle rank thus wakes at most 1 / max_sleep_s times a second (500 with the
defaults, about 0.3% of a core), and a hop costs at most spin time plus 1/32 of
the wait, instead of a fixed half millisecond.

Linux lets a sleep run up to the thread's timer slack (50 us by default) late;
`precise_sleeps()` lowers it to 1 us for the calling thread, so that a 10 us
sleep is not a 60 us one (the transport calls it once).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass

LATE_FRACTION = 1 / 32  # a sleep never exceeds this share of the time waited so far

# Defaults (run.poll in the config; fedmpi.config declares the bounds).
SPIN_S = 1e-3
MIN_SLEEP_S = 1e-5
MAX_SLEEP_S = 2e-3


@dataclass(frozen=True)
class PollPolicy:
    """The three knobs of `run.poll`; see the module docstring."""

    spin_s: float = SPIN_S
    min_sleep_s: float = MIN_SLEEP_S
    max_sleep_s: float = MAX_SLEEP_S

    def __post_init__(self):
        if not (0 <= self.spin_s and 0 < self.min_sleep_s <= self.max_sleep_s):
            raise ValueError(f"poll policy needs spin_s >= 0 and 0 < min_sleep_s <= "
                             f"max_sleep_s, got {self}")

    @classmethod
    def of(cls, cfg) -> PollPolicy:
        """From the config's `run.poll` section (any object with the three attributes)."""
        return cls(float(cfg.spin_s), float(cfg.min_sleep_s), float(cfg.max_sleep_s))


yield_core = getattr(os, "sched_yield", lambda: None)  # one spin: let another thread run
PR_SET_TIMERSLACK = 29


def precise_sleeps(slack_ns: int = 1000) -> bool:
    """Lower this thread's timer slack (Linux; elsewhere a no-op); True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_TIMERSLACK, int(slack_ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Backoff:
    """One wait: call `pause()` after every poll that found nothing new.

    `clock`, `sleep` and `spin` are injectable so that the schedule is testable
    without waiting. `start` (a `clock()` reading) dates the wait from an earlier
    moment, e.g. from before a caller's own lean spin, so its spin phase counts.
    """

    def __init__(self, policy: PollPolicy, *, clock=time.perf_counter, sleep=time.sleep,
                 spin=yield_core, start: float | None = None):
        self.policy = policy
        self.clock, self._sleep, self._spin = clock, sleep, spin
        self.start = clock() if start is None else start
        self.delay = 0.0  # the last sleep; 0 while spinning
        self.slept = 0  # sleeps so far (for tests and curiosity)

    @property
    def spinning(self) -> bool:
        return self.delay == 0.0

    def progress(self) -> None:
        """Something completed: spin again, as the rest often follows closely."""
        self.start = self.clock()
        self.delay = 0.0

    def pause(self, cap: float | None = None) -> None:
        """Spin or sleep once; `cap` bounds this sleep (never below `min_sleep_s`)."""
        p = self.policy
        waited = self.clock() - self.start
        if waited < p.spin_s:
            self._spin()
            return
        delay = p.min_sleep_s if self.delay == 0.0 else min(2 * self.delay, p.max_sleep_s)
        if cap is not None:
            delay = min(delay, cap)
        self.delay = max(p.min_sleep_s, min(delay, LATE_FRACTION * waited))
        self.slept += 1
        self._sleep(self.delay)
