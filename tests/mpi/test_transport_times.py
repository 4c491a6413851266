"""Transport timing under MPI: each posted send gets its own completion time, a small
message hop costs microseconds (no fixed sleep), and reused receive buffers never
alias a buffer (or a view of one) that a caller still holds."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(120)]
BIG = 4 << 20  # far above any eager limit: a send completes only when it is received


@pytest.fixture
def net():
    from mpi4py import MPI

    from fedmpi.liveness import Liveness
    from fedmpi.transport import Transport

    comm = MPI.COMM_WORLD.Dup()
    yield Transport(comm, Liveness(timeout_s=60, hub=comm.Get_rank() == 0))
    comm.Free()


def test_each_posted_send_has_its_own_completion_time(net):
    from fedmpi.transport import TAG_MODEL

    rank, size = net.comm.Get_rank(), net.comm.Get_size()
    buf = np.arange(BIG, dtype=np.uint8)
    delay = {1: 0.0, 2: 0.4}  # rank 2 takes its message 0.4 s later
    if rank == 0:
        for dest in range(1, size):
            net.post(buf, dest, TAG_MODEL, key=("model", dest))
        took = net.complete(round=0)
        times = net.completed
        assert set(times) == {("model", d) for d in range(1, size)}
        assert times[("model", 1)] < 0.3
        assert 0.4 <= times[("model", 2)] <= took + 1e-9
        assert net.pending == []
        # the API without keys: keys are the post's number, complete_each returns them
        net.post(buf, 1, TAG_MODEL)
        net.post(buf, 1, TAG_MODEL)
        assert set(net.complete_each()) == {size - 1, size}
    elif rank in delay:
        time.sleep(delay[rank])
        got, _, _ = net.recv(0, TAG_MODEL)
        assert np.array_equal(got, buf)
        if rank == 1:
            net.recv(0, TAG_MODEL)
            net.recv(0, TAG_MODEL)
    net.barrier()


def test_complete_each_can_leave_a_window_in_flight(net):
    from fedmpi.transport import TAG_MODEL

    rank = net.comm.Get_rank()
    buf = np.ones(BIG, dtype=np.uint8)
    if rank == 0:
        for i in range(3):
            net.post(buf, 1, TAG_MODEL, key=i)
        done = net.complete_each(at_most=2)  # rank 1 takes one now, two after the barrier
        assert list(done) == [0] and len(net.pending) == 2
    elif rank == 1:
        net.recv(0, TAG_MODEL)
    net.barrier()
    if rank == 1:
        net.recv(0, TAG_MODEL)
        net.recv(0, TAG_MODEL)
    if rank == 0:
        assert set(net.complete_each()) == {1, 2}
    net.barrier()


def test_a_small_message_hop_costs_microseconds_not_a_sleep(net):
    """The old transport slept 0.5 ms from the first miss: every hop here took >= 250 us
    (measured: 560 us at best, 590 median). Now: about 4 us unloaded; on this VM under a
    load of 8 the median reached 200 us (the peer waits for a core), the best hops 10 us."""
    from fedmpi.transport import TAG_CONTROL

    rank = net.comm.Get_rank()
    msg = np.zeros(64, dtype=np.uint8)
    hops = []
    for _ in range(300):
        if rank == 0:
            t0 = time.perf_counter()
            net.send(msg, 1, TAG_CONTROL)
            net.recv(1, TAG_CONTROL)
            hops.append((time.perf_counter() - t0) / 2)
        elif rank == 1:
            net.recv(0, TAG_CONTROL)
            net.send(msg, 0, TAG_CONTROL)
    net.barrier()
    if rank == 0:
        best, p10 = min(hops), np.percentile(hops, 10)
        assert best < 100e-6 and p10 < 250e-6, f"best {best * 1e6:.1f} us, p10 {p10 * 1e6:.1f}"


def test_reused_receive_buffers_never_alias_what_a_caller_holds(net):
    from fedmpi.transport import TAG_UPDATE

    rank = net.comm.Get_rank()
    n = 1 << 20
    if rank == 1:
        for value in range(1, 6):
            net.send(np.full(n, value, dtype=np.uint8), 0, TAG_UPDATE)
    if rank == 0:
        a, _, _ = net.recv(1, TAG_UPDATE)
        b, _, _ = net.recv(1, TAG_UPDATE)  # a is held: b is new memory
        assert not np.shares_memory(a, b) and (a == 1).all() and (b == 2).all()
        view = a[10:20]
        del a, b  # b is free again, a still has a view
        c, _, _ = net.recv(1, TAG_UPDATE)
        assert not np.shares_memory(c, view) and (view == 1).all() and (c == 3).all()
        where = c.__array_interface__["data"][0]
        del c
        d, _, _ = net.recv(1, TAG_UPDATE)  # nothing holds c: its memory is reused
        assert d.__array_interface__["data"][0] == where and (d == 4).all()
        mv = memoryview(d)
        del d
        e, _, _ = net.recv(1, TAG_UPDATE)  # a memoryview holds d: not reused
        assert not np.shares_memory(e, np.asarray(mv)) and (e == 5).all()
        assert (np.asarray(mv) == 4).all()
    net.barrier()
