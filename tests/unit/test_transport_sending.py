"""A wait sleeps at most `TRANSFER_SLEEP_S` between polls only while a posted send is
still moving: a completed post whose time its caller has not collected yet (the server's
ASSIGN and MODELs until the round's end) must not keep every wait polling ~10,000 times
a second beside the ranks that train. Runs on MPI.COMM_SELF (no mpiexec needed)."""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

import fedmpi.transport as transport
from fedmpi.backoff import PollPolicy
from fedmpi.transport import TRANSFER_SLEEP_S, Transport


def _caps_of_a_wait(monkeypatch, net: Transport) -> list:
    """The sleep caps of one 10 ms wait for nothing in particular."""
    caps = []

    class Recording(transport.Backoff):
        def pause(self, cap=None):
            caps.append(cap)
            super().pause(cap)

    monkeypatch.setattr(transport, "Backoff", Recording)
    ready = time.perf_counter() + 0.01
    net._wait(lambda: time.perf_counter() > ready, lambda: "test")
    return caps


def test_a_completed_post_not_yet_collected_lets_waits_back_off(monkeypatch):
    net = Transport(MPI.COMM_SELF, poll=PollPolicy(0.0, 1e-5, 2e-3))
    big = np.arange(4 << 20, dtype=np.uint8)  # rendezvous: moves only once received
    net.post(big, 0, 7, key="big")
    assert net._sending()
    assert set(_caps_of_a_wait(monkeypatch, net)) == {TRANSFER_SLEEP_S}

    out = np.empty_like(big)
    MPI.COMM_SELF.Recv([out, MPI.BYTE], source=0, tag=7)
    assert not net._sending() and len(net.pending) == 1  # done, its time not collected
    assert set(_caps_of_a_wait(monkeypatch, net)) == {None}
    assert np.array_equal(out, big)

    net.post(big, 0, 8, key="again")  # appended behind the completed one: seen as moving
    assert net._sending()
    MPI.COMM_SELF.Recv([out, MPI.BYTE], source=0, tag=8)
    assert not net._sending()
    assert set(net.complete_each()) == {"big", "again"} and net.pending == []  # collected
    assert not net._sending()
    net.post(big, 0, 9)  # a fresh list after the collection
    assert net._sending()
    MPI.COMM_SELF.Recv([out, MPI.BYTE], source=0, tag=9)
    assert set(net.complete_each()) == {2} and not net._sending()
