"""The broadcast holds one payload however many clients a round has (issue 12:
"Server memory grows"), and posted sends log when they completed, not when they
were posted ("Timing columns"). Runs on MPI.COMM_SELF (no mpiexec needed)."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from fedmpi import wire
from fedmpi.channel import Channel, message
from fedmpi.transport import TAG_MODEL, Transport
from fedmpi.wire import Kind

MODEL_BYTES = 1 << 21  # 2 MiB: rendezvous-sized, so a send completes when it is received


def _model(n: int = MODEL_BYTES):
    payload = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
    return message(Kind.MODEL, round=3, client=-1, payload=payload, codec_id=7, n_tensors=2)


def test_a_readdressed_model_shares_the_payload_and_has_its_own_header():
    out = _model(1000)
    c = out.to(5)
    assert np.shares_memory(c.buf, out.buf)  # no copy of the payload
    assert c.nbytes == len(out.buf) and c.client == 5
    np.testing.assert_array_equal(c.joined(), wire.reframe(out.buf, client=5))
    h, payload = wire.parse(c.joined(), client=5, round=3, codec_id=7)
    assert bytes(payload) == bytes(out.buf[wire.HEADER_SIZE:])
    assert wire.parse_header(out.buf).client == -1  # the original is untouched


def _self_channel():
    from mpi4py import MPI

    return Channel(Transport(MPI.COMM_SELF))


@pytest.mark.timeout(120)
def test_posting_a_broadcast_to_many_clients_copies_no_payload():
    ch = _self_channel()
    out, k = _model(), 64
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        for c in range(k):
            ch.send(out.to(c), 0, post=True)
        _, peak = tracemalloc.get_traced_memory()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    finally:
        tracemalloc.stop()
    # the old reframe held k copies (128 MiB here); now k headers and requests
    assert grown < MODEL_BYTES // 4, grown
    # what each client receives is exactly its re-framed message, one message each
    for c in range(k):
        buf, src, _ = ch.net.recv(0, TAG_MODEL)
        assert src == 0 and len(buf) == len(out.buf)
        np.testing.assert_array_equal(buf, wire.reframe(out.buf, client=c))
    ch.complete()
    rows = ch.drain()
    assert sorted(rows["client"].tolist()) == list(range(k))
    assert (rows["bytes"] == len(out.buf)).all()
    assert peak >= 0


@pytest.mark.timeout(120)
def test_a_posted_send_logs_the_time_until_it_completed():
    ch = _self_channel()
    ch.send(_model().to(1), 0, post=True)
    time.sleep(0.3)  # nobody receives yet: the send cannot complete
    buf, _, _ = ch.net.recv(0, TAG_MODEL)
    ch.complete()
    (row,) = ch.drain()
    assert row["xfer_s"] >= 0.3, row["xfer_s"]  # the old code logged the post time (µs)


def test_draining_before_posted_sends_completed_is_refused():
    ch = _self_channel()
    ch.send(_model(100).to(1), 0, post=True)
    with pytest.raises(RuntimeError, match="not completed"):
        ch.drain()
    ch.net.recv(0, TAG_MODEL)
    ch.complete()
    assert len(ch.drain()) == 1


@pytest.mark.timeout(60)
def test_a_deadline_wait_returns_none_when_nothing_came_and_the_message_when_it_did():
    from fedmpi import protocol

    ch = _self_channel()
    t0 = time.perf_counter()
    assert ch.recv_by(t0 + 0.2, Kind.UPDATE, 0, lambda buf, src: 1) is None
    assert time.perf_counter() - t0 >= 0.2
    assert ch.drain().size == 0  # nothing received, nothing logged
    ch.send(message(Kind.ASSIGN, round=1, payload=protocol.assign_payload(0, [2])), 0,
            post=True)
    got = ch.recv_by(time.perf_counter() + 5, Kind.ASSIGN, 0, lambda buf, src: "ok")
    assert got.value == "ok"
    ch.complete()
    assert len(ch.drain()) == 2


@pytest.mark.timeout(60)
def test_a_deadline_wait_still_ends_at_the_liveness_limit():
    from fedmpi.liveness import LivenessError

    ch = _self_channel()
    ch.net.liveness.limit = lambda: 0.3
    ch.net.liveness.explain = lambda: "0.3 s (test)"
    with pytest.raises(LivenessError, match="UPDATE"):
        ch.recv_by(time.perf_counter() + 60, Kind.UPDATE, 0, lambda buf, src: 1,
                   what="UPDATE of client 3", round=1)
