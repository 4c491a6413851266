"""configs/zoo: the base is the paper's CPU protocol with ResNet-12 on updates, and the
sweeps expand to the documented methods x strengths x seeds with the documented
parameter names (no runs here)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedmpi import config as cfgmod
from fedmpi import sweep as sw

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "configs" / "zoo"
# The method parameter names every helper agreed on (issue 11 / COMMON.md): a typo in a
# sweep would otherwise only show when that task runs, hours into the sweep.
PARAMS = {
    "topk": {"fraction", "count", "scope", "feedback"},
    "randk": {"fraction", "feedback"},
    "threshold": {"tau", "feedback"},
    "qsgd": {"levels", "bucket", "coding"},
    "terngrad": {"bucket"},
    "signsgd": {"vote"},
    "efsignsgd": set(),
    "stc": {"fraction", "feedback"},
    "fedzip": {"fraction", "clusters"},
    "powersgd": {"rank", "feedback"},
    "randsign": {"fraction", "feedback", "vote"},
}
FULL = {  # method config -> (uplink method, its strength parameter and value)
    "dense": None, "prune-0.5": ("prune", "rate", 0.5), "prune-0.9": ("prune", "rate", 0.9),
    "topk-0.1": ("topk", "fraction", 0.1), "topk-0.01": ("topk", "fraction", 0.01),
    "randk-0.1": ("randk", "fraction", 0.1), "threshold-0.001": ("threshold", "tau", 0.001),
    "qsgd-4": ("qsgd", "levels", 4), "qsgd-16": ("qsgd", "levels", 16),
    "terngrad": ("terngrad", None, None), "signsgd-vote": ("signsgd", "vote", True),
    "efsignsgd": ("efsignsgd", None, None), "stc-0.1": ("stc", "fraction", 0.1),
    "stc-0.01": ("stc", "fraction", 0.01), "fedzip-0.1": ("fedzip", "fraction", 0.1),
    "powersgd-1": ("powersgd", "rank", 1), "powersgd-4": ("powersgd", "rank", 4),
    "signsgd-vote+efsign-down": ("signsgd", "vote", True),
    "stc-0.03+efsign-down": ("stc", "fraction", 0.03),
    "fedzip-0.05+efsign-down": ("fedzip", "fraction", 0.05),
    "rsign-0.25+efsign-down": ("randsign", "fraction", 0.25),
    "rsign-0.1+efsign-down": ("randsign", "fraction", 0.1),
}
OWN_DOWNLINK = {m: {"efsignsgd": {}} for m in FULL if m.endswith("+efsign-down")}  # beyond
# the fixed downlink rule


def _raw(name: str) -> dict:
    return cfgmod.read_yaml(ZOO / name, "sweep")[1]


def _compression(task: sw.Task) -> dict:
    return dict(task.overrides)["compression"]


def test_base_is_the_paper_cpu_protocol_with_resnet12_on_updates():
    base = cfgmod.load(ZOO / "base.yaml")[0].to_dict()
    paper = cfgmod.load(ROOT / "configs" / "paper" / "cpu.yaml")[0].to_dict()
    assert base["train"]["model"] == "resnet12" and paper["train"]["model"] == "resnet12"
    assert base.pop("compression") == {"target": "update", "uplink": [], "downlink": [],
                                       "downlink_target": "weights", "client_rate": None}
    paper.pop("compression")
    base.pop("name"), paper.pop("name")
    assert base == paper


def test_full_sweep_is_every_method_times_three_seeds():
    tasks = sw.expand(_raw("sweep.yaml"))
    assert [t.name for t in tasks] == [f"method={m}_seed={s}" for m in FULL for s in (0, 1, 2)]
    for task in tasks[::3]:
        method = task.name.split("_")[0].split("=")[1]
        comp = _compression(task)
        if FULL[method] is None:
            assert comp == {"target": "update", "uplink": [], "downlink": []}
            continue
        key, param, value = FULL[method]
        if key == "prune":  # the paper's method as the paper runs it: weights, both links
            assert comp["target"] == "weights" and "downlink_target" not in comp
            assert comp["uplink"] == comp["downlink"]
            assert comp["uplink"][0] == {"prune": {"rate": value, "scope": "global",
                                                   "tensors": "all"}}
            continue
        assert comp["target"] == "update" and comp["downlink_target"] == "update"
        (up_key, up), = comp["uplink"].items()
        (down_key, down), = comp["downlink"].items()
        assert up_key == key and set(up) <= PARAMS[key], method
        assert set(down) <= PARAMS[down_key], method
        if param is not None:
            assert up[param] == value, method
        # the downlink rule of the sweep file's header
        if method in OWN_DOWNLINK:
            assert comp["downlink"] == OWN_DOWNLINK[method]
        elif key == "stc":
            assert comp["downlink"] == comp["uplink"]
        else:
            fraction = {"topk": value, "randk": value, "threshold": 0.01}.get(key, 0.1)
            assert comp["downlink"] == {"topk": {"fraction": fraction, "feedback": True}}


def test_quick_sweep_is_small_and_on_digits():
    raw = _raw("quick.yaml")
    tasks = sw.expand(raw)
    assert len(tasks) == 5 and all(t.name.endswith("_seed=0") for t in tasks)
    assert raw["set"]["rounds"] <= 5
    base = cfgmod.load(ZOO / raw["base"])[0]
    assert (base.data.dataset, base.train.model) == ("digits", "mlp")
    for task in tasks:
        for link in ("uplink", "downlink"):
            spec = _compression(task)[link]
            if isinstance(spec, dict):
                (key, params), = spec.items()
                assert set(params) <= PARAMS[key], task.name


def test_tasks_that_todays_config_knows_are_valid_configs():
    """dense and prune use only list-form links: valid whatever else is merged."""
    for name in ("sweep.yaml", "quick.yaml"):
        raw = _raw(name)
        base = cfgmod.read_yaml(ZOO / raw["base"], "base")[1]
        for task in sw.expand(raw):
            comp = _compression(task)
            if isinstance(comp["uplink"], list) and "downlink_target" not in comp:
                cfgmod.from_dict(task.apply(base))


def _missing() -> list[str]:
    from fedmpi.compressors import REGISTRY

    missing = [k for k in PARAMS if k not in REGISTRY]
    fields = {f.name for f in dataclasses.fields(cfgmod.CompressionConfig)}
    if "downlink_target" not in fields:
        missing.append("compression.downlink_target")
    return missing


@pytest.mark.skipif(bool(_missing()), reason=f"not merged yet: {', '.join(_missing())}")
@pytest.mark.parametrize("name", ["sweep.yaml", "quick.yaml"])
def test_every_task_loads_and_builds_its_compressors(name):
    from fedmpi.compressors import build_compressor

    loaded = sw.load(ZOO / name)
    for task in loaded.tasks:
        comp = sw.task_config(loaded, task)["compression"]
        for link in ("uplink", "downlink"):
            build_compressor(comp[link], field=f"{task.name}: compression.{link}")
