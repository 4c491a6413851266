"""Graceful stop on SIGTERM / SIGUSR1 / SIGINT (Slurm time limits, preemption, Ctrl-C).

Rank 0 only records the request: the round in progress finishes, a checkpoint
is written, the file is marked `interrupted` and the run exits with
EXIT_INTERRUPTED so a job script knows to requeue. Worker ranks only record it
too (the default action of these signals would kill them); the server stops
them. A second SIGINT (Ctrl-C) aborts: it raises KeyboardInterrupt, so the run
fails fast (file `failed`, resumable from its last checkpoint).

The handlers cover the whole life of a `fedmpi run` process:
- `install()` runs first thing in `python -m fedmpi run`, before mpi4py is
  imported: `MPI_Init` takes a noticeable time, and a signal then (Slurm's
  warning, a launcher forwarding a Ctrl-C) would otherwise kill the rank; the
  rank is learnt later (`set_rank`), and rank 0 reports a signal that came early;
- `release()` runs once the exit status is decided: the signals are then
  ignored, not reset. Python's interpreter shutdown puts every signal that has a
  Python handler back to its default action (death), and `MPI_Finalize` runs
  after that, waiting for the other ranks; an ignored signal stays ignored.
"""

from __future__ import annotations

import os
import signal

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later (resume)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopFlag:
    """What the signal handler recorded; `requested` is polled by the server."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.rank: int | None = None  # unknown until MPI is up
        self._sigints = 0
        self._announced = False

    @classmethod
    def install(cls, rank: int | None = None) -> StopFlag:
        """The process's flag (handlers installed once); `rank` when known."""
        flag = install()
        if rank is not None:
            flag.set_rank(rank)
        return flag

    def set_rank(self, rank: int) -> None:
        self.rank = rank
        if self.requested:  # a signal came before the rank was known
            self._announce()

    def handle(self, signum: int, _frame=None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt("second SIGINT (Ctrl-C): aborting the run")
        if not self.requested:
            self.requested = True
            self.signal_name = name
            self._announce()

    def _announce(self) -> None:
        if self.rank != 0 or self._announced:
            return
        self._announced = True
        again = "; Ctrl-C again to abort" if self.signal_name == "SIGINT" else ""
        # os.write, not print: a handler must not re-enter a buffered stream
        os.write(2, f"fedmpi: rank 0 got {self.signal_name}: stopping after this round "
                    f"(checkpoint, status 'interrupted'){again}\n".encode())


_flag: StopFlag | None = None


def install() -> StopFlag:
    """Install the handlers (once per process) and return the process's flag."""
    global _flag
    if _flag is None:
        _flag = StopFlag()
        for sig in SIGNALS:
            signal.signal(sig, _flag.handle)
    return _flag


def release() -> None:
    """The outcome is decided: ignore these signals until the process has exited."""
    global _flag
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _flag = None
