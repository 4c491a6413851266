"""FedYogi (Reddi et al. 2021, Algorithm 2): v = v − (1−β2)·Δ²·sign(v − Δ²)."""

import math

import numpy as np
import pytest
from strategy_rounds import (assert_bits_equal, continue_from_checkpoint, make, mean_update, play,
                             random_rounds)

from fedmpi.errors import ConfigError
from fedmpi.strategies.adaptive import Adaptive

SHAPES = {"a": (4,), "b": (2, 2)}
HALF = {"lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 0.5}


def _const_round(values):
    d = np.asarray(values, np.float32)
    return [({"w": 3 * d}, 1.0), ({"w": np.zeros_like(d)}, 2.0)]  # mean: d


def test_three_rounds_by_hand_and_unlike_adam():
    rounds = [_const_round([1]), _const_round([2]), _const_round([-1])]
    yogi = make({"fedyogi": HALF})
    models = play(yogi, {"w": np.zeros(1, np.float32)}, rounds)
    # Δ = 1, 2, -1; v starts at τ² = 0.25: v ← v − 0.5·Δ²·sign(v − Δ²)
    # v: 0.25 + 0.5 = 0.75, 0.75 + 2 = 2.75, 2.75 − 0.5 = 2.25;  m: 0.5, 1.25, 0.125
    x1 = 0.5 / (math.sqrt(0.75) + 0.5)
    x2 = x1 + 1.25 / (math.sqrt(2.75) + 0.5)
    x3 = x2 + 0.125 / (1.5 + 0.5)
    for got, want in zip(models, [x1, x2, x3]):
        np.testing.assert_allclose(got["w"], [want], rtol=1e-6)
    np.testing.assert_allclose(yogi.state()["v/w"], [2.25], rtol=1e-6)
    adam = make({"fedadam": HALF})
    play(adam, {"w": np.zeros(1, np.float32)}, rounds)
    assert abs(adam.state()["v/w"][0] - 2.25) > 0.5  # Adam's v is 1.65625 here


def test_matches_a_scalar_reference_on_random_updates():
    lr, b1, b2, tau = 0.02, 0.8, 0.95, 0.01
    rounds = random_rounds(8, SHAPES)
    x0 = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    models = play(make({"fedyogi": {"lr": lr, "beta1": b1, "beta2": b2, "tau": tau}}), x0, rounds)
    for k, shape in SHAPES.items():
        for i in np.ndindex(shape):
            x, m, v = 0.0, 0.0, tau * tau
            for clients, got in zip(rounds, models):
                d = float(mean_update(clients)[k][i])
                m = b1 * m + (1 - b1) * d
                v = v - (1 - b2) * d * d * (1 if v > d * d else -1 if v < d * d else 0)
                x = x + lr * m / (math.sqrt(v) + tau)
                assert got[k][i] == pytest.approx(x, rel=1e-5, abs=1e-7)


def test_shares_the_adaptive_rule_with_fedadam():
    from fedmpi.strategies.fedadam import FedAdam
    from fedmpi.strategies.fedyogi import FedYogi
    assert issubclass(FedYogi, Adaptive) and issubclass(FedAdam, Adaptive)
    assert not issubclass(FedYogi, FedAdam)
    assert FedYogi.apply is FedAdam.apply is Adaptive.apply


@pytest.mark.parametrize("split", [1, 2])
def test_checkpoint_round_trip_continues_bit_identically(split):
    rounds = random_rounds(9, SHAPES, rounds=3)
    x0 = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    straight, resumed = continue_from_checkpoint({"fedyogi": {}}, x0, rounds, split)
    for a, b in zip(straight, resumed):
        assert_bits_equal(a, b)


def test_load_refuses_a_fedavgm_state():
    m = make("fedavgm")
    play(m, {"w": np.zeros(2, np.float32)}, [_const_round([1, 2])])
    with pytest.raises(ValueError, match=r"strategy fedyogi.*slots 'm' and 'v' differ"):
        make("fedyogi").load(m.state())


@pytest.mark.parametrize("params, field", [
    ({"lr": -1}, "strategy.fedyogi.lr"), ({"beta2": 1}, "strategy.fedyogi.beta2"),
    ({"tau": float("inf")}, "strategy.fedyogi.tau"), ({"beta1": True}, "strategy.fedyogi.beta1"),
])
def test_parameter_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        make({"fedyogi": params})
    assert err.value.field == field
