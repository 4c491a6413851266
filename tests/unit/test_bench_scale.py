"""`fedmpi bench scale`: the runs it configures and the targets it checks."""

from __future__ import annotations

import argparse

import pytest

from fedmpi import config
from fedmpi.bench import scale


def test_its_runs_are_valid_configs_with_every_client_sampled():
    for model, links in (("bulk18", scale.BULK_LINKS), ("mlp", {})):
        raw = scale._config("s", model, 1000, 2, links)
        cfg = config.from_dict(raw)
        assert cfg.clients.per_round == cfg.clients.num_clients == 1000
        assert cfg.train.model == model


def _row(model, clients, rss, overhead=0.5):
    return {"model": model, "clients": clients, "server_peak_rss_mb": rss,
            "overhead_ms_per_client": overhead}


@pytest.mark.parametrize("big, met", [(1400, True), (1600, False)])
def test_the_rss_ratio_is_largest_over_smallest_clients(big, met):
    rows = [_row("bulk18", 100, 1200), _row("bulk18", 1000, big), _row("bulk18", 10, 1000)]
    ((what, value, target, ok),) = scale.ratios(rows)
    assert "1000 / at 10" in what and value == pytest.approx(big / 1000) and ok is met
    assert target == 1.5


def test_the_overhead_target_is_one_ms_per_client():
    (r,) = scale.ratios([_row("mlp", 1000, 500, overhead=1.2)])
    assert r[1:] == (1.2, 1.0, False)


def test_rounds_must_be_positive():
    with pytest.raises(SystemExit, match="--rounds"):
        scale.run(argparse.Namespace(rounds=0))
