"""FedProx (Li et al. 2020): mu travels to the clients as a setting; the proximal term
keeps local training near the model the client started from."""

import numpy as np
import pytest
import torch
from strategy_rounds import make

from fedmpi import models
from fedmpi.errors import ConfigError
from fedmpi.train import train_local


def test_every_selected_client_gets_mu_as_its_setting():
    s = make({"fedprox": {"mu": 0.25}}, clients=6)
    assert type(s).client_settings == ("prox_mu",)
    picks = s.select(2)
    assert len(picks) == 6
    assert all(settings == {"prox_mu": 0.25} for _, settings in picks)
    assert s.local_options(picks[0][1]) == {"prox_mu": 0.25}


def test_fedavg_sends_no_settings_and_trains_without_the_term():
    s = make("fedavg", clients=2)
    assert all(settings == {} for _, settings in s.select(0))
    assert s.local_options({}) == {}


@pytest.mark.parametrize("settings, match", [
    ({}, "lack 'prox_mu'"), ({"prox_mu": float("nan")}, "prox_mu = nan"),
    ({"prox_mu": -1.0}, "prox_mu = -1.0"),
])
def test_local_options_refuse_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        make("fedprox").local_options(settings)


def _distance_after_training(prox_mu):
    torch.manual_seed(0)
    model = models.build("mlp", input_shape=(1, 8, 8), num_classes=10)
    start = [p.detach().clone() for p in model.parameters()]
    data = torch.Generator().manual_seed(3)
    x = torch.randn(80, 1, 8, 8, generator=data)
    y = torch.randint(0, 10, (80,), generator=data)
    options = make({"fedprox": {"mu": prox_mu}}).local_options({"prox_mu": prox_mu})
    train_local(model, x, y, epochs=5, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.0,
                generator=torch.Generator().manual_seed(1), **options)
    return float(sum((p.detach() - a).pow(2).sum() for p, a in zip(model.parameters(), start)))


def test_the_proximal_term_keeps_the_client_near_its_start():
    free, mild, strong = (_distance_after_training(mu) for mu in (0.0, 0.1, 1.0))
    assert strong < mild < free
    assert strong < 0.5 * free  # a real pull, not rounding noise
    assert _distance_after_training(0.0) == free  # same data and generator: deterministic


@pytest.mark.parametrize("params, field", [
    ({"mu": -0.01}, "strategy.fedprox.mu"), ({"mu": 1e3}, "strategy.fedprox.mu"),
    ({"mu": "0.1"}, "strategy.fedprox.mu"), ({"lr": 0.1}, "strategy.fedprox.lr"),
])
def test_parameter_errors_name_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        make({"fedprox": params})
    assert err.value.field == field
