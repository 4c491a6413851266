"""The channel logs every message itself, once, from the message header; the
protocol drivers (server.py, worker.py) never write a ledger row by hand."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fedmpi import accounting, protocol
from fedmpi.channel import Channel, message, state_message
from fedmpi.liveness import Liveness
from fedmpi.transport import TAG_CONTROL, TAG_HELLO, TAG_MEMORY, TAG_REPORT
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError

ROOT = Path(__file__).resolve().parents[2] / "fedmpi"


class FakeTransport:
    """What the channel uses of Transport, recording instead of sending."""

    def __init__(self, rank, inbox=()):
        self.rank = rank
        self.liveness = Liveness(hub=rank == 0)
        self.sent, self.inbox = [], list(inbox)
        self.posted, self.completed = [], {}

    def send(self, buf, dest, tag, *, what="", round=None):
        self.sent.append(("send", bytes(buf), dest, tag))
        return 0.25

        self.posted, self.completed = [], {}

    def post(self, buf, dest, tag, *, key=None):
        self.sent.append(("post", bytes(buf), dest, tag))
        self.posted.append(key)
        return 0.0

    def post_parts(self, parts, dest, tag, *, key=None):
        self.sent.append(("post_parts", b"".join(bytes(p) for p in parts), dest, tag))
        self.posted.append(key)
        return 0.0

    def recv(self, source, tag, *, what="", round=None):
        buf, src, want = self.inbox.pop(0)
        assert want == tag
        return np.frombuffer(buf, np.uint8).copy(), src, 0.5

    def complete(self, *, round=None):
        self.completed = {k: 0.125 for k in self.posted}  # as if each took 0.125 s
        self.posted = []
        return 0.0


def test_no_driver_writes_a_ledger_row_by_hand():
    for name in ("server.py", "worker.py"):
        tree = ast.parse((ROOT / name).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "log"]
        assert not calls, f"{name} calls .log() at line {calls[0].lineno}"
        assert "ledger" not in (ROOT / name).read_text(), name
    # and the channel is the only module of the package that logs messages
    loggers = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")
                     if ".ledger.log(" in p.read_text() or "Ledger()" in p.read_text())
    assert loggers == ["channel.py"]


def test_a_sent_message_is_logged_from_its_header_and_the_senders_side():
    server = Channel(FakeTransport(0))
    msg = message(Kind.ASSIGN, round=3, payload=protocol.assign_payload(0, [4]))
    server.send(msg, 2, post=True)
    server.complete()
    # MEMORY travels downward only (start-up: a worker rank's replica, client -1)
    server.send(state_message({"a": np.ones((2, 3), np.float32)}, round=0, client=-1), 2,
                log_round=-1)
    worker = Channel(FakeTransport(2))
    report = message(Kind.REPORT, round=3, payload=b"x" * 7)
    worker.send(report, 0)
    (s, m), (w,) = server.drain(), worker.drain()
    assert (s["round"], s["kind"], s["client"], s["worker"], s["direction"], s["bytes"]) == \
        (3, Kind.ASSIGN, -1, 2, accounting.DOWN, len(msg.buf))
    assert [x[2:] for x in server.net.sent] == [(2, TAG_CONTROL), (2, TAG_MEMORY)]
    assert (m["round"], m["kind"], m["client"], m["worker"], m["direction"], m["numel"],
            m["nnz"], m["dense_bytes"], m["codec_id"], m["xfer_s"]) == \
        (-1, Kind.MEMORY, -1, 2, accounting.DOWN, 6, 6, 24, protocol.STATE_CODEC, 0.25)
    assert (w["round"], w["kind"], w["worker"], w["direction"], w["bytes"], w["xfer_s"]) == \
        (3, Kind.REPORT, 2, accounting.UP, len(report.buf), 0.25)
    assert worker.net.sent[0][2:] == (0, TAG_REPORT)


def test_a_received_message_is_read_then_logged_and_a_refused_one_is_not():
    hello = message(Kind.REPORT, round=0, payload=protocol.hello_payload("h", "cpu"))
    net = FakeTransport(0, [(bytes(hello.buf), 1, TAG_HELLO), (b"\0" * 50, 2, TAG_HELLO)])
    ch = Channel(net)
    got = ch.recv(Kind.REPORT, 1, lambda buf, src: protocol.read_hello(buf, src=src),
                  tag=TAG_HELLO, log_round=-1)
    assert got.value == {"host": "h", "device": "cpu"} and got.src == 1 and got.waited == 0.5
    with pytest.raises(WireFormatError, match="hello from rank 2"):
        ch.recv(Kind.REPORT, 2, lambda buf, src: protocol.read_hello(buf, src=src),
                tag=TAG_HELLO)
    (row,) = ch.drain()  # one row: the refused message is not logged
    assert (row["round"], row["kind"], row["worker"], row["direction"], row["bytes"],
            row["xfer_s"]) == (-1, Kind.REPORT, 1, accounting.UP, len(hello.buf), 0.5)


def test_a_report_logs_itself_with_its_exact_size():
    worker = Channel(FakeTransport(1))
    worker.send(message(Kind.REPORT, round=0, payload=b"{}"), 0, tag=TAG_HELLO, log_round=-1)
    worker.report(0)
    (_, buf, dest, tag), = worker.net.sent[1:]
    assert (dest, tag) == (0, TAG_REPORT)
    rows = accounting.parse_report(memoryview(buf)[HEADER_SIZE:])
    assert len(rows) == 2 and rows[1]["kind"] == Kind.REPORT and rows[1]["bytes"] == len(buf)
    assert worker.drain().size == 0
