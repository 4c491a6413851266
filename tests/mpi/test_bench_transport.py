"""`fedmpi bench transport` under MPI: ranks 0 and 1 measure, any further rank waits;
rank 0 alone returns one row per size with both paths' figures and names the hosts."""

from __future__ import annotations

import argparse
import socket

import pytest

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.timeout(120)]


def test_two_ranks_measure_and_the_rest_wait():
    from mpi4py import MPI

    from fedmpi.bench import transport

    parser = argparse.ArgumentParser()
    transport.add_arguments(parser)
    args = parser.parse_args(["--min-size", "8", "--max-size", "4096", "--repeat", "1",
                              "--trials", "2"])
    rows = transport.run(args)
    if MPI.COMM_WORLD.Get_rank() != 0:
        assert rows is None
        return
    assert [r["size"] for r in rows] == [8 << i for i in range(10)]
    for r in rows:
        assert r["plain_lat_us"] > 0 and r["transport_lat_us"] > 0
        assert r["lat_ratio"] == pytest.approx(r["transport_lat_us"] / r["plain_lat_us"])
        assert r["plain_bw_mbps"] > 0 and r["transport_bw_mbps"] > 0
        assert r["distinct_bw_mbps"] > 0
        assert r["bw_ratio_distinct"] == pytest.approx(r["distinct_bw_mbps"]
                                                       / r["transport_bw_mbps"])
    assert rows[0]["trials"] == 2 and rows[0]["repeat"] == 1
    host = socket.gethostname()  # mpiexec here starts every rank on this host
    assert rows[0]["host"] == rows[0]["peer_host"] == host
    assert rows[0]["path"] == "shared memory"
    assert transport.path_of(["n1", "n2"]) == "network"


def test_both_paths_receive_into_the_same_memory():
    """Paired trials: the transport reuses plain's receive buffer instead of allocating
    its own, so a buffer's placement does not move the ratio."""
    from mpi4py import MPI

    from fedmpi.bench import transport
    from fedmpi.liveness import Liveness
    from fedmpi.transport import Transport

    world = MPI.COMM_WORLD
    comm = world.Split(0 if world.Get_rank() < 2 else MPI.UNDEFINED, world.Get_rank())
    try:
        if comm != MPI.COMM_NULL:
            rank, size = comm.Get_rank(), 256 << 10
            net = Transport(comm, Liveness(timeout_s=60, hub=rank == 0))
            times = transport._trial(comm, net, size, 4, 4, 1 - rank, rank, 1, 0)
            assert set(times) == {"plain_lat", "transport_lat", "plain_bw", "transport_bw",
                                  "distinct_bw"}
            (spare,) = net._spare  # the lent view, and nothing the transport allocated
            assert spare.base is not None and spare.nbytes == size
    finally:
        if comm != MPI.COMM_NULL:
            comm.Free()
        world.Barrier()
