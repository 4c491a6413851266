"""Client-specific pruning rates through the wire: a real 3-rank run where each client
has its own θ (compression.client_rate), beside a strategy with its own client setting."""

from __future__ import annotations

import h5py
import pytest
import numpy as np
from mpijobs import QUICK, fedmpi_cmd, run

from fedmpi.compress.prune import n_drop
from fedmpi.compressors import client_rate as cr
from fedmpi.wire import Kind

# The library under test here is fedmpi's codecs/methods/reports, not MPI: the mpich
# leg runs it, `make test-openmpi` leaves it out (pyproject: any_mpi).
pytestmark = pytest.mark.any_mpi

RATES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _messages(path):
    with h5py.File(path, "r", locking=False) as f:
        return {k: f["messages"][k][()] for k in f["messages"]}, dict(f.attrs)


def test_per_client_rates_set_the_bytes_each_client_sends(tmp_path):
    out = tmp_path / "rates.h5"
    rates = "[" + ", ".join(map(str, RATES)) + "]"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=2",
                         "--set", "strategy={fedprox: {mu: 0.01}}",
                         "--set", "compression.downlink=[{sparse: {}}]",
                         "--set", f"compression.client_rate={{rule: list, rates: {rates}}}"),
              timeout=300)
    assert res.returncode == 0, res.stderr
    m, attrs = _messages(out)
    assert attrs["status"] == "completed"
    up = m["kind"] == int(Kind.UPDATE)
    np.testing.assert_array_equal(m["sender_bytes"][up], m["receiver_bytes"][up])
    numel = int(m["numel"][up][0])
    by_client = {}
    for c, nnz, size in zip(m["client"][up], m["nnz"][up], m["sender_bytes"][up]):
        # the rule's rate was applied on the worker, per client (exact unless exact zeros)
        assert numel - n_drop(float(np.float32(RATES[c])), numel) - nnz in range(0, 50)
        by_client.setdefault(int(c), []).append(int(size))
    assert sorted(by_client) == list(range(10)) and all(len(v) == 2 for v in by_client.values())
    mean = [np.mean(by_client[c]) for c in range(10)]
    assert all(a > b for a, b in zip(mean, mean[1:])), mean  # higher θ, fewer bytes
    assert mean[0] > 5 * mean[9]
    used = cr.rates_of_run(m)
    np.testing.assert_allclose([used[c] for c in range(10)], RATES, atol=0.02)
    # the uniform θ of the same total bytes lies inside the rule's range
    eq = cr.uniform_equivalent(m)
    assert 0.3 < eq["theta"] < 0.6 and eq["messages"] == 20
    text = cr.describe(out)
    assert f"compression.uplink.0.prune.rate={eq['theta']:.4f}" in text
    assert len(text.splitlines()) == 1 + 10 + 2


def test_samples_rule_prunes_the_larger_clients_less(tmp_path):
    out = tmp_path / "samples.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=1",
                         "--set", "data.partition={method: lda, alpha: 0.3, size_sigma: 1.0}",
                         "--set", "compression.client_rate={rule: samples, min: 0.2, max: 0.9}"),
              timeout=300)
    assert res.returncode == 0, res.stderr
    m, _ = _messages(out)
    up = m["kind"] == int(Kind.UPDATE)
    with h5py.File(out, "r", locking=False) as f:
        samples = f["clients"]["samples"][()]
    used = cr.rates_of_run(m)
    order = np.argsort(samples, kind="stable")
    most, fewest = int(order[-1]), int(order[0])
    assert used[most] < used[fewest]
    assert abs(used[most] - 0.2) < 0.02 and abs(used[fewest] - 0.9) < 0.02
    size = {int(c): int(b) for c, b in zip(m["client"][up], m["sender_bytes"][up])}
    assert size[most] > size[fewest]
    # the comparison table (rule vs uniform runs), here a run against itself: Δ 0
    table = cr.compare([(str(out), str(out))]).splitlines()
    assert len(table) == 2 + 1 + 1
    row = table[2].split("|")
    assert row[2].strip() == "0.200–0.900" and row[4] == row[7] and row[8].strip() == "+0.0"
    assert row[3] == row[6] and float(row[3]) > 0
    assert cr.main(["--compare", str(out)]) == 2  # an unpaired file: usage
