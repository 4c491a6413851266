"""Config keys of the plug-in interfaces: `strategy`, `compression.downlink_target`, and
either form of `compression.uplink` / `downlink`; bad values name the field."""

import pytest

from fedmpi import config
from fedmpi.errors import ConfigError
from fedmpi.experiment import build_links
from fedmpi.compressors.stages import StagePipeline


def test_defaults_are_todays_run():
    cfg = config.from_dict({})
    assert cfg.strategy == "fedavg"
    assert cfg.compression.downlink_target == "weights"
    assert '"strategy": "fedavg"' in cfg.to_json()


@pytest.mark.parametrize("raw", ["fedavg", {"fedavg": {}}, {"fedavg": None}])
def test_a_strategy_is_a_name_or_a_one_key_mapping(raw):
    assert config.from_dict({"strategy": raw}).strategy == raw


@pytest.mark.parametrize("raw, field, allowed", [
    ({"strategy": "fedsgd"}, "strategy", "one of the strategies fedadam, fedavg"),
    ({"strategy": {"fedavg": {}, "x": {}}}, "strategy", "a strategy name or a one-key mapping"),
    ({"strategy": 3}, "strategy", "a strategy name or a one-key mapping"),
    ({"strategy": {"fedavg": {"lr": 1.0}}}, "strategy.fedavg.lr", "one of the parameters"),
    # a field that is not a parameter (set by setup) is not settable from config either
    ({"strategy": {"fedavg": {"info": 1}}}, "strategy.fedavg.info", "one of the parameters"),
    ({"compression": {"downlink_target": "delta"}}, "compression.downlink_target",
     "weights | update"),
    ({"compression": {"uplink": {"nosuch": {}}}}, "compression.uplink", "one of the methods"),
    ({"compression": {"downlink": 7}}, "compression.downlink", "a list of stages"),
])
def test_bad_values_name_the_field(raw, field, allowed):
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == field and allowed in err.value.allowed


def test_stage_lists_build_the_stage_pipeline_with_the_codec_device():
    import torch

    cfg = config.from_dict({"compression": {"uplink": [{"prune": {"rate": 0.5}}]}})
    up, down = build_links(cfg, torch.device("cpu"))
    assert isinstance(up, StagePipeline) and up.device == torch.device("cpu")
    assert up.name == "prune(0.5)" and down.name == "dense"
    assert build_links(cfg)[0].device is None
