"""FedAvg through the Strategy interface gives StreamingFedAvg's bits, for either target."""

import numpy as np
import pytest
from strategy_rounds import assert_bits_equal, make, random_rounds

from fedmpi.aggregate import StreamingFedAvg
from fedmpi.errors import ConfigError

SHAPES = {"l1.weight": (5, 3), "l1.bias": (3,), "l2.weight": (7,)}


@pytest.mark.parametrize("key", ["fedavg", "fedprox"])  # FedProx aggregates as FedAvg
@pytest.mark.parametrize("target", ["weights", "update"])
@pytest.mark.parametrize("seed", range(4))
def test_equals_streaming_fedavg_bit_for_bit(key, target, seed):
    (clients,) = random_rounds(seed, SHAPES, rounds=1, clients=5)
    reference = {k: np.random.default_rng(seed + 100).normal(size=s).astype(np.float32)
                 for k, s in SHAPES.items()}
    s = make(key, target=target)
    s.begin(3, reference)
    expected = StreamingFedAvg(reference if target == "update" else None)
    for c, (tensors, weight) in enumerate(clients):
        s.fold(c, tensors, weight)
        expected.add(tensors, weight)
    assert_bits_equal(s.finish(), expected.result())


def test_a_compressor_fold_replaces_the_mean():
    class Majority:  # stands for a compressor's own aggregation (signSGD's vote)
        def add(self, tensors, weight):
            self.seen = tensors

        def result(self):
            return {k: np.sign(v) for k, v in self.seen.items()}

    s = make("fedavg")
    s.begin(0, {"w": np.zeros(2, np.float32)}, fold=Majority())
    s.fold(0, {"w": np.array([-3.0, 2.0], np.float32)}, 1.0)
    np.testing.assert_array_equal(s.finish()["w"], [-1.0, 1.0])


def test_fedavg_has_no_parameters_and_no_state():
    with pytest.raises(ConfigError) as err:
        make({"fedavg": {"lr": 1.0}})
    assert err.value.field == "strategy.fedavg.lr"
    s = make("fedavg")
    assert s.state() == {}
    with pytest.raises(ValueError, match="fedavg keeps no state"):
        s.load({"v/w": np.zeros(1)})
