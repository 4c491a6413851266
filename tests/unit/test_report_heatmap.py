"""fedmpi report's pruning × quantization heat map, on synthetic files whose every number
is fixed (Exact), so the cells are checked against hand-computed values."""

from __future__ import annotations

import pandas as pd
import pytest

from fedmpi.cli import main as cli
from fedmpi.report import heatmap
from fedmpi.results import synthetic

NUMEL4 = 4 * synthetic.NUMEL  # dense bytes of one update


def _uplink(theta, bits, ef):
    stages = [{"prune": {"rate": theta}}]
    if bits == 1:
        stages.append({"quantize": {"method": "sign"}})
    elif bits < 32:
        stages.append({"quantize": {"method": "uniform", "bits": bits}})
    if ef:
        stages.append({"memory": {}})
    return stages + [{"sparse": {}}, {"zstd": {}}]


# (θ, bits, EF, seed) -> (uplink bytes per message, final accuracy)
CELLS = {
    (0.0, 32, True, 0): (40_000, 0.60), (0.0, 32, True, 1): (40_000, 0.62),
    (0.5, 4, True, 0): (4_000, 0.58), (0.5, 1, True, 0): (2_000, 0.50),
    (0.0, 32, False, 0): (40_000, 0.61), (0.5, 4, False, 0): (4_000, 0.55),
}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    for i, ((theta, bits, ef, seed), (up, acc)) in enumerate(CELLS.items()):
        exact = synthetic.Exact(up=up, down=NUMEL4, accuracy=[0.1, 0.2, acc],
                                compression={"uplink": _uplink(theta, bits, ef)})
        synthetic.write_run(d / f"r{i}.h5", theta=theta, seed=seed, rounds=3, exact=exact,
                            name=f"q{i}")
    out = d / "report"
    assert cli(["report", str(d), "--out", str(out)]) == 0
    return out


def test_cell_of_reads_the_stage_list():
    from fedmpi.results.flatten import flatten

    def cell(uplink):
        return heatmap.cell_of(flatten({"compression": {"uplink": uplink}}))

    assert cell(_uplink(0.5, 4, True)) == (True, 0.5, 4)
    assert cell(_uplink(0.8, 1, False)) == (False, 0.8, 1)
    assert cell(_uplink(0.0, 32, False)) == (False, 0.0, 32)
    assert cell([{"quantize": {"method": "pow2", "bits": 3}}]) == (False, 0.0, 4)
    assert cell([]) == (False, 0.0, 32)
    assert cell({"topk": {"fraction": 0.1}}) is None


def test_heat_map_cells_are_the_hand_computed_ones(report_dir):
    tab = pd.read_csv(report_dir / "quant.csv")
    assert len(tab) == 5  # the two seeds of (0, 32, EF on) are one cell
    row = {(bool(r.ef), r.theta, r.bits): r for r in tab.itertuples()}
    base_on = (0.60 + 0.62) / 2
    assert row[(True, 0.0, 32)].n == 2
    assert row[(True, 0.5, 4)].delta_pp == pytest.approx(100 * (0.58 - base_on))
    assert row[(True, 0.5, 1)].delta_pp == pytest.approx(100 * (0.50 - base_on))
    assert row[(False, 0.5, 4)].delta_pp == pytest.approx(100 * (0.55 - 0.61))  # own EF base
    assert row[(True, 0.5, 1)].up_compression == pytest.approx(NUMEL4 / 2_000)
    assert row[(False, 0.0, 32)].up_compression == pytest.approx(1.0)
    for ef in ("on", "off"):
        png = report_dir / f"heatmap_quant_ef-{ef}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report_dir / "quant.md").read_text()
    assert "| on | 0.5 | 1 (sign) | 50.00 | -11.00 | 20.00x |" in md


def test_grid_leaves_missing_cells_blank(report_dir):
    tab = pd.read_csv(report_dir / "quant.csv")
    thetas, bits, z = heatmap.grid(tab, False, "delta_pp")
    assert thetas == [0.0, 0.5] and bits == [32, 4]
    assert z[0, 0] == 0 and pd.isna(z[0, 1]) and z[1, 1] == pytest.approx(-6.0)


def test_no_heat_map_without_quantization(tmp_path):
    for i, theta in enumerate((0.0, 0.5)):
        synthetic.write_run(tmp_path / f"p{i}.h5", theta=theta, rounds=2)
    out = tmp_path / "report"
    assert cli(["report", str(tmp_path), "--out", str(out)]) == 0
    assert not list(out.glob("heatmap_*")) and not (out / "quant.md").exists()
