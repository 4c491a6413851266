"""FedAdam (Reddi et al. 2021, Algorithm 2): m, v = τ² initially, x += lr·m/(√v + τ)."""

import math

import numpy as np
import pytest
from strategy_rounds import (assert_bits_equal, continue_from_checkpoint, make, mean_update, play,
                             random_rounds)

from fedmpi.errors import ConfigError

SHAPES = {"fc.weight": (3, 2), "fc.bias": (2,)}
HALF = {"fedadam": {"lr": 1.0, "beta1": 0.5, "beta2": 0.5, "tau": 0.5}}


def _const_round(values):
    d = np.asarray(values, np.float32)
    return [({"w": 2 * d}, 2.0), ({"w": -2 * d}, 1.0), ({"w": 2 * d}, 1.0)]  # mean: d


def test_three_rounds_by_hand():
    s = make(HALF)
    assert s.state() == {}  # nothing before the first round
    models = play(s, {"w": np.zeros(1, np.float32)},
                  [_const_round([1]), _const_round([2]), _const_round([-1])])
    # Δ = 1, 2, -1; β1 = β2 = τ = 0.5; m starts at 0 and v at τ² = 0.25
    # m: 0.5, 1.25, 0.125   v: 0.625, 2.3125, 1.65625
    x1 = 0.5 / (math.sqrt(0.625) + 0.5)
    x2 = x1 + 1.25 / (math.sqrt(2.3125) + 0.5)
    x3 = x2 + 0.125 / (math.sqrt(1.65625) + 0.5)
    for got, want in zip(models, [x1, x2, x3]):
        np.testing.assert_allclose(got["w"], [want], rtol=1e-6)
    st = s.state()
    np.testing.assert_allclose([st["m/w"][0], st["v/w"][0]], [0.125, 1.65625], rtol=1e-6)


def test_matches_a_scalar_reference_on_random_updates():
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    rounds = random_rounds(5, SHAPES)
    x0 = {k: np.random.default_rng(6).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    models = play(make({"fedadam": {"lr": lr, "beta1": b1, "beta2": b2, "tau": tau}}), x0, rounds)
    for k, shape in SHAPES.items():
        for i in np.ndindex(shape):  # element by element, in Python floats
            x, m, v = float(x0[k][i]), 0.0, tau * tau
            for clients, got in zip(rounds, models):
                d = float(mean_update(clients)[k][i])
                m = b1 * m + (1 - b1) * d
                v = b2 * v + (1 - b2) * d * d
                x = x + lr * m / (math.sqrt(v) + tau)
                assert got[k][i] == pytest.approx(x, rel=1e-5, abs=1e-6)


def test_second_moment_starts_at_tau_squared():
    # Δ = τ = 1e-3 in round 1: v = 0.99·τ² + 0.01·Δ² = τ², so x = 0.1·Δ / (τ + τ) = 0.05.
    # Starting from v = 0 it would be 0.1·Δ / (0.1·Δ + τ) ≈ 0.091.
    s = make({"fedadam": {"lr": 1.0, "tau": 1e-3}})
    (x,) = play(s, {"w": np.zeros(1, np.float32)}, [_const_round([1e-3])])
    assert x["w"][0] == pytest.approx(0.05, rel=1e-4)
    np.testing.assert_allclose(s.state()["v/w"], [1e-6], rtol=1e-4)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_checkpoint_round_trip_continues_bit_identically(split):
    rounds = random_rounds(7, SHAPES, rounds=4)
    x0 = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    straight, resumed = continue_from_checkpoint({"fedadam": {"lr": 0.1}}, x0, rounds, split)
    for a, b in zip(straight, resumed):
        assert_bits_equal(a, b)


def test_load_refuses_states_with_wrong_names_or_shapes():
    s = make("fedadam")
    with pytest.raises(ValueError, match=r"fedadam.*unknown entry 'u/w'.*'m/<tensor>' and 'v/<tensor>'"):
        s.load({"u/w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"slots 'm' and 'v' differ.*only in the first: \['w'\]"):
        s.load({"m/w": np.zeros(2)})
    with pytest.raises(ValueError, match=r"slots 'm' and 'v' differ.*w \(2,\) vs \(3,\)"):
        s.load({"m/w": np.zeros(2), "v/w": np.zeros(3)})
    s.load({"m/w": np.zeros((2, 2), np.float32), "v/w": np.ones((2, 2), np.float32)})
    with pytest.raises(ValueError, match="does not fit the model"):
        s.begin(0, {"w": np.zeros(4, np.float32)})


@pytest.mark.parametrize("params, field", [
    ({"lr": 0.0}, "strategy.fedadam.lr"), ({"lr": float("nan")}, "strategy.fedadam.lr"),
    ({"beta1": 1.0}, "strategy.fedadam.beta1"), ({"beta2": -0.5}, "strategy.fedadam.beta2"),
    ({"tau": 0}, "strategy.fedadam.tau"), ({"tau": 2.0}, "strategy.fedadam.tau"),
    ({"momentum": 0.9}, "strategy.fedadam.momentum"),
])
def test_parameter_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        make({"fedadam": params})
    assert err.value.field == field
