"""MPI point-to-point transport of framed uint8 buffers (the only module besides
`run` that touches mpi4py).

Why polling: MPICH's blocking calls spin a core at 100%; with a server and
workers sharing few cores that steals time from training. We poll with
`Improbe`/`Test`, spinning briefly and then sleeping with exponential backoff
(`fedmpi.backoff`, configured by `run.poll`), which also lets every wait notice a
FAIL message from another rank and fail fast instead of hanging, and gives every
wait a deadline (`fedmpi.liveness`): a peer silent past the limit raises
`LivenessError` naming this rank, the peer, the round and what was awaited.

Times are exact per message: `send` returns the seconds until the send completed;
each `post` is timed from its `Isend` to the poll that saw it complete, and
`complete_each` (or `complete`, then `.completed`) returns those times keyed by
the post, so a caller logs when each message really left, not when it was posted.

Transfers are progressed: a large message (rendezvous) or the server's non-contiguous
broadcast moves only while both its sender and its receiver call MPI, about one chunk
per call under MPICH's shared memory, so a rank that sleeps 2 ms between polls
stretches a 2.6 MB MODEL to ~0.3 s and a 44.7 MB one to ~5 s. While a matched receive
is under way or a posted send is still moving, every wait therefore sleeps at most
`TRANSFER_SLEEP_S` between polls (~10,000 polls a second, a few % of a core, and more
of the core a training rank shares). A posted send that has completed but whose time
its caller has not collected yet (rank 0's ASSIGN and MODELs, until the round's end)
does not count (`_sending`): counting it kept rank 0 polling that fast all round, which
took 2.5-3 points of round efficiency from the worker beside it (`fedmpi bench round`).
A wait whose transfer size is known (a `send`, a matched receive) spins for as long
as its bytes take at `TRANSFER_SPIN_BPS` (1 GB/s, below any shared-memory or HPC
network path; at most `TRANSFER_SPIN_MAX_S`) before it sleeps, as the transfer is
under way and ends soon: a sleep that ends late delays the next hop, which cost 3-7%
of an 8-16 MiB ping-pong under Open MPI with the policy's 1 ms spin alone.

Large messages are received one at a time, into a reused buffer. An earlier version
also started receiving up to 3 more messages that were already there (rendezvous
handshakes overlapping); with the lean receive path below it gained at most ~1% of
the bandwidth at 1 MiB under MPICH and cost 3-5% at 1-2 MiB under Open MPI (its
single-copy path writing into several buffers no longer in cache), so it went
(measured with `fedmpi bench transport` and an interleaved A/B of the two receivers).
A receive costs ~1 us of Python on top of MPI's own calls: `recv` probes first and
builds the closure a wait needs only when the message is not there yet, and a wait
spins with nothing but the poll before it sets up its backoff. For its first
`BUSY_SPIN_S` (0.1 ms) it does not even yield the core between polls: a `sched_yield`
costs ~1 us on this VM, which delayed seeing a message and took a 1 MiB hop under
Open MPI from 1.04x plain's time to 1.05-1.06x (two A/B pairs of `fedmpi bench
transport`); after it, a spinning rank yields between polls, so that a rank sharing
its core still runs. Ranks that share cores (more ranks on the node than cores this
rank may use, e.g. 3 ranks on 2) never spin without yielding (`busy_spin_s`): there a
non-yielding spin held a core another rank needed, 5-10% of the per-client time at
1,000 MLP clients a round (`fedmpi bench scale`).

Large receive buffers are reused: a fresh 32 MiB `np.empty` costs ~4 ms of page
faults (two times the transfer itself on this VM), so `recv` keeps the last
`SPARE_BUFFERS` large buffers it returned and hands one out again once nothing
else refers to it (its reference count says so: a caller still holding the
buffer, a view, a memoryview or a tensor made from it keeps it out of reuse).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from fedmpi.backoff import Backoff, PollPolicy, precise_sleeps, yield_core
from fedmpi.devices import env_local_rank
from fedmpi.errors import FedMPIError
from fedmpi.liveness import Liveness, LivenessError, Stopwatch, seconds, when
from fedmpi.messages import TAG_NUMBER, TAGS, tag_of
from fedmpi.wire import Kind

# MPI tags, from the protocol table (fedmpi.messages)
TAG_CONTROL = TAG_NUMBER["CONTROL"]  # ASSIGN, STOP
TAG_MODEL = TAG_NUMBER["MODEL"]
TAG_UPDATE = TAG_NUMBER["UPDATE"]
TAG_REPORT = TAG_NUMBER["REPORT"]
TAG_HELLO = TAG_NUMBER["HELLO"]
TAG_MEMORY = TAG_NUMBER["MEMORY"]
TAG_FAIL = TAG_NUMBER["FAIL"]
_BLOCK = 1 << 30  # bytes per block of a post_parts datatype (MPI counts are C ints)
TRANSFER_SLEEP_S = 1e-4  # longest sleep of a wait while a transfer is under way
TRANSFER_SPIN_BPS = 1e9  # a wait for a transfer of n bytes spins >= n / this (module doc)
TRANSFER_SPIN_MAX_S = 0.05  # ... but no longer than this
BUSY_SPIN_S = 1e-4  # a wait's spin polls without yielding its core this long (module doc)
FAILURE_GRACE_S = 0.05  # how long a wait that saw a FAIL polls its own completion first
SPARE_BUFFERS = 2  # large receive buffers kept for reuse (module docstring)
SPARE_MIN_BYTES = 64 << 10  # smaller ones are cheap to allocate

TAG_OF = {Kind(k): tag for k, tag in tag_of().items()}
_STALLED = "some rank is stopped, hung or slow"


class RemoteFailure(FedMPIError):
    """Another rank reported that it failed."""

    def __init__(self, rank: int, reason: str):
        self.rank = rank
        super().__init__(f"rank {rank} failed: {reason}")


@dataclass(eq=False)
class Posted:
    """A send started by `Transport.post`; `buf` stays referenced until it completes."""

    key: Hashable
    request: MPI.Request
    buf: object  # what the send reads (an array, or the parts of post_parts)
    dest: int
    started: float  # perf_counter() just before the Isend


class Transport:
    """Send and receive whole messages; never pickle. Every wait has a deadline.

    The waiting calls take `what` (the message awaited, e.g. "UPDATE of client 3")
    and `round` (None during start-up) only to say what was awaited when a peer
    stays silent past `liveness.limit()`. `poll` (the config's `run.poll`) sets how
    waits spin and back off; it may be replaced at any time (`fedmpi run` does once
    the config is read).
    """

    def __init__(self, comm: MPI.Comm, liveness: Liveness | None = None,
                 poll: PollPolicy | None = None):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.liveness = liveness or Liveness(hub=self.rank == 0)
        self.poll = poll or PollPolicy()
        self.pending: list[Posted] = []
        self._scanned = (self.pending, 0)  # `_sending`: pending[:i] seen complete
        self.completed: dict[Hashable, float] = {}  # of the last `complete`
        self._posts = 0
        self._spare: list[np.ndarray] = []  # large buffers recv returned, newest last
        self._status = MPI.Status()  # reused by recv: one fewer allocation a message
        self._failure: RemoteFailure | None = None  # seen, kept for the next wait
        self.busy_spin_s = busy_spin_s(os.environ)  # how long a spin polls without yielding
        precise_sleeps()

    def send(self, buf: np.ndarray, dest: int, tag: int, *, what: str = "",
             round: int | None = None) -> float:
        """Send and wait for completion (polling); returns seconds until it completed."""
        t0 = time.perf_counter()
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag)
        self._wait(req.Test, lambda: f"rank {dest} did not take the "
                   f"{what or _tag_name(tag)} {when(round)}", spin_s=self._spin_s(buf.nbytes))
        return time.perf_counter() - t0

    def post(self, buf: np.ndarray, dest: int, tag: int, *, key: Hashable = None) -> float:
        """Start a send that completes later; returns the seconds the post took.

        `key` names the post in what `complete_each` / `test_posted` / `completed`
        return (default: the number of posts before this one on this Transport).
        `buf` is kept alive until the send completes.
        """
        t0 = time.perf_counter()
        self._pend(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag), buf, dest, key, t0)
        return time.perf_counter() - t0

    def post_parts(self, parts, dest: int, tag: int, *, key: Hashable = None) -> float:
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

    def _pend(self, req, keep, dest: int, key: Hashable, t0: float) -> None:
        """Track a posted send; `keep` (what it reads) stays referenced until it completes."""
        self.pending.append(Posted(self._posts if key is None else key, req, keep, dest, t0))
        self._posts += 1

    def wait_message(self, source: int, tag: int, until: float, *, what: str = "",
                     round: int | None = None) -> bool:
        """Poll until a `tag` message from `source` is there (True) or `time.perf_counter()`
        passes `until` (False; at least one probe either way). FAIL messages and the
        liveness limit end it early, as in every other wait.
        """
        watch = Stopwatch(self.liveness.limit())
        backoff = Backoff(self.poll)

        def there() -> bool:
            return self.comm.Iprobe(source=source, tag=tag)

        while not there():
            if not backoff.spinning and self._check_failures(there):
                return True  # it came; the failure is raised by the next wait
            if time.perf_counter() >= until:
                return False
            if watch.expired():
                peer = "" if source == MPI.ANY_SOURCE else f" from rank {source}"
                self._expired(watch.limit, f"no {what or _tag_name(tag)}{peer} {when(round)}")
            backoff.pause()
        return True

    def test_posted(self) -> dict[Hashable, float]:
        """Without waiting: the posts that completed since they were last looked at.

        Maps each post's key to its send time, from its `Isend` to this call (so
        the time is exact when this is called often, e.g. between training steps).
        """
        if not self.pending:
            return {}
        done = MPI.Request.Testsome([p.request for p in self.pending])
        if not done:
            return {}
        now = time.perf_counter()
        finished = set(done)
        out = {self.pending[i].key: now - self.pending[i].started for i in sorted(finished)}
        self.pending = [p for i, p in enumerate(self.pending) if i not in finished]
        return out

    def complete_each(self, *, round: int | None = None,
                      at_most: int = 0) -> dict[Hashable, float]:
        """Wait until at most `at_most` posted sends are pending (default: all done).

        Returns {key: seconds from the post's `Isend` to the poll that saw it
        complete} for every post that completed in this call. The deadline
        restarts (and the backoff spins again) whenever one completes.
        """
        out = self.test_posted()
        if len(self.pending) <= at_most:
            return out
        watch = Stopwatch(self.liveness.limit())
        backoff = Backoff(self.poll)

        def settled() -> bool:  # for a FAIL seen meanwhile (_check_failures)
            out.update(self.test_posted())
            return len(self.pending) <= at_most

        while True:
            if not backoff.spinning and self._check_failures(settled):
                return out  # the failure is raised by the next wait
            if watch.expired():
                ranks = sorted({p.dest for p in self.pending})
                self._expired(watch.limit, f"rank(s) {_ranks(ranks)} did not take "
                              f"{len(self.pending)} posted message(s) {when(round)}")
            backoff.pause()
            done = self.test_posted()
            if done:
                out.update(done)
                if len(self.pending) <= at_most:
                    return out
                watch.progress()
                backoff.progress()

    def complete(self, *, round: int | None = None) -> float:
        """Wait for every posted send; returns the seconds blocked.

        The per-message send times of the posts completed in this call are left
        in `self.completed` (see `complete_each`).
        """
        t0 = time.perf_counter()
        self.completed = self.complete_each(round=round)
        return time.perf_counter() - t0

    def recv(self, source: int, tag: int, *, what: str = "",
             round: int | None = None) -> tuple[np.ndarray, int, float]:
        """Receive one message: probe, size it from the status, allocate, receive.

        Returns (buffer, source rank, seconds blocked). With `MPI.ANY_SOURCE`,
        `what` should say which ranks are still owing.
        """
        t0 = time.perf_counter()
        if self._failure is not None:  # seen by the last wait (_check_failures)
            raise self._failure
        status = self._status
        msg = self.comm.Improbe(source, tag, status)
        if msg is None:  # not there yet: wait for it (the common case needs no closure)
            found = []

            def probe() -> bool:
                found.append(self.comm.Improbe(source, tag, status))
                return found[-1] is not None

            peer = "" if source == MPI.ANY_SOURCE else f" from rank {source}"
            self._wait(probe, lambda: f"no {what or _tag_name(tag)}{peer} {when(round)}")
            msg = found[-1]
        buf = self._buffer(status.Get_count(MPI.BYTE))
        # The matched receive polls too: a large message (rendezvous, or the server's
        # non-contiguous broadcast, packed as the sender progresses) needs its sender
        # until the last byte, and a blocking Recv would hang for good on a sender that
        # stops mid-transfer (found with a SIGSTOPped rank 0).
        src = status.Get_source()
        req = msg.Irecv([buf, MPI.BYTE])
        if not req.Test():
            self._finish(req, src, buf.nbytes, what, tag, round)
        return buf, src, time.perf_counter() - t0

    def _finish(self, req, src: int, nbytes: int, what: str, tag: int,
                round: int | None) -> None:
        """Wait for a matched receive to complete (its transfer is under way)."""
        self._wait(req.Test, lambda: f"rank {src} did not finish sending the "
                   f"{what or _tag_name(tag)} {when(round)}", transfer=True,
                   spin_s=self._spin_s(nbytes))

    def _spin_s(self, nbytes: int) -> float:
        """How long a wait for a transfer of `nbytes` spins (module doc): the policy's
        spin, stretched to the time the bytes take at `TRANSFER_SPIN_BPS`."""
        spin = self.poll.spin_s
        return max(spin, min(nbytes / TRANSFER_SPIN_BPS, TRANSFER_SPIN_MAX_S)) if spin else 0.0

    def _buffer(self, n: int) -> np.ndarray:
        """An uninitialised uint8 buffer of `n` bytes, reusing a large spare if one is free."""
        if n < SPARE_MIN_BYTES:
            return np.empty(n, dtype=np.uint8)
        for i in reversed(range(len(self._spare))):  # the most recently used first (cached)
            # references: the list and getrefcount's argument; any more is a user's
            if n <= len(self._spare[i]) <= 2 * n and sys.getrefcount(self._spare[i]) <= 2:
                spare = self._spare.pop(i)
                self._spare.append(spare)
                return spare[:n]
        buf = np.empty(n, dtype=np.uint8)
        self._spare.append(buf)
        if len(self._spare) > SPARE_BUFFERS:
            self._spare.pop(0)
        return buf

    def barrier(self, what: str = "a barrier") -> None:
        """A barrier that sleeps while it waits and notices a failing or silent rank."""
        req = self.comm.Ibarrier()
        self._wait(req.Test, lambda: f"not every rank reached {what} ({_STALLED})")

    def all_ok(self, ok: bool, what: str = "an agreement of all ranks") -> bool:
        """True when every rank is ok; polls, so a failing or silent rank is noticed."""
        flag = np.array([1 if ok else 0], dtype=np.int32)
        out = np.empty(1, dtype=np.int32)
        req = self.comm.Iallreduce([flag, MPI.INT], [out, MPI.INT], op=MPI.MIN)
        self._wait(req.Test, lambda: f"not every rank reached {what} ({_STALLED})")
        return bool(out[0])

    def _wait(self, done, describe, *, transfer: bool = False,
              spin_s: float | None = None) -> None:
        """Poll `done()` until true, spinning then backing off (`self.poll`); FAIL
        messages (checked once the spin is over) and the liveness limit end it early.
        While a transfer is under way (`transfer`: a matched receive) or posted sends are
        pending, sleeps stay under `TRANSFER_SLEEP_S`; `spin_s` replaces the policy's spin
        (a transfer's: `_spin_s`; module doc)."""
        if self._failure is not None:  # seen by the last wait, which had its answer
            raise self._failure
        if done():
            return
        start = time.perf_counter()
        spin_until = start + (self.poll.spin_s if spin_s is None else spin_s)
        busy_until = start + self.busy_spin_s
        while True:  # the spin, lean: nothing but the poll (and, after busy_spin_s, a yield)
            if done():
                return
            now = time.perf_counter()
            if now >= spin_until:
                break
            if now >= busy_until:
                yield_core()
        watch = Stopwatch(self.liveness.limit())
        backoff = Backoff(self.poll, start=start)  # its spin is over
        while True:
            if not backoff.spinning and self._check_failures(done):
                return  # done; the failure is raised by the next wait
            if watch.expired():
                self._expired(watch.limit, describe())
            backoff.pause(TRANSFER_SLEEP_S if transfer or self._sending() else None)
            if done():
                return

    def _sending(self) -> bool:
        """Whether a posted send is still moving. A completed one stays in `pending`
        until its caller collects its time (`complete_each`, `settle`); counting it
        would keep every wait polling at `TRANSFER_SLEEP_S` for nothing, stealing
        the core of whatever trains beside this rank. `Get_status` drives MPI's
        progress like `Test` but leaves the request for its caller to complete."""
        pending, i = self._scanned
        if pending is not self.pending:  # replaced (sends collected): scan it afresh
            pending, i = self.pending, 0
        while i < len(pending) and pending[i].request.Get_status():
            i += 1  # pending[:i] have completed: O(1) a poll with 1,000 MODELs posted
        self._scanned = (pending, i)
        return i < len(pending)

    def _expired(self, limit: float, what: str) -> None:
        raise LivenessError(f"rank {self.rank}: {what} within {seconds(limit)} "
                            f"(liveness limit: {self.liveness.explain()})")

    def _check_failures(self, done) -> bool:
        """Raise `RemoteFailure` if a rank said it failed (now or at an earlier wait).

        `done` is what the caller awaits: a failure that arrives while the awaited
        thing is completing anyway is kept for the next wait and True is returned: a
        collective that the failed rank already finished (the configuration check
        before rank 0 opens its file) completes here too within a few polls, and the
        failure is then raised where the run can still record it.
        """
        if self._failure is not None:
            raise self._failure
        status = MPI.Status()
        msg = self.comm.Improbe(source=MPI.ANY_SOURCE, tag=TAG_FAIL, status=status)
        if msg is None:
            return False
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        msg.Recv([buf, MPI.BYTE])
        failure = RemoteFailure(status.Get_source(), _fail_reason(buf))
        grace = time.perf_counter() + FAILURE_GRACE_S
        while time.perf_counter() < grace:
            if done():
                self._failure = failure
                return True
            yield_core()
        raise failure

    def send_failure(self, dest: int, reason: str, wait_s: float) -> None:
        """Best effort: tell `dest` why we fail, then give it `wait_s` to react."""
        from fedmpi.wire import frame

        buf = frame(Kind.FAIL, round=0, client=-1, payload=reason.encode()[:4000])
        req = self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=TAG_FAIL)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            req.Test()
            time.sleep(0.01)


def busy_spin_s(env, cores: int | None = None) -> float:
    """How long a wait's spin polls without yielding its core (module doc): `BUSY_SPIN_S`
    when the node's ranks (as the launcher exported them, `env`) have a core each of
    the `cores` this rank may use, else 0; 0 as well when the launcher said nothing."""
    found = env_local_rank(env)
    if found is None or found[1] is None:
        return 0.0
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return BUSY_SPIN_S if found[1] <= cores else 0.0


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

