"""Every transport wait has a deadline: a silent peer raises LivenessError naming this
rank, the peer, the round and what was awaited, after the liveness limit, not never."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(60)]
BIG = 4 << 20  # far above any eager limit: a send completes only when it is received


@pytest.fixture
def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def transport(comm, timeout_s=0.5):
    from fedmpi.liveness import Liveness
    from fedmpi.transport import Transport

    return Transport(comm, Liveness(timeout_s=timeout_s, hub=comm.Get_rank() == 0))


def elapsed(fn) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


def test_recv_from_a_silent_rank_ends(world):
    from fedmpi.liveness import LivenessError
    from fedmpi.transport import TAG_UPDATE

    comm = world.Dup()
    net = transport(comm)
    if comm.rank == 0:  # waits on rank 2, which never sends: the hub's limit, 0.5 s
        took, exc = elapsed(lambda: net.recv(2, TAG_UPDATE, what="UPDATE of client 5", round=4))
        assert isinstance(exc, LivenessError), exc
        assert str(exc) == ("rank 0: no UPDATE of client 5 from rank 2 in round 4 within 0.5 s "
                            "(liveness limit: max(run.timeout_s 0.5 s, 10 x slowest round 0.0 s))")
        assert 0.5 <= took < 5
    elif comm.rank == 1:  # a worker waits twice as long; no round yet: start-up
        net.liveness.observe_round(0.08)
        took, exc = elapsed(lambda: net.recv(0, 1, what="ASSIGN or STOP"))
        assert isinstance(exc, LivenessError), exc
        assert str(exc).startswith("rank 1: no ASSIGN or STOP from rank 0 during start-up "
                                   "within 1.6 s (liveness limit: 2 x max(run.timeout_s 0.5 s, "
                                   "10 x slowest round 0.1 s) on a worker rank)")
        assert 1.6 <= took < 6
    comm.Barrier()
    comm.Free()


def test_send_that_is_never_received_ends_then_completes_later(world):
    from fedmpi.liveness import LivenessError
    from fedmpi.transport import TAG_UPDATE

    comm = world.Dup()
    net = transport(comm)
    buf = np.arange(BIG, dtype=np.uint8)  # kept alive until rank 0 takes it below
    if comm.rank == 1:
        took, exc = elapsed(lambda: net.send(buf, 0, TAG_UPDATE, what="UPDATE of client 3",
                                             round=7))
        assert isinstance(exc, LivenessError), exc
        assert str(exc).startswith("rank 1: rank 0 did not take the UPDATE of client 3 in "
                                   "round 7 within 1.0 s")
        assert 1.0 <= took < 6
    comm.Barrier()
    if comm.rank == 0:  # the late receive completes the abandoned send
        got, src, _ = net.recv(1, TAG_UPDATE)
        assert src == 1 and np.array_equal(got, buf)
    comm.Barrier()
    comm.Free()


def test_posted_sends_name_the_ranks_that_do_not_take_them(world):
    from fedmpi.liveness import LivenessError
    from fedmpi.transport import TAG_MODEL

    comm = world.Dup()
    net = transport(comm)
    buf = np.ones(BIG, dtype=np.uint8)
    if comm.rank == 0:
        for dest in range(1, comm.size):
            net.post(buf, dest, TAG_MODEL)
    if comm.rank == 1:  # takes its message at once; the others wait for the barrier
        net.recv(0, TAG_MODEL)
    if comm.rank == 0:
        took, exc = elapsed(lambda: net.complete(round=2))
        assert isinstance(exc, LivenessError), exc
        others = ", ".join(map(str, range(2, comm.size)))
        assert str(exc).startswith(f"rank 0: rank(s) {others} did not take {comm.size - 2} "
                                   "posted message(s) in round 2 within 0.5 s")
        assert 0.5 <= took < 5
    comm.Barrier()
    if comm.rank >= 2:
        net.recv(0, TAG_MODEL)
    if comm.rank == 0:
        net.complete()  # now they are taken
        assert net.pending == []
    comm.Barrier()
    comm.Free()


def test_a_barrier_some_rank_never_reaches_ends(world):
    from fedmpi.liveness import LivenessError

    comm = world.Dup()
    net = transport(comm)
    if comm.rank != 0:  # rank 0 arrives only after the others gave up
        took, exc = elapsed(lambda: net.barrier("the start-up barrier"))
        assert isinstance(exc, LivenessError), exc
        assert str(exc).startswith(f"rank {comm.rank}: not every rank reached the start-up "
                                   "barrier (some rank is stopped, hung or slow) within 1.0 s")
        assert 1.0 <= took < 6
    world.Barrier()
    if comm.rank == 0:
        comm.Ibarrier().Wait()  # completes the others' abandoned one (blocking would not match)
    world.Barrier()
