"""MPI point-to-point transport of framed uint8 buffers (the only module besides
`run` that touches mpi4py).

Why polling: MPICH's blocking calls spin a core at 100%; with a server and
workers sharing few cores that steals time from training. We poll with
`Improbe`/`Test` and sleep briefly instead, which also lets every wait notice a
FAIL message from another rank and fail fast instead of hanging.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from fedmpi.errors import FedMPIError
from fedmpi.wire import Kind

POLL_S = 0.0005
TAG_CONTROL = 1  # ASSIGN, STOP
TAG_MODEL = 2
TAG_UPDATE = 3
TAG_REPORT = 4
TAG_HELLO = 5
TAG_MEMORY = 6
TAG_FAIL = 9

TAG_OF = {
    Kind.ASSIGN: TAG_CONTROL,
    Kind.STOP: TAG_CONTROL,
    Kind.MODEL: TAG_MODEL,
    Kind.UPDATE: TAG_UPDATE,
    Kind.REPORT: TAG_REPORT,
    Kind.FAIL: TAG_FAIL,
}


class RemoteFailure(FedMPIError):
    """Another rank reported that it failed."""

    def __init__(self, rank: int, reason: str):
        self.rank = rank
        super().__init__(f"rank {rank} failed: {reason}")


class Transport:
    """Send and receive whole messages; never pickle."""

    def __init__(self, comm: MPI.Comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.pending: list[tuple[MPI.Request, np.ndarray]] = []

    def send(self, buf: np.ndarray, dest: int, tag: int) -> float:
        """Send and wait for completion (polling); returns seconds blocked."""
        t0 = time.perf_counter()
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)
        while not req.Test():
            self._check_failures()
            time.sleep(POLL_S)
        return time.perf_counter() - t0

    def post(self, buf: np.ndarray, dest: int, tag: int) -> float:
        """Start a send that completes later (see `complete`); keeps `buf` alive."""
        t0 = time.perf_counter()
        self.pending.append((self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag), buf))
        return time.perf_counter() - t0

    def complete(self) -> float:
        t0 = time.perf_counter()
        while self.pending:
            self.pending = [(r, b) for r, b in self.pending if not r.Test()]
            if self.pending:
                self._check_failures()
                time.sleep(POLL_S)
        return time.perf_counter() - t0

    def recv(self, source: int, tag: int) -> tuple[np.ndarray, int, float]:
        """Receive one message: probe, size it from the status, allocate, receive.

        Returns (buffer, source rank, seconds blocked).
        """
        t0 = time.perf_counter()
        status = MPI.Status()
        while True:
            msg = self.comm.Improbe(source=source, tag=tag, status=status)
            if msg is not None:
                break
            self._check_failures()
            time.sleep(POLL_S)
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        msg.Recv([buf, MPI.BYTE])
        return buf, status.Get_source(), time.perf_counter() - t0

    def barrier(self) -> None:
        """A barrier that sleeps while it waits and notices a failing rank."""
        req = self.comm.Ibarrier()
        while not req.Test():
            self._check_failures()
            time.sleep(0.01)

    def all_ok(self, ok: bool) -> bool:
        """True when every rank is ok; polls, so a failing rank is noticed meanwhile."""
        flag = np.array([1 if ok else 0], dtype=np.int32)
        out = np.empty(1, dtype=np.int32)
        req = self.comm.Iallreduce([flag, MPI.INT], [out, MPI.INT], op=MPI.MIN)
        while not req.Test():
            self._check_failures()
            time.sleep(0.01)
        return bool(out[0])

    def _check_failures(self) -> None:
        status = MPI.Status()
        msg = self.comm.Improbe(source=MPI.ANY_SOURCE, tag=TAG_FAIL, status=status)
        if msg is None:
            return
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        msg.Recv([buf, MPI.BYTE])
        raise RemoteFailure(status.Get_source(), _fail_reason(buf))

    def send_failure(self, dest: int, reason: str, wait_s: float) -> None:
        """Best effort: tell `dest` why we fail, then give it `wait_s` to react."""
        from fedmpi.wire import frame

        buf = frame(Kind.FAIL, round=0, client=-1, payload=reason.encode()[:4000])
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG_FAIL)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            req.Test()
            time.sleep(0.01)


def _fail_reason(buf: np.ndarray) -> str:
    from fedmpi.wire import WireFormatError, parse

    try:
        _, payload = parse(buf, expect_kind=Kind.FAIL)
        return bytes(payload).decode("utf-8", "replace")
    except WireFormatError as exc:
        return f"(unreadable failure message: {exc})"

