"""Client-specific pruning rates (compression.client_rate): the rules, their errors, the
ASSIGN plumbing through any strategy, the encoder's override, the uniform equivalent."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpi import config
from fedmpi.compress.prune import n_drop
from fedmpi.compressors import Context, build_compressor
from fedmpi.compressors import client_rate as cr
from fedmpi.errors import ConfigError
from fedmpi.strategies import RunInfo, build_strategy
from fedmpi.wire import Kind

UP = [{"prune": {"rate": 0.5}}, {"sparse": {}}, {"zstd": {}}]


def test_samples_rule_prunes_more_data_less():
    rule = cr.parse({"rule": "samples", "min": 0.2, "max": 0.8})
    rates = rule.rates([100, 400, 250, 100], numel=1000)
    np.testing.assert_allclose(rates, [0.8, 0.2, 0.5, 0.8], atol=1e-6)
    assert (rule.rates([7, 7, 7], 10) == np.float32(0.5)).all()  # all equal: the middle


def test_bandwidth_rule_keeps_what_fits_the_budget():
    rule = cr.parse({"rule": "bandwidth", "budgets": [400, 2000, 4000, 1], "max": 0.95})
    # 1000 entries = 4000 dense bytes: budget / 4000 of the values survive
    np.testing.assert_allclose(rule.rates([1] * 4, numel=1000), [0.9, 0.5, 0.0, 0.95],
                               atol=1e-6)


def test_bandwidth_rule_takes_its_budgets_from_the_link_model():
    """seconds: T -> client c's budget is what its modelled uplink moves in T seconds
    after its latency; a random model gives every client its own θ."""
    from fedmpi.experiment import build_strategy as build_for_run
    from fedmpi.linkmodel import FixedLinks, RandomLinks

    rule = cr.parse({"rule": "bandwidth", "seconds": 1.0, "max": 0.95})
    fixed = FixedLinks(up_bps=8000.0, down_bps=8000.0, latency_s=0.5)  # 1000 B/s, 0.5 s left
    np.testing.assert_allclose(rule.rates([1] * 3, numel=1000, links=fixed), 0.875, atol=1e-6)
    slow = FixedLinks(up_bps=8.0, down_bps=8.0, latency_s=3.0)  # nothing fits: max
    np.testing.assert_allclose(rule.rates([1] * 2, numel=1000, links=slow), 0.95, atol=1e-6)
    rand = RandomLinks(seed=3, up_bps=8000.0, down_bps=8000.0, spread=0.7)
    got = rule.rates([1] * 6, numel=1000, links=rand)
    want = [min(0.95, max(0.0, 1 - 1.0 * rand.link(c).up_bps / 8 / 4000)) for c in range(6)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(set(got.tolist())) >= 4  # unclipped: each client its own θ
    with pytest.raises(ConfigError) as exc:  # no link model given
        rule.rates([1] * 3, numel=1000)
    assert exc.value.field == "compression.client_rate.seconds"
    # through the run's setup: the config's link section is the model
    cfg = config.from_dict({"name": "t", "data": {"dataset": "digits"},
                            "clients": {"num_clients": 6, "fraction": 1.0},
                            "link": {"kind": "random", "up_bps": 8000.0, "spread": 0.7,
                                     "seed": 3},
                            "compression": {"uplink": UP, "client_rate":
                                            {"rule": "bandwidth", "seconds": 1.0,
                                             "max": 0.95}}})
    picks = dict(build_for_run(cfg, np.ones(6), numel=1000).select(0))
    np.testing.assert_allclose([picks[c]["prune_rate"] for c in range(6)], want, atol=1e-6)


def test_bandwidth_rule_from_seconds_needs_a_link_model_in_the_config():
    with pytest.raises(ConfigError) as exc:
        _cfg(client_rate={"rule": "bandwidth", "seconds": 1.0})
    assert exc.value.field == "compression.client_rate.seconds"
    assert "link.kind" in str(exc.value)


def test_list_rule_and_float32_values():
    rule = cr.parse({"rule": "list", "rates": [0, 0.3, 0.9]}, num_clients=3)
    r = rule.rates([1, 2, 3], numel=10)
    assert r.tolist() == [0.0, float(np.float32(0.3)), float(np.float32(0.9))]


@pytest.mark.parametrize("raw, field", [
    ("samples", "compression.client_rate"),
    ({"rule": "size"}, "compression.client_rate.rule"),
    ({"rule": "samples", "min": 0.9, "max": 0.5}, "compression.client_rate.min"),
    ({"rule": "samples", "max": 1.0}, "compression.client_rate.max"),
    ({"rule": "samples", "rates": [0.1]}, "compression.client_rate.rates"),
    ({"rule": "list", "rates": [0.1, 1.2]}, "compression.client_rate.rates[1]"),
    ({"rule": "list", "rates": [0.1, True]}, "compression.client_rate.rates[1]"),
    ({"rule": "list", "rates": [0.1]}, "compression.client_rate.rates"),  # 1 of 2 clients
    ({"rule": "list"}, "compression.client_rate.rates"),
    ({"rule": "bandwidth", "budgets": [10, -1]}, "compression.client_rate.budgets[1]"),
    ({"rule": "bandwidth"}, "compression.client_rate.budgets"),  # neither
    ({"rule": "bandwidth", "budgets": [1, 2], "seconds": 1}, "compression.client_rate.budgets"),
    ({"rule": "bandwidth", "seconds": 0}, "compression.client_rate.seconds"),
    ({"rule": "bandwidth", "seconds": True}, "compression.client_rate.seconds"),
    ({"rule": "bandwidth", "seconds": float("nan")}, "compression.client_rate.seconds"),
    ({"rule": "samples", "seconds": 1}, "compression.client_rate.seconds"),
])
def test_bad_rules_name_the_field(raw, field):
    with pytest.raises(ConfigError) as exc:
        cr.parse(raw, num_clients=2)
    assert exc.value.field == field


def _cfg(**compression):
    raw = {"name": "t", "data": {"dataset": "digits"}, "clients": {"num_clients": 3},
           "compression": {"uplink": UP, **compression}}
    return config.from_dict(raw)


def test_config_validates_the_rule_and_needs_a_prune_stage():
    cfg = _cfg(client_rate={"rule": "list", "rates": [0.1, 0.2, 0.3]})
    assert cfg.compression.client_rate["rule"] == "list"
    with pytest.raises(ConfigError, match="client_rate.rates"):
        _cfg(client_rate={"rule": "list", "rates": [0.1, 0.2]})
    with pytest.raises(ConfigError) as exc:
        config.from_dict({"name": "t", "data": {"dataset": "digits"},
                          "compression": {"uplink": [{"sparse": {}}],
                                          "client_rate": {"rule": "samples"}}})
    assert exc.value.field == "compression.client_rate"
    with pytest.raises(ConfigError):
        config.from_dict({"name": "t", "data": {"dataset": "digits"},
                          "compression": {"uplink": {"topk": {}},
                                          "client_rate": {"rule": "samples"}}})


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", {"fedadam": {}}])
def test_any_strategy_carries_the_rate_beside_its_own_settings(strategy):
    from fedmpi.experiment import build_strategy as build_for_run

    cfg = config.from_dict({"name": "t", "data": {"dataset": "digits"}, "strategy": strategy,
                            "clients": {"num_clients": 4, "fraction": 1.0},
                            "compression": {"uplink": UP, "client_rate":
                                            {"rule": "samples", "min": 0.1, "max": 0.7}}})
    s = build_for_run(cfg, np.array([10, 40, 20, 10]), numel=100)
    own = build_strategy(strategy).client_settings
    assert s.client_settings == (*own, "prune_rate")
    picks = dict(s.select(0))
    assert sorted(picks) == [0, 1, 2, 3]
    np.testing.assert_allclose([picks[c]["prune_rate"] for c in range(4)],
                               [0.7, 0.1, 0.5, 0.7], atol=1e-6)
    if "prox_mu" in own:
        assert all("prox_mu" in v for v in picks.values())
    with pytest.raises(ValueError, match="already carries"):
        s.add_settings(("prune_rate",), lambda r, c: {})


def test_strategy_without_rule_is_unchanged():
    s = build_strategy("fedavg")
    s.setup(RunInfo(seed=0, num_clients=3, per_round=3, samples=np.ones(3), target="weights"))
    assert s.client_settings == () and all(v == {} for _, v in s.select(0))


def test_encoder_applies_the_client_rate_and_one_decoder_reads_all():
    comp = build_compressor(UP, field="compression.uplink")
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((40, 25)).astype(np.float32),
               "b": rng.standard_normal(25).astype(np.float32)}
    spec = [(k, v.shape) for k, v in tensors.items()]
    sizes = {}
    for rate in (None, 0.0, 0.3, 0.9):
        settings = {} if rate is None else {"prune_rate": rate}
        ctx = Context(0, 0, 1, "up", settings=settings)
        enc = comp.encode(tensors, ctx)
        want = 0.5 if rate is None else rate
        assert enc.nnz == 1025 - n_drop(want, 1025)
        out = comp.decode(enc.payload, spec, ctx.for_decode())  # the configured decoder
        for k in tensors:
            np.testing.assert_array_equal(out[k], enc.reconstructed[k])
        sizes[rate] = enc.payload.nbytes
    assert sizes[0.0] > sizes[0.3] > sizes[None] > sizes[0.9]
    with pytest.raises(ValueError, match="prune_rate"):
        comp.encode(tensors, Context(0, 0, 1, "up", settings={"prune_rate": 1.5}))
    no_prune = build_compressor([{"sparse": {}}], field="compression.uplink")
    with pytest.raises(ValueError, match="no prune stage"):
        no_prune.encode(tensors, Context(0, 0, 1, "up", settings={"prune_rate": 0.5}))


def _messages(rows):
    kind, client, nnz, numel, size = zip(*rows)
    return {"kind": np.array(kind), "client": np.array(client), "nnz": np.array(nnz),
            "numel": np.array(numel), "sender_bytes": np.array(size)}


def test_rates_of_run_and_uniform_equivalent():
    up, model = int(Kind.UPDATE), int(Kind.MODEL)
    # bytes = 100 + 5 * nnz exactly; clients at θ 0.9, 0.5, 0.1 of 1000 entries
    rows = [(up, c, k, 1000, 100 + 5 * k) for c, k in ((0, 100), (1, 500), (2, 900))] * 2
    rows.append((model, -1, 1000, 1000, 4000))
    m = _messages(rows)
    assert cr.rates_of_run(m) == pytest.approx({0: 0.9, 1: 0.5, 2: 0.1})
    eq = cr.uniform_equivalent(m)
    # mean bytes = 100 + 5 * 500: the uniform run keeps 500 of 1000 -> θ = 0.5
    assert eq["theta"] == pytest.approx(0.5) and eq["messages"] == 6
    assert eq["total_bytes"] == 6 * (100 + 5 * 500)
    uniform = _messages([(up, c, 300, 1000, 1700) for c in range(3)])
    assert cr.uniform_equivalent(uniform)["theta"] == pytest.approx(0.7)


def test_torch_codec_applies_the_client_rate_with_the_uplink_codec_id():
    import torch

    from fedmpi.compressors.stages import StagePipeline

    comp = build_compressor(UP, field="compression.uplink")
    dev = StagePipeline(comp.pipeline, torch.device("cpu"))  # the on-device codec's adapter
    rng = np.random.default_rng(3)
    t = {"w": rng.standard_normal((30, 30)).astype(np.float32)}
    ctx = Context(0, 2, 4, "up", settings={"prune_rate": 0.8})
    a = comp.encode(t, ctx)
    b = dev.encode({k: torch.from_numpy(v) for k, v in t.items()}, ctx)
    assert bytes(np.asarray(a.payload)) == bytes(np.asarray(b.payload))
    assert a.nnz == 900 - n_drop(0.8, 900)
    out = dev.decode(a.payload, [("w", (30, 30))], ctx.for_decode())
    np.testing.assert_array_equal(out["w"].numpy(), a.reconstructed["w"])
