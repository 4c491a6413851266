"""A FAIL message from another rank ends a wait, except when what the wait awaited
completes anyway: then the wait returns and the next wait raises it. (Found as a flaky
integration test: a worker that passed the configuration check and failed at once made
rank 0 give up inside that check, before it had opened the result file to record why.)"""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(60)]


def _transport(comm):
    from fedmpi.liveness import Liveness
    from fedmpi.transport import Transport

    return Transport(comm, Liveness(timeout_s=30, hub=comm.Get_rank() == 0))


def _until_fail_is_there(comm):
    from mpi4py import MPI

    from fedmpi.transport import TAG_FAIL

    while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_FAIL):
        time.sleep(0.001)


def test_a_fail_ends_a_wait_unless_the_wait_completes_first():
    from mpi4py import MPI

    from fedmpi.transport import FAILURE_GRACE_S, RemoteFailure

    comm = MPI.COMM_WORLD.Dup()
    rank = comm.Get_rank()
    try:
        if rank == 1:
            for reason in ("first", "second"):
                _transport(comm).send_failure(0, f"{reason} failure", wait_s=0.05)
        if rank == 0:
            net = _transport(comm)
            _until_fail_is_there(comm)
            ready = time.perf_counter() + net.poll.spin_s + 0.005  # after the spin
            net._wait(lambda: time.perf_counter() > ready, lambda: "a test wait")
            with pytest.raises(RemoteFailure, match="rank 1 failed: first failure"):
                net._wait(lambda: True, lambda: "the next wait")  # raised even if done

            net = _transport(comm)  # a wait that never completes: raised, after the grace
            _until_fail_is_there(comm)
            t0 = time.perf_counter()
            with pytest.raises(RemoteFailure, match="rank 1 failed: second failure"):
                net._wait(lambda: False, lambda: "a wait nobody answers")
            assert time.perf_counter() - t0 < net.poll.spin_s + FAILURE_GRACE_S + 0.5
    finally:
        comm.Barrier()
        comm.Free()


@pytest.mark.parametrize("wait", ["wait_message", "complete_each"])
def test_the_other_waits_keep_the_same_rule(wait, monkeypatch):
    """`wait_message` (a message to come) and `complete_each` (posted sends to be taken)
    follow the rule of `_wait`: what completes during the grace is returned."""
    import numpy as np
    from mpi4py import MPI

    import fedmpi.transport as transport
    from fedmpi.transport import RemoteFailure

    monkeypatch.setattr(transport, "FAILURE_GRACE_S", 5.0)  # ample on a busy machine
    comm = MPI.COMM_WORLD.Dup()
    rank = comm.Get_rank()
    big = np.ones(1 << 20, dtype=np.uint8)  # rendezvous: a post completes once received
    try:
        if rank == 1:
            net = _transport(comm)
            net.send_failure(0, "late failure", wait_s=0.0)
            comm.Recv([np.empty(1, np.uint8), MPI.BYTE], 0, 7)  # rank 0 is waiting now
            time.sleep(net.poll.spin_s + 0.05)  # past rank 0's spin, inside its grace
            if wait == "wait_message":
                comm.Send([big[:8], MPI.BYTE], 0, 8)
            else:
                comm.Recv([np.empty_like(big), MPI.BYTE], 0, 8)
        if rank == 0:
            net = _transport(comm)
            _until_fail_is_there(comm)
            if wait == "wait_message":
                comm.Send([big[:1], MPI.BYTE], 1, 7)
                assert net.wait_message(1, 8, time.perf_counter() + 20)
                comm.Recv([np.empty(8, np.uint8), MPI.BYTE], 1, 8)
            else:
                net.post(big, 1, 8, key="big")
                comm.Send([big[:1], MPI.BYTE], 1, 7)
                assert set(net.complete_each()) == {"big"} and not net.pending
            with pytest.raises(RemoteFailure, match="rank 1 failed: late failure"):
                net.recv(1, 9)  # the next wait, even with nothing to wait for
    finally:
        comm.Barrier()
        comm.Free()
