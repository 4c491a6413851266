"""A channel: send and receive protocol messages, each logged exactly once, here.

Exact byte accounting needs one ledger row per message on each end (see
`accounting`). Before this module every send and receive in the server and the
worker was hand-paired with its `ledger.log(...)` call; a forgotten or doubled one
only showed up as an AccountingError at the end of a round. Here a send frames
(or takes a framed) message, hands it to the transport and logs it; a receive
takes it from the transport, validates it with the strict reader given (from
`fedmpi.protocol`) and logs it. The row's kind, round and client come from the
message header itself, its direction from which end this is (the server sends
down, workers send up), its worker from the peer.

`server.py` and `worker.py` call only this for messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedmpi import accounting, protocol, wire
from fedmpi.liveness import when
from fedmpi.transport import TAG_OF, Transport
from fedmpi.wire import Kind

SERVER = 0
DECODED = (Kind.MODEL, Kind.UPDATE)
_XFER = accounting.VIEW_DTYPE.names.index("xfer_s")  # in a ledger row tuple  # kinds whose receive time is decode time (codec_s)


@dataclass(frozen=True)
class Outgoing:
    """A framed message and what its sender's ledger row says about its contents."""

    buf: np.ndarray
    kind: Kind
    round: int
    client: int
    codec_id: int = 0  # non-zero for encoded tensors (MODEL, UPDATE, MEMORY)
    numel: int = 0
    nnz: int = 0
    codec_s: float = 0.0  # encode seconds
    # Readdressed (`to`): this message's own header; `buf` is then the original message,
    # whose payload it shares (sent as header + buf[HEADER_SIZE:], never joined)
    head: np.ndarray | None = None

    def to(self, client: int, *, codec_s: float = 0.0) -> "Outgoing":
        """The same message addressed to another client: a new 40-byte header, the
        payload shared, not copied (`codec_s`: what this copy's row logs as encode time)."""
        return replace(self, head=wire.header_for(self.buf, client=client), client=int(client),
                       codec_s=codec_s)

    @property
    def nbytes(self) -> int:
        return len(self.buf)

    def joined(self) -> np.ndarray:
        """The whole message as one new buffer (a readdressed one is copied)."""
        if self.head is None:
            return self.buf
        out = self.buf.copy()
        out[:wire.HEADER_SIZE] = self.head
        return out


def message(kind: Kind, *, round: int, client: int = -1, payload=b"", n_tensors: int = 0,
            codec_id: int = 0, numel: int = 0, nnz: int = 0, codec_s: float = 0.0
            ) -> Outgoing:
    """Frame a message (control messages: just kind, round and payload)."""
    buf = wire.frame(kind, round=round, client=client, payload=payload, codec_id=codec_id,
                     n_tensors=n_tensors)
    return Outgoing(buf, Kind(kind), int(round), int(client), codec_id, numel, nnz, codec_s)


def encoded(kind: Kind, enc, *, round: int, client: int, codec_id: int, n_tensors: int,
            codec_s: float = 0.0) -> Outgoing:
    """Frame a compressor's `Encoded` (its payload, entries and non-zeros)."""
    return message(kind, round=round, client=client, payload=enc.payload, n_tensors=n_tensors,
                   codec_id=codec_id, numel=enc.numel, nnz=enc.nnz, codec_s=codec_s)


def state_message(state, *, round: int, client: int) -> Outgoing:
    """A MEMORY message: a compressor state (named float32 arrays), dense."""
    payload, numel = protocol.state_payload(state)
    return message(Kind.MEMORY, round=round, client=client, payload=payload,
                   n_tensors=len(state), codec_id=protocol.STATE_CODEC, numel=numel, nnz=numel)


@dataclass
class _Later:
    """A posted send: its request, the buffer kept alive until it completes, its row."""

    req: Any
    buf: np.ndarray
    msg: Outgoing
    peer: int
    blocked: float  # seconds the sender spent in it so far
    row: dict


