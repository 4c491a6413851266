"""`fedmpi list`: every registry's entries, one line each, including ones registered later."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fedmpi import compress, compressors, strategies
from fedmpi.cli import main as cli
from fedmpi.compressors.base import Compressor
from fedmpi.data import registry as data_registry
from fedmpi.models import registry as model_registry
from fedmpi.strategies.base import Strategy

INPUT_SHAPE = (1, 2, 3)  # read by fedmpi.data.describe for the dataset registered below
NUM_CLASSES = 7


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith(" "):
            current = line.split(" (")[0]
            assert line.endswith("):"), line
            out[current] = []
        else:
            out[current].append(line.strip())
    return out


def _line(lines: list[str], key: str) -> str:
    found = [ln for ln in lines if ln.split()[0] == key]
    assert len(found) == 1, (key, lines)
    return found[0]


def test_lists_every_registry_with_parameters_and_paper(capsys):
    assert cli(["list"]) == 0
    sections = _sections(capsys.readouterr().out)
    assert list(sections) == ["compressors", "stages", "strategies", "datasets", "models"]
    for kind, registry in (("compressors", compressors.REGISTRY), ("stages", compress.REGISTRY),
                           ("strategies", strategies.REGISTRY)):
        keys = [ln.split()[0] for ln in sections[kind] if not ln.startswith("[")]
        assert keys == sorted(registry), kind
    prune = _line(sections["stages"], "prune")
    assert "rate=0.0, scope=global, tensors=all" in prune and "Magnitude pruning" in prune
    fedavg = _line(sections["strategies"], "fedavg")
    assert "McMahan et al. 2017" in fedavg and "info=" not in fedavg  # not a parameter
    assert "input 3x32x32, 10 classes" in _line(sections["datasets"], "cifar10")
    assert "ResNet-12" in _line(sections["models"], "resnet12")
    assert any("arXiv 2310.14693" in ln for ln in sections["compressors"])  # the stage list


@pytest.fixture
def late_plugins():
    """Register one of each kind as a new file would, and unregister them afterwards."""

    @compressors.base.register("zz_late")
    @dataclass(frozen=True, kw_only=True)
    class Late(Compressor):
        """Late compressor: registered after fedmpi.listing was written."""

        fraction: float = 0.25
        coding: str = "varint"

        def encode(self, tensors, ctx):  # pragma: no cover - never called here
            raise NotImplementedError

        def decode(self, payload, spec, ctx):  # pragma: no cover
            raise NotImplementedError

    @strategies.base.register("zz_strategy")
    @dataclass(kw_only=True)
    class LateStrategy(Strategy):
        paper = "Someone et al. 2031, A strategy"
        lr: float = 0.5

    @compress.base.register("zz_stage")
    @dataclass(frozen=True, kw_only=True)
    class LateStage(compress.base.Stage):
        width: int = 3

    def load(path=None):  # pragma: no cover - never called here
        """A dataset from nowhere."""

    def build(*, input_shape, num_classes):  # pragma: no cover
        """A model made of nothing."""

    data_registry.register(load)
    model_registry.register(build)
    yield
    del compressors.REGISTRY["zz_late"], strategies.REGISTRY["zz_strategy"]
    del compress.REGISTRY["zz_stage"], data_registry._LOADERS["test_listing"]
    del model_registry._BUILDERS["test_listing"]


def test_methods_registered_later_appear_without_changes(late_plugins, capsys):
    assert cli(["list"]) == 0
    sections = _sections(capsys.readouterr().out)
    late = _line(sections["compressors"], "zz_late")
    assert "fraction=0.25, coding=varint" in late
    assert late.endswith("Late compressor: registered after fedmpi.listing was written.")
    strategy = _line(sections["strategies"], "zz_strategy")
    assert "lr=0.5" in strategy and strategy.endswith("Someone et al. 2031, A strategy")
    assert "width=3" in _line(sections["stages"], "zz_stage")  # paper: this module's docstring
    assert _line(sections["stages"], "zz_stage").endswith("including ones registered later.")
    dataset = _line(sections["datasets"], "test_listing")
    assert "input 1x2x3, 7 classes" in dataset and dataset.endswith("A dataset from nowhere.")
    assert _line(sections["models"], "test_listing").endswith("A model made of nothing.")


def test_sections_can_be_chosen_and_unknown_ones_are_refused(capsys):
    assert cli(["list", "strategies", "models"]) == 0
    assert list(_sections(capsys.readouterr().out)) == ["strategies", "models"]
    assert cli(["list", "methods"]) == 2
    err = capsys.readouterr().err
    assert "'methods'" in err and "compressors, stages, strategies, datasets, models" in err
