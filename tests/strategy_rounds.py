"""Shared by the strategy tests: play rounds of updates through a Strategy, no MPI."""

import numpy as np

from fedmpi.strategies import RunInfo, build_strategy


def make(raw, target="update", clients=3):
    s = build_strategy(raw)
    s.setup(RunInfo(seed=0, num_clients=clients, per_round=clients,
                    samples=np.full(clients, 10), target=target))
    return s


def play(strategy, model, rounds, start=0):
    """Each round: begin at `model`, fold [(tensors, weight), ...], finish; the models."""
    out = []
    for r, clients in enumerate(rounds, start):
        strategy.begin(r, model)
        for c, (tensors, weight) in enumerate(clients):
            strategy.fold(c, tensors, weight)
        model = strategy.finish()
        out.append(model)
    return out


def random_rounds(seed, shapes, rounds=3, clients=3):
    """Client updates (float32) and weights for `rounds` rounds of `clients` clients."""
    rng = np.random.default_rng(seed)
    return [[({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()},
              float(rng.integers(1, 50))) for _ in range(clients)] for _ in range(rounds)]


def mean_update(clients):
    """The sample-weighted mean update of one round, in float64 (the reference)."""
    total = sum(w for _, w in clients)
    return {k: sum(t[k].astype(np.float64) * w for t, w in clients) / total
            for k in clients[0][0]}


def continue_from_checkpoint(raw, model, rounds, split):
    """The same rounds played straight, and split at `split` through state()/load()."""
    straight = play(make(raw), model, rounds)
    first = make(raw)
    head = play(first, model, rounds[:split])
    saved = first.state()
    second = make(raw)
    second.load(saved)
    tail = play(second, head[-1], rounds[split:], start=split)
    return straight, head + tail


def assert_bits_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32
        np.testing.assert_array_equal(a[k].view(np.uint32), b[k].view(np.uint32))
