"""configs/paper: the CPU-scale reproduction uses the paper's ResNet-12 (the CNN stays as a
variant), and the study sweep files expand to the grids results/README.md describes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from fedmpi import config, sweep
from fedmpi.compressors import build_compressor
from fedmpi.report import heatmap
from fedmpi.results.flatten import flatten

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
THETAS = [0.0, 0.5, 0.7, 0.9, 0.95]


def _tasks(name):
    s = sweep.load(PAPER / name)
    return s, [config.from_dict(t.apply(s.base)) for t in s.tasks]


def test_cpu_config_is_resnet12_and_the_cnn_variant_differs_only_in_model():
    cpu = yaml.safe_load((PAPER / "cpu.yaml").read_text())
    cnn = yaml.safe_load((PAPER / "cpu-cnn.yaml").read_text())
    assert cpu["train"]["model"] == "resnet12" and cnn["train"]["model"] == "cnn"
    diff = {k for k, v in flatten(cpu).items() if flatten(cnn).get(k) != v}
    assert diff == {"name", "train.model"}
    assert "layer" in (PAPER / "cpu-cnn.yaml").read_text()  # the collapse finding is kept


def test_cpu_sweeps_theta_by_epochs_with_three_seeds_for_e1():
    s1, e1 = _tasks("sweep-cpu.yaml")
    s10, e10 = _tasks("sweep-cpu-e10.yaml")
    assert s1.name == s10.name == "paper-cpu"  # one results folder, one report
    cells = lambda cfgs: sorted((c.compression.uplink[0]["prune"]["rate"],  # noqa: E731
                                 c.compression.downlink[0]["prune"]["rate"],
                                 c.train.local_epochs, c.seed) for c in cfgs)
    assert cells(e1) == sorted((t, t, 1, s) for t, s in itertools.product(THETAS, [0, 1, 2]))
    assert cells(e10) == sorted((t, t, 10, 0) for t in THETAS)
    assert all(c.train.model == "resnet12" for c in e1 + e10)
    names = {t.name for t in s1.tasks} | {t.name for t in s10.tasks}
    assert len(names) == 20  # no file shared between the two parts


def test_quant_sweep_covers_theta_bits_ef_once_each():
    s, cfgs = _tasks("sweep-quant.yaml")
    cells = []
    for c in cfgs:
        assert c.compression.target == "update"
        build_compressor(c.compression.uplink, field="compression.uplink")
        cells.append(heatmap.cell_of(flatten({"compression": {"uplink":
                                                              c.compression.uplink}})))
    want = set(itertools.product([True, False], [0.0, 0.2, 0.5, 0.8], [32, 8, 4, 2, 1]))
    assert len(cells) == 40 and set(cells) == want
    assert (False, 0.5, 4) in cells  # the paper's "50% pruning + 4-bit quantization"


def test_noniid_sweep_partitions_by_theta():
    s, cfgs = _tasks("sweep-noniid.yaml")
    parts = {(c.data.partition.method, c.data.partition.alpha if c.data.partition.method == "lda"
              else c.data.partition.shards_per_client) for c in cfgs}
    assert parts == {("lda", 100.0), ("lda", 1.0), ("lda", 0.1), ("shards", 2)}
    thetas = sorted({c.compression.uplink[0]["prune"]["rate"] for c in cfgs})
    assert thetas == [0.0, 0.5, 0.9] and len(cfgs) == 12
    assert all(c.compression.uplink[0]["prune"]["rate"] == c.compression.downlink[0]["prune"]["rate"]
               for c in cfgs)


@pytest.mark.parametrize("name", ["cpu.yaml", "cpu-cnn.yaml", "paper.yaml"])
def test_configs_load(name):
    config.load(PAPER / name)
