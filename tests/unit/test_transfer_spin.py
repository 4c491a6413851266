"""A wait for a transfer of known size (a send, a matched receive) spins for as long as
the bytes take at `TRANSFER_SPIN_BPS` (capped), before it starts to sleep: a sleep that
ends late delays the next hop, which cost 3-7% of a 8-16 MiB ping-pong under Open MPI.
Runs on MPI.COMM_SELF (no mpiexec needed)."""

from __future__ import annotations

import time

import pytest
from mpi4py import MPI

import fedmpi.transport as transport
from fedmpi.backoff import PollPolicy
from fedmpi.transport import TRANSFER_SPIN_BPS, TRANSFER_SPIN_MAX_S, Transport


def _net(spin_s: float) -> Transport:
    return Transport(MPI.COMM_SELF, poll=PollPolicy(spin_s, 1e-5, 2e-3))


@pytest.mark.parametrize("spin_s, nbytes, want", [
    (1e-3, 8, 1e-3),  # small: the policy's spin
    (1e-3, 16 << 20, (16 << 20) / TRANSFER_SPIN_BPS),  # the bytes' time
    (1e-3, 1 << 30, TRANSFER_SPIN_MAX_S),  # capped
    (0.2, 16 << 20, 0.2),  # never shorter than the policy's
    (0.0, 16 << 20, 0.0),  # spin_s 0 (no spinning at all) is kept
])
def test_the_spin_of_a_transfer_wait(spin_s, nbytes, want):
    assert _net(spin_s)._spin_s(nbytes) == pytest.approx(want)


def test_a_wait_spins_for_its_transfer_then_sleeps(monkeypatch):
    made = []

    class Recording(transport.Backoff):  # made once a wait's spin is over
        def __init__(self, *a, **kw):
            made.append(kw.get("start"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(transport, "Backoff", Recording)
    net = _net(1e-3)
    ready = time.perf_counter() + 0.02  # done after 20 ms
    net._wait(lambda: time.perf_counter() > ready, lambda: "test", spin_s=0.04)
    assert made == []  # all of it spun
    ready = time.perf_counter() + 0.02
    net._wait(lambda: time.perf_counter() > ready, lambda: "test")
    assert len(made) == 1  # the policy's 1 ms spin, then the backoff


def test_a_wait_yields_its_core_only_after_its_busy_spin(monkeypatch):
    """The first `BUSY_SPIN_S` of a spin polls without `sched_yield` (a yield delayed a
    1 MiB hop under Open MPI by ~1 us); after it, a yield between polls lets a rank that
    shares the core run."""
    yields = []
    monkeypatch.setattr(transport, "yield_core", lambda: yields.append(time.perf_counter()))
    net = _net(1e-3)
    net.busy_spin_s = transport.BUSY_SPIN_S  # as with a core per rank (below)
    start = time.perf_counter()
    ready = start + 4 * transport.BUSY_SPIN_S
    net._wait(lambda: time.perf_counter() > ready, lambda: "test", spin_s=0.5)
    assert yields and min(yields) >= start + transport.BUSY_SPIN_S
    yields.clear()
    ready = time.perf_counter() + transport.BUSY_SPIN_S / 2
    net._wait(lambda: time.perf_counter() > ready, lambda: "test", spin_s=0.5)
    assert yields == []  # done within the busy spin


@pytest.mark.parametrize("env, cores, want", [
    ({"MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2"}, 2, transport.BUSY_SPIN_S),  # MPICH
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 4,
     transport.BUSY_SPIN_S),  # Open MPI
    ({"MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "3"}, 2, 0.0),  # 3 ranks share 2 cores
    ({"SLURM_LOCALID": "0"}, 8, 0.0),  # the node's rank count unknown
    ({}, 8, 0.0),  # no launcher
])
def test_only_ranks_with_a_core_each_spin_without_yielding(env, cores, want):
    assert transport.busy_spin_s(env, cores) == want


def test_a_wait_of_ranks_sharing_cores_yields_from_its_first_poll(monkeypatch):
    yields = []
    monkeypatch.setattr(transport, "yield_core", lambda: yields.append(time.perf_counter()))
    net = _net(1e-3)
    net.busy_spin_s = 0.0
    start = time.perf_counter()
    ready = start + transport.BUSY_SPIN_S / 2
    net._wait(lambda: time.perf_counter() > ready, lambda: "test", spin_s=0.5)
    assert yields and min(yields) < start + transport.BUSY_SPIN_S / 2