@dataclass(frozen=True)
class Received:
    value: Any  # what the reader returned
    src: int
    waited: float  # seconds blocked in the receive
    read_s: float  # seconds in the reader (decode time for MODEL / UPDATE)


class Channel:
    """One rank's end of the protocol: a transport and this rank's ledger."""

    def __init__(self, transport: Transport):
        self.net = transport
        self.rank = transport.rank
        self.ledger = accounting.Ledger()
        self.later: list[_Later] = []  # posted by `send_later`, oldest first
        self._posted: dict[int, int] = {}  # post key -> its ledger row, until completed
        self._keys = 0

    @property
    def liveness(self):
        return self.net.liveness

    def _worker(self, peer: int) -> int:
        return peer if self.rank == SERVER else self.rank

    def send(self, msg: Outgoing, peer: int, *, post: bool = False, tag: int | None = None,
             log_round: int | None = None, what: str = "", tamper: Callable | None = None,
             **row) -> float:
        """Send (or post, completed by `complete`) and log it; returns seconds blocked.

        `tamper(buf)` lets fault injection alter the bytes after framing; `row` adds
        UPDATE fields (compute_s, train_loss, samples); `log_round` logs another round
        than the header's (start-up messages: -1). A posted message's row logs, once
        `complete` has seen it complete, the seconds from its post to its completion.
        A readdressed message (`Outgoing.to`) is posted as its header + the shared
        payload, with no copy.
        """
        tag = TAG_OF[msg.kind] if tag is None else tag
        if tamper is not None or (msg.head is not None and not post):
            buf = msg.joined() if tamper is None else tamper(msg.joined())
            msg = replace(msg, buf=buf, head=None)
        key = None
        if post:
            key, self._keys = self._keys, self._keys + 1
            if msg.head is not None:
                xfer = self.net.post_parts((msg.head, msg.buf[wire.HEADER_SIZE:]), peer, tag,
                                           key=key)
            else:
                xfer = self.net.post(msg.buf, peer, tag, key=key)
        else:
            xfer = self.net.send(msg.buf, peer, tag, what=what, round=msg.round)
        if key is not None:
            self._posted[key] = len(self.ledger.rows)
        self.ledger.log(round=msg.round if log_round is None else log_round, kind=msg.kind,
                        client=msg.client, worker=self._worker(peer), nbytes=msg.nbytes,
                        dense_bytes=4 * msg.numel, numel=msg.numel, nnz=msg.nnz,
                        codec_id=msg.codec_id, codec_s=msg.codec_s, xfer_s=xfer,
                        direction=self._direction(sending=True), **row)
        return xfer

    def send_later(self, msg: Outgoing, peer: int, *, tamper: Callable | None = None,
                   **row) -> None:
        """Post a send and return at once (the caller goes on working: a worker trains its
        next client); `settle` completes it. Its row is logged on completion, with the
        seconds the sender was blocked by it (the post and the wait in `settle`)."""
        buf = msg.buf if tamper is None else tamper(msg.buf)
        post_s = self.net.post(buf, peer, TAG_OF[msg.kind], key=("later", id(buf)))
        req = self.net.pending[-1].request  # the transport keeps `buf` alive until it completes
        self.later.append(_Later(req, buf, msg, peer, post_s, row))

    def settle(self, *, keep: int = 0, round: int | None = None) -> float:
        """Complete posted `send_later` messages, oldest first, until at most `keep` are in
        flight (the finished ones too: their rows are logged); returns seconds blocked."""
        t0 = time.perf_counter()
        while self.later:
            first = self.later[0]
            if len(self.later) > keep:
                t = time.perf_counter()
                self.net._wait(first.req.Test, lambda: (
                    f"rank {first.peer} did not take the {first.msg.kind.name} of client "
                    f"{first.msg.client} {when(round)}"))
                first.blocked += time.perf_counter() - t
            elif not first.req.Test():
                break
            self.later.pop(0)
            # the transport's list keeps the buffer alive until now; drop it there too
            self.net.pending = [p for p in self.net.pending if p.request is not first.req]
            self.ledger.log(round=first.msg.round, kind=first.msg.kind, client=first.msg.client,
                            worker=self._worker(first.peer), nbytes=len(first.buf),
                            dense_bytes=4 * first.msg.numel, numel=first.msg.numel,
                            nnz=first.msg.nnz, codec_id=first.msg.codec_id,
                            codec_s=first.msg.codec_s, xfer_s=first.blocked,
                            direction=self._direction(sending=True), **first.row)
        return time.perf_counter() - t0

    def recv(self, kind: Kind, peer: int, read: Callable[[np.ndarray, int], Any], *,
             tag: int | None = None, log_round: int | None = None, what: str = "",
             round: int | None = None) -> Received:
        """Receive a `kind` message (`tag`: its tag, if not the kind's), read it, log it.

        `read(buf, src)` is the strict reader; it raises WireFormatError for anything
        wrong, before anything is logged.
        """
        buf, src, waited = self.net.recv(peer, TAG_OF[kind] if tag is None else tag,
                                         what=what, round=round)
        t0 = time.perf_counter()
        value = read(buf, src)
        read_s = time.perf_counter() - t0
        h = wire.parse_header(buf)  # the reader accepted it: its header is what it says
        self.ledger.log(round=h.round if log_round is None else log_round, kind=h.kind,
                        client=h.client, worker=self._worker(src), nbytes=len(buf),
                        codec_s=read_s if h.kind in DECODED else 0.0, xfer_s=waited,
                        direction=self._direction(sending=False))
        return Received(value, src, waited, read_s)

    def report(self, round: int, *, tamper: Callable | None = None) -> None:
        """A worker's REPORT: its log of the round, which includes this very message
        (its size is known before it is framed)."""
        if self.later:
            raise RuntimeError("REPORT before every posted message was settled")
        rows = self.ledger.rows
        size = wire.HEADER_SIZE + (len(rows) + 1) * accounting.VIEW_DTYPE.itemsize
        self.ledger.log(round=round, kind=Kind.REPORT, client=-1, worker=self.rank, nbytes=size,
                        direction=accounting.UP)
        buf = wire.frame(Kind.REPORT, round=round, client=-1,
                         payload=accounting.report_payload(self.ledger.drain()))
        assert len(buf) == size, (len(buf), size)
        self.net.send(buf, SERVER, TAG_OF[Kind.REPORT], what="REPORT", round=round)

    def drain(self) -> np.ndarray:
        """This round's rows (the server joins them with the workers' reports)."""
        if self._posted:  # their send times are not known yet
            raise RuntimeError(f"{len(self._posted)} posted message(s) not completed "
                               "before the ledger was drained")
        return self.ledger.drain()

    def complete(self, *, round: int | None = None) -> float:
        """Wait for every posted message; their rows get their send times (post to
        completion, as the transport saw it). Returns the seconds blocked here."""
        waited = self.net.complete(round=round)
        done = self.net.completed
        for key in list(self._posted):
            if key in done:
                i = self._posted.pop(key)
                row = list(self.ledger.rows[i])
                row[_XFER] = float(done[key])
                self.ledger.rows[i] = tuple(row)
        return waited

    def recv_by(self, until: float, kind: Kind, peer: int, read: Callable, **kw
                ) -> Received | None:
        """`recv`, if a `kind` message from `peer` arrives before `time.perf_counter()`
        reaches `until`; else None (nothing received, nothing logged)."""
        tag = kw.get("tag")
        t0 = time.perf_counter()
        if not self.net.wait_message(peer, TAG_OF[kind] if tag is None else tag, until,
                                     what=kw.get("what", ""), round=kw.get("round")):
            return None
        before = time.perf_counter() - t0
        got = self.recv(kind, peer, read, **kw)
        row = list(self.ledger.rows[-1])  # its row: blocked = the wait + the receive
        row[_XFER] += before
        self.ledger.rows[-1] = tuple(row)
        return replace(got, waited=got.waited + before)

    def _direction(self, *, sending: bool) -> int:
        server_sends = (self.rank == SERVER) == sending
        return accounting.DOWN if server_sends else accounting.UP
