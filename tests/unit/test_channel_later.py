"""`Channel.send_later` / `settle`: a worker posts an UPDATE and trains its next client;
the row is logged once the send completes, with the seconds the sender was blocked."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpi.accounting import VIEW_DTYPE
from fedmpi.channel import Channel, message
from fedmpi.liveness import Liveness
from fedmpi.transport import Posted
from fedmpi.wire import Kind


class Request:
    def __init__(self, polls):
        self.polls = polls  # Test() calls before it completes

    def Test(self):
        self.polls -= 1
        return self.polls < 0


class PostingTransport:
    def __init__(self, polls):
        self.rank, self.liveness, self.pending, self.polls = 1, Liveness(hub=False), [], polls

    def post(self, buf, dest, tag, *, key=None):
        self.pending.append(Posted(key, Request(self.polls.pop(0)), buf, dest, 0.0))
        return 0.001

    def _wait(self, done, describe):
        while not done():
            pass

    def send(self, buf, dest, tag, *, what="", round=None):
        return 0.0


def _update(client):
    return message(Kind.UPDATE, round=3, client=client, payload=b"x" * (10 + client))


def test_rows_are_logged_on_completion_oldest_first():
    net = PostingTransport([5, 0, 0])
    ch = Channel(net)
    ch.send_later(_update(0), 0, compute_s=1.0, train_loss=0.5, samples=7)
    ch.send_later(_update(1), 0, compute_s=1.0, train_loss=0.5, samples=7)
    assert ch.settle(keep=2) >= 0 and len(ch.ledger.rows) == 0  # 0 not done yet: both wait
    ch.settle(keep=1)  # waits for the oldest (0), then 1 completes on its own
    rows = np.array(ch.ledger.rows, dtype=VIEW_DTYPE)
    assert [r["client"] for r in rows] == [0, 1]
    assert [r["bytes"] for r in rows] == [len(_update(0).buf), len(_update(1).buf)]
    assert all(r["xfer_s"] >= 0.001 for r in rows) and rows[0]["samples"] == 7
    ch.send_later(_update(2), 0, compute_s=1.0, train_loss=0.5, samples=7)
    ch.settle()
    assert [r["client"] for r in ch.drain()] == [0, 1, 2] and not ch.later
    assert net.pending == []  # no buffer of a completed send is kept alive


def test_no_report_with_sends_in_flight():
    ch = Channel(PostingTransport([3]))
    ch.send_later(_update(0), 0, compute_s=1.0, train_loss=0.5, samples=7)
    with pytest.raises(RuntimeError, match="settled"):
        ch.report(3)
    ch.settle()
    assert ch.drain()["kind"].tolist() == [Kind.UPDATE]
