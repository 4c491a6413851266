"""FedAvgM: server momentum v = momentum·v + Δ, x = x + lr·v (Hsu et al. 2019)."""

import numpy as np
import pytest
from strategy_rounds import (assert_bits_equal, continue_from_checkpoint, make, mean_update, play,
                             random_rounds)

from fedmpi.errors import ConfigError

SHAPES = {"conv.weight": (2, 3), "conv.bias": (3,)}


def _const_round(values):
    """One round whose weighted mean update of tensor 'w' is `values` (weights 1 and 3)."""
    d = np.asarray(values, np.float32)
    return [({"w": 4 * d}, 1.0), ({"w": np.zeros_like(d)}, 3.0)]


def test_three_rounds_by_hand():
    s = make({"fedavgm": {"lr": 0.1, "momentum": 0.5}})
    rounds = [_const_round([1, -2]), _const_round([2, 0]), _const_round([-1, 4])]
    models = play(s, {"w": np.zeros(2, np.float32)}, rounds)
    # v: (1, -2) -> (2.5, -1) -> (0.25, 3.5);  x = x + 0.1·v
    expected = [[0.1, -0.2], [0.35, -0.3], [0.375, 0.05]]
    for got, want in zip(models, expected):
        np.testing.assert_allclose(got["w"], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s.state()["v/w"], [0.25, 3.5], rtol=1e-6)


def test_matches_a_scalar_reference_on_random_updates():
    lr, mom = 0.7, 0.9
    rounds = random_rounds(1, SHAPES)
    x0 = {k: np.random.default_rng(2).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    models = play(make({"fedavgm": {"lr": lr, "momentum": mom}}), x0, rounds)
    x = {k: v.astype(np.float64) for k, v in x0.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    for clients, got in zip(rounds, models):
        d = mean_update(clients)
        for k in x:
            v[k] = mom * v[k] + d[k]
            x[k] = x[k] + lr * v[k]
            np.testing.assert_allclose(got[k], x[k], rtol=1e-5, atol=1e-6)


def test_no_momentum_and_unit_lr_is_fedavg():
    rounds = random_rounds(3, SHAPES)
    x0 = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    m = play(make({"fedavgm": {"lr": 1.0, "momentum": 0.0}}), x0, rounds)
    a = play(make("fedavg"), x0, rounds)
    for k in x0:
        np.testing.assert_allclose(m[-1][k], a[-1][k], rtol=1e-6)
    # and with momentum the trajectory really differs
    m9 = play(make({"fedavgm": {"lr": 1.0, "momentum": 0.9}}), x0, rounds)
    assert not np.allclose(m9[-1]["conv.weight"], a[-1]["conv.weight"], rtol=1e-3)


@pytest.mark.parametrize("split", [1, 2])
def test_checkpoint_round_trip_continues_bit_identically(split):
    rounds = random_rounds(4, SHAPES, rounds=4)
    x0 = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    straight, resumed = continue_from_checkpoint({"fedavgm": {}}, x0, rounds, split)
    for a, b in zip(straight, resumed):
        assert_bits_equal(a, b)


def test_state_is_a_copy_in_both_directions():
    s = make("fedavgm")
    play(s, {"w": np.zeros(2, np.float32)}, [_const_round([1, 1])])
    st = s.state()
    assert set(st) == {"v/w"} and st["v/w"].dtype == np.float64
    st["v/w"][:] = 99
    assert s.state()["v/w"][0] == 1.0
    t = make("fedavgm")
    given = {"v/w": np.array([1.0, 1.0])}
    t.load(given)
    given["v/w"][:] = 99
    assert t.state()["v/w"][0] == 1.0


def test_load_refuses_foreign_states_clearly():
    s = make("fedavgm")
    with pytest.raises(ValueError, match=r"fedavgm.*unknown entry 'm/w'.*'v/<tensor>'"):
        s.load({"m/w": np.zeros(2)})
    with pytest.raises(ValueError, match="unknown entry 'w'"):
        s.load({"w": np.zeros(2)})
    with pytest.raises(ValueError, match="dtype int64"):
        s.load({"v/w": np.zeros(2, np.int64)})
    s.load({"v/w": np.zeros(3)})  # fits some model; this one has 2 values
    with pytest.raises(ValueError, match=r"does not fit the model.*w \(3,\) vs \(2,\)"):
        s.begin(0, {"w": np.zeros(2, np.float32)})
    s.load({"v/other": np.zeros(2)})
    with pytest.raises(ValueError, match=r"only in the state: \['other'\].*only in the model: \['w'\]"):
        s.begin(0, {"w": np.zeros(2, np.float32)})
    s.load({})  # a state taken before the first round: fresh start
    play(s, {"w": np.zeros(2, np.float32)}, [_const_round([1, 1])])


@pytest.mark.parametrize("params, field", [
    ({"lr": 0}, "strategy.fedavgm.lr"), ({"lr": 101}, "strategy.fedavgm.lr"),
    ({"momentum": 1.0}, "strategy.fedavgm.momentum"),
    ({"momentum": -0.1}, "strategy.fedavgm.momentum"),
    ({"momentum": "high"}, "strategy.fedavgm.momentum"),
    ({"beta1": 0.9}, "strategy.fedavgm.beta1"),
])
def test_parameter_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        make({"fedavgm": params})
    assert err.value.field == field
