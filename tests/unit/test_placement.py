"""Placement of a round's clients on the worker ranks (`experiment.balance` / `place`)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmpi.experiment import Experiment, balance, worker_of


def _loads(placed, work):
    return {w: sum(work[c] for c in cs) for w, cs in placed.items()}


def _optimum(work, n):
    """The smallest makespan over every assignment (brute force, small cases)."""
    clients = list(work)
    best = float("inf")
    for ranks in itertools.product(range(n), repeat=len(clients)):
        load = [0.0] * n
        for c, r in zip(clients, ranks):
            load[r] += work[c]
        best = min(best, max(load))
    return best


def test_equal_clients_are_spread_evenly():
    # the case: static placement (1 + c mod 2) put 3 of 4 sampled clients on one rank
    sampled = [1, 3, 5, 8]
    assert [worker_of(c, 2) for c in sampled].count(2) == 3
    placed = balance({c: 500.0 for c in sampled}, 2)
    assert sorted(len(cs) for cs in placed.values()) == [2, 2]


def test_longest_first_example():
    # LPT: 7 -> rank 1, 5 -> rank 2, 4 -> rank 2 (5 < 7), 3 -> rank 1 (7 < 9)
    placed = balance({10: 7.0, 11: 5.0, 12: 4.0, 13: 3.0}, 2)
    assert placed == {1: [10, 13], 2: [11, 12]}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=7), st.integers(1, 3))
def test_every_client_once_and_within_lpt_bound(sizes, n):
    work = {3 * i + 1: float(s) for i, s in enumerate(sizes)}
    placed = balance(work, n)
    assert sorted(placed) == list(range(1, n + 1))
    every = [c for cs in placed.values() for c in cs]
    assert sorted(every) == sorted(work)
    assert all(cs == sorted(cs) for cs in placed.values())  # a rank sends in client order
    loads = _loads(placed, work)
    # Graham's bound for longest-processing-time first, and the greedy property: the
    # lightest rank is within one client of the heaviest
    assert max(loads.values()) <= 4 / 3 * _optimum(work, n) + 1e-9
    assert max(loads.values()) - min(loads.values()) <= max(work.values())
    assert balance(dict(reversed(list(work.items()))), n) == placed  # input order is moot


def _exp(stateful: bool, samples, workers=2, epochs=2):
    exp = object.__new__(Experiment)
    exp.cfg = SimpleNamespace(clients=SimpleNamespace(num_clients=len(samples)),
                              train=SimpleNamespace(local_epochs=epochs))
    exp.uplink = SimpleNamespace(new_state=lambda: {} if stateful else None)
    exp.parts = [np.zeros(s, dtype=np.int64) for s in samples]
    exp.num_workers = workers
    return exp


def test_stateless_clients_are_balanced_by_samples():
    exp = _exp(False, [100, 10, 10, 10, 10, 60])
    placed = exp.place([0, 1, 2, 3, 5])
    assert placed == {1: [0], 2: [1, 2, 3, 5]}
    assert exp.clients_of(1) == exp.clients_of(2) == list(range(6))  # any rank runs any client


def test_stateful_clients_stay_on_their_home_rank():
    exp = _exp(True, [100, 10, 10, 10, 10, 60])
    placed = exp.place([0, 1, 2, 3, 5])
    assert placed == {1: [0, 2], 2: [1, 3, 5]}
    assert exp.clients_of(1) == [0, 2, 4] and exp.clients_of(2) == [1, 3, 5]
