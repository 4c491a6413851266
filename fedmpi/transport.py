"""MPI point-to-point transport of framed uint8 buffers (the only module besides
`run` that touches mpi4py).

Why polling: MPICH's blocking calls spin a core at 100%; with a server and
workers sharing few cores that steals time from training. We poll with
`Improbe`/`Test` and sleep briefly instead, which also lets every wait notice a
FAIL message from another rank and fail fast instead of hanging, and gives every
wait a deadline (`fedmpi.liveness`): a peer silent past the limit raises
`LivenessError` naming this rank, the peer, the round and what was awaited.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from fedmpi.errors import FedMPIError
from fedmpi.liveness import Liveness, LivenessError, Stopwatch, seconds, when
from fedmpi.messages import TAG_NUMBER, TAGS, tag_of
from fedmpi.wire import Kind

POLL_S = 0.0005
_BLOCK = 1 << 30  # bytes per block of a post_parts datatype (MPI counts are C ints)
# MPI tags, from the protocol table (fedmpi.messages)
TAG_CONTROL = TAG_NUMBER["CONTROL"]  # ASSIGN, STOP
TAG_MODEL = TAG_NUMBER["MODEL"]
TAG_UPDATE = TAG_NUMBER["UPDATE"]
TAG_REPORT = TAG_NUMBER["REPORT"]
TAG_HELLO = TAG_NUMBER["HELLO"]
TAG_MEMORY = TAG_NUMBER["MEMORY"]
TAG_FAIL = TAG_NUMBER["FAIL"]
COLLECTIVE_POLL_S = 0.01

TAG_OF = {Kind(k): tag for k, tag in tag_of().items()}


class RemoteFailure(FedMPIError):
    """Another rank reported that it failed."""

    def __init__(self, rank: int, reason: str):
        self.rank = rank
        super().__init__(f"rank {rank} failed: {reason}")


class Transport:
    """Send and receive whole messages; never pickle. Every wait has a deadline.

    The waiting calls take `what` (the message awaited, e.g. "UPDATE of client 3")
    and `round` (None during start-up) only to say what was awaited when a peer
    stays silent past `liveness.limit()`.
    """

    def __init__(self, comm: MPI.Comm, liveness: Liveness | None = None):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.liveness = liveness or Liveness(hub=self.rank == 0)
        # posted sends: (request, what it keeps alive, dest, key, post time)
        self.pending: list[tuple[MPI.Request, object, int, object, float]] = []
        self.completed: dict = {}  # key -> seconds from post to completion, of `complete`
        self._posts = 0

    def send(self, buf: np.ndarray, dest: int, tag: int, *, what: str = "",
             round: int | None = None) -> float:
        """Send and wait for completion (polling); returns seconds blocked."""
        t0 = time.perf_counter()
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)
        self._wait(req.Test, POLL_S, lambda: f"rank {dest} did not take the "
                   f"{what or _tag_name(tag)} {when(round)}")
        return time.perf_counter() - t0

    def post(self, buf: np.ndarray, dest: int, tag: int, *, key=None) -> float:
        """Start a send that completes later (see `complete`); keeps `buf` alive.

        `key` names the post in `completed` (default: its number on this Transport).
        """
        t0 = time.perf_counter()
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)
        self._pend(req, buf, dest, key, t0)
        return time.perf_counter() - t0

    def post_parts(self, parts, dest: int, tag: int, *, key=None) -> float:
        """Post one message made of several uint8 arrays (e.g. a client's own 40-byte
        header and the broadcast payload all clients share), without joining them.

        Why: a broadcast re-framed per client held K copies of the model until the
        round's end. An hindexed MPI datatype over the parts' addresses, sent from
        MPI.BOTTOM, sends the same bytes as their concatenation (the receiver sees one
        message of sum(len) bytes) and copies nothing; blocks are split below 2**30
        bytes so any size fits MPI's int counts.
        """
        t0 = time.perf_counter()
        lengths, displs = [], []
        for part in parts:
            part = np.asarray(part)
            assert part.dtype == np.uint8 and part.ndim == 1 and part.flags.c_contiguous
            base = MPI.Get_address(part) if part.size else 0
            for off in range(0, part.size, _BLOCK):
                lengths.append(min(_BLOCK, part.size - off))
                displs.append(base + off)
        dtype = MPI.BYTE.Create_hindexed(lengths, displs).Commit()
        try:
            req = self.comm.Isend([MPI.BOTTOM, 1, dtype], dest=dest, tag=tag)
        finally:
            dtype.Free()  # MPI keeps it for the pending send
        self._pend(req, tuple(parts), dest, key, t0)
        return time.perf_counter() - t0

    def _pend(self, req, keep, dest: int, key, t0: float) -> None:
        self.pending.append((req, keep, dest, self._posts if key is None else key, t0))
        self._posts += 1

    def wait_message(self, source: int, tag: int, until: float, *, what: str = "",
                     round: int | None = None) -> bool:
        """Poll until a `tag` message from `source` is there (True) or `time.perf_counter()`
        passes `until` (False; at least one probe either way). FAIL messages and the
        liveness limit end it early, as in every other wait.
        """
        watch = Stopwatch(self.liveness.limit())
        while not self.comm.Iprobe(source=source, tag=tag):
            self._check_failures()
            if time.perf_counter() >= until:
                return False
            if watch.expired():
                peer = "" if source == MPI.ANY_SOURCE else f" from rank {source}"
                self._expired(watch.limit, f"no {what or _tag_name(tag)}{peer} {when(round)}")
            time.sleep(POLL_S)
        return True

    def complete(self, *, round: int | None = None) -> float:
        """Wait for every posted send; the deadline restarts whenever one completes."""
        t0 = time.perf_counter()
        watch = Stopwatch(self.liveness.limit())
        self.completed = {}
        while self.pending:
            before = len(self.pending)
            now, left = time.perf_counter(), []
            for p in self.pending:
                if p[0].Test():
                    self.completed[p[3]] = now - p[4]
                else:
                    left.append(p)
            self.pending = left
            if not self.pending:
                break
            if len(self.pending) < before:
                watch.progress()
            self._check_failures()
            if watch.expired():
                ranks = sorted({p[2] for p in self.pending})
                self._expired(watch.limit, f"rank(s) {_ranks(ranks)} did not take "
                              f"{len(self.pending)} posted message(s) {when(round)}")
            time.sleep(POLL_S)
        return time.perf_counter() - t0

    def recv(self, source: int, tag: int, *, what: str = "",
             round: int | None = None) -> tuple[np.ndarray, int, float]:
        """Receive one message: probe, size it from the status, allocate, receive.

        Returns (buffer, source rank, seconds blocked). With `MPI.ANY_SOURCE`,
        `what` should say which ranks are still owing.
        """
        t0 = time.perf_counter()
        status = MPI.Status()
        found = []

        def probe() -> bool:
            msg = self.comm.Improbe(source=source, tag=tag, status=status)
            if msg is not None:
                found.append(msg)
            return msg is not None

        peer = "" if source == MPI.ANY_SOURCE else f" from rank {source}"
        self._wait(probe, POLL_S, lambda: f"no {what or _tag_name(tag)}{peer} {when(round)}")
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        found[0].Recv([buf, MPI.BYTE])
        return buf, status.Get_source(), time.perf_counter() - t0

    def barrier(self, what: str = "a barrier") -> None:
        """A barrier that sleeps while it waits and notices a failing or silent rank."""
        req = self.comm.Ibarrier()
        self._wait(req.Test, COLLECTIVE_POLL_S,
                   lambda: f"not every rank reached {what} (some rank is stopped, hung or slow)")

    def all_ok(self, ok: bool, what: str = "an agreement of all ranks") -> bool:
        """True when every rank is ok; polls, so a failing or silent rank is noticed."""
        flag = np.array([1 if ok else 0], dtype=np.int32)
        out = np.empty(1, dtype=np.int32)
        req = self.comm.Iallreduce([flag, MPI.INT], [out, MPI.INT], op=MPI.MIN)
        self._wait(req.Test, COLLECTIVE_POLL_S,
                   lambda: f"not every rank reached {what} (some rank is stopped, hung or slow)")
        return bool(out[0])

    def _wait(self, done, poll_s: float, describe) -> None:
        """Poll `done()` until true; FAIL messages and the liveness limit end it early."""
        watch = Stopwatch(self.liveness.limit())
        while not done():
            self._check_failures()
            if watch.expired():
                self._expired(watch.limit, describe())
            time.sleep(poll_s)

    def _expired(self, limit: float, what: str) -> None:
        raise LivenessError(f"rank {self.rank}: {what} within {seconds(limit)} "
                            f"(liveness limit: {self.liveness.explain()})")

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


def _tag_name(tag: int) -> str:
    return TAGS[tag][1] if tag in TAGS else f"message with tag {tag}"


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


def _fail_reason(buf: np.ndarray) -> str:
    from fedmpi.wire import WireFormatError, parse

    try:
        _, payload = parse(buf, expect_kind=Kind.FAIL)
        return bytes(payload).decode("utf-8", "replace")
    except WireFormatError as exc:
        return f"(unreadable failure message: {exc})"

