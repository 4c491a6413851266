"""Graceful stop on SIGTERM / SIGUSR1 (Slurm time limits, preemption, `scancel --signal`).

Rank 0 only records the request: the round in progress finishes, a checkpoint
is written, the file is marked `interrupted` and the run exits with
EXIT_INTERRUPTED so a job script knows to requeue. Worker ranks ignore these
signals (the default action of SIGUSR1 would kill them); the server stops them.
"""

from __future__ import annotations

import os
import signal

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later (resume)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    @classmethod
    def install(cls, rank: int) -> "StopFlag":
        flag = cls()

        def handler(signum, _frame):
            if rank == 0 and not flag.requested:
                flag.signal_name = signal.Signals(signum).name
                # os.write, not print: a handler must not re-enter a buffered stream
                os.write(2, f"fedmpi: rank 0 got {flag.signal_name}: stopping after this "
                            "round (checkpoint, status 'interrupted')\n".encode())
            flag.requested = True

        for sig in SIGNALS:
            signal.signal(sig, handler)
        return flag
