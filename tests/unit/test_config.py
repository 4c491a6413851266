"""Config validation: one clear error naming the field, the value and what is allowed."""

import pytest

from fedmpi import config
from fedmpi.errors import ConfigError


def base() -> dict:
    return {"name": "t", "rounds": 2, "clients": {"num_clients": 4}}


@pytest.mark.parametrize(
    "path, value, field, allowed",
    [
        ("rounds", 0, "rounds", ">= 1"),
        ("rounds", "3", "rounds", "an integer"),
        ("clients.fraction", 0.0, "clients.fraction", "(0, 1]"),
        ("clients.fraction", 1.5, "clients.fraction", "(0, 1]"),
        ("clients.per_round", 5, "clients.per_round", "1..clients.num_clients"),
        ("train.lr", -1, "train.lr", "> 0"),
        ("train.momentum", 1.0, "train.momentum", "[0, 1)"),
        ("data.dataset", "mnist", "data.dataset", "digits | cifar10"),
        ("data.partition.method", "zipf", "data.partition.method", "iid | lda | shards"),
        ("data.partition.alpha", 0, "data.partition.alpha", "> 0"),
        ("compression.target", "grads", "compression.target", "weights | update"),
        ("run.device", "tpu", "run.device", "auto | cpu | cuda"),
        ("run.deterministic", "yes", "run.deterministic", "true or false"),
        ("data.path", "/nonexistent/cifar", None, None),
    ],
)
def test_bad_values_name_the_field(path, value, field, allowed):
    raw = base()
    if path == "data.path":
        raw["data"] = {"dataset": "cifar10"}
        field, allowed = "data.path", "existing"
    config.set_path(raw, path, value)
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == field
    assert allowed in str(err.value)
    assert repr(value) in str(err.value)


def test_unknown_key_is_named_with_known_keys():
    raw = base()
    raw["train"] = {"epochs": 3}
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == "train.epochs"
    assert "local_epochs" in err.value.allowed


def test_world_size_checks():
    cfg = config.from_dict(base())
    with pytest.raises(ConfigError, match="needs >= 2 ranks"):
        config.check_world(cfg, 1)
    with pytest.raises(ConfigError) as err:
        config.check_world(cfg, 6)  # 5 workers > 4 clients
    assert err.value.field == "clients.num_clients"
    config.check_world(cfg, 5)


def test_overrides_and_list_indices(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\ncompression:\n  uplink:\n    - prune: {rate: 0.1}\n")
    cfg, text = config.load(p, ["compression.uplink.0.prune.rate=0.9", "train.local_epochs=3"])
    assert cfg.compression.uplink[0]["prune"]["rate"] == 0.9
    assert cfg.train.local_epochs == 3
    assert "overrides" in text
    with pytest.raises(ConfigError) as err:
        config.load(p, ["compression.uplink.3.prune.rate=0.9"])
    assert "list index" in str(err.value)
    with pytest.raises(ConfigError):
        config.load(p, ["novalue"])


def test_clients_per_round():
    raw = base()
    raw["clients"]["fraction"] = 0.4
    raw["clients"]["num_clients"] = 10
    assert config.from_dict(raw).clients_per_round() == 4
    raw["clients"]["per_round"] = 7
    assert config.from_dict(raw).clients_per_round() == 7


def test_round_trip_through_json():
    cfg = config.from_dict(base())
    import json

    assert config.from_dict(json.loads(cfg.to_json())) == cfg
