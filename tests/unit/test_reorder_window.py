"""The server's deterministic fold through a bounded reorder window, in any arrival order
(a fake channel delivers each rank's UPDATEs in its order, the ranks interleaved at random)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from fedmpi.aggregate import StreamingFedAvg
from fedmpi.channel import Received
from fedmpi.experiment import balance
from fedmpi.server import RoundTimes, Server


class FakeChannel:
    """Per-rank FIFO queues (MPI's non-overtaking order); an any-source receive takes the
    head of a rank drawn at random; records the decoded updates held at each receive."""

    def __init__(self, placed, draw):
        self.queues = {w: list(cs) for w, cs in placed.items()}
        self.draw = draw
        self.sources = []

    def recv(self, kind, source, read, *, what="", round=None):
        if source == MPI.ANY_SOURCE:
            ready = [w for w, q in self.queues.items() if q]
            source = ready[self.draw(len(ready))]
        self.sources.append(source)
        client = self.queues[source].pop(0)
        value = read(client, source)
        return Received(value, source, 0.0, 0.0)


class Recorder:
    """A strategy that records its fold order and sums as the default one does."""

    def __init__(self):
        self.order, self.sum = [], StreamingFedAvg()

    def fold(self, client, tensors, weight):
        self.order.append(client)
        self.sum.add(tensors, weight)


def _server(placed, window, deterministic, draw, tensors, samples):
    srv = object.__new__(Server)
    srv.cfg = SimpleNamespace(run=SimpleNamespace(deterministic=deterministic, fail_at=None),
                              rounds=1)
    srv.exp = SimpleNamespace(samples=samples)
    srv.window = window
    srv.placed = placed
    srv.rank_of = {c: w for w, cs in placed.items() for c in cs}
    srv.channel = FakeChannel(placed, draw)
    srv.strategy = Recorder()
    srv.held = []  # decoded updates waiting for their turn, at each receive

    def reader(rnd, want, settings):
        def read(client, src):
            assert client in want, (client, want)
            srv.held.append(len(srv.channel.sources) - 1 - len(srv.strategy.order))
            return client, tensors[client], 0.0
        return read
    srv._update_reader = reader
    return srv


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 5), st.randoms(use_true_random=False))
def test_any_arrival_order_folds_in_client_order_bit_identically(n, workers, window, rnd):
    rng = np.random.default_rng(n)
    samples = rng.integers(1, 50, size=n)
    clients = sorted(rng.choice(n, size=max(1, n // 2), replace=False).tolist())
    tensors = {c: {"w": rng.standard_normal(7).astype(np.float32) * 10.0 ** rng.integers(-3, 4)}
               for c in clients}
    placed = balance({c: float(samples[c]) for c in clients}, workers)
    srv = _server(placed, window, True, lambda k: rnd.randrange(k), tensors, samples)
    srv._fold_updates(0, {c: {} for c in clients}, RoundTimes())
    assert srv.strategy.order == clients  # client order, whatever the arrival order
    ref = StreamingFedAvg()
    for c in clients:
        ref.add(tensors[c], float(samples[c]))
    assert np.array_equal(srv.strategy.sum.result()["w"], ref.result()["w"])
    assert len(srv.channel.sources) == len(clients)
    assert max(srv.held) <= window  # never more than W decoded updates wait


def test_window_zero_receives_strictly_in_order():
    placed = {1: [0, 2, 5], 2: [1, 3, 4]}
    tensors = {c: {"w": np.full(3, c, np.float32)} for c in range(6)}
    srv = _server(placed, 0, True, lambda k: 0, tensors, np.ones(6, np.int64))
    srv._fold_updates(0, {c: {} for c in range(6)}, RoundTimes())
    assert srv.channel.sources == [1, 2, 1, 2, 2, 1]  # the rank of client 0, 1, 2, ...


def test_full_window_waits_for_the_next_in_order():
    # rank 2 sends first (any-source draw always picks rank 2 while it has updates)
    placed = {1: [0], 2: [1, 2, 3, 4]}
    tensors = {c: {"w": np.full(3, c, np.float32)} for c in range(5)}
    draw = lambda k: k - 1  # noqa: E731  (the last ready rank)
    srv = _server(placed, 2, True, draw, tensors, np.ones(5, np.int64))
    srv._fold_updates(0, {c: {} for c in range(5)}, RoundTimes())
    # two of rank 2's updates wait decoded, then the window is full: rank 1 is asked
    assert srv.channel.sources[:3] == [2, 2, 1]
    assert srv.strategy.order == [0, 1, 2, 3, 4]


def test_arrival_order_mode_folds_as_they_come():
    placed = {1: [0], 2: [1, 2]}
    tensors = {c: {"w": np.full(3, c, np.float32)} for c in range(3)}
    srv = _server(placed, 4, False, lambda k: k - 1, tensors, np.ones(3, np.int64))
    srv._fold_updates(0, {c: {} for c in range(3)}, RoundTimes())
    assert srv.strategy.order == [1, 2, 0]
