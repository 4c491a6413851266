"""The link model: transfer time = latency + 8 x bytes / bandwidth exactly; random links a
pure function of (seed, client); a strict trace parser; a round's simulated time."""

import math
import subprocess
import sys

import numpy as np
import pytest

from fedmpi import config, linkmodel
from fedmpi.errors import ConfigError
from fedmpi.linkmodel import (DOWN, MODEL, UP, UPDATE, FixedLinks, Link, RandomLinks,
                              parse_trace, round_times)

ASSIGN, REPORT, MEMORY = 1, 4, 7


def test_fixed_link_times_are_exact():
    m = FixedLinks(up_bps=10e6, down_bps=50e6, latency_s=0.02)
    assert m.transfer_s(1_250_000, 3, UP) == 0.02 + 1.0  # 10 Mbit at 10 Mbit/s
    assert m.transfer_s(1_250_000, 3, "down") == 0.02 + 0.2
    for n in (0, 1, 32, 999_983, 44_772_000):
        assert m.transfer_s(n, 0, UP) == 0.02 + 8 * n / 10e6
        assert m.transfer_s(n, 7, DOWN) == 0.02 + 8 * n / 50e6


def test_directions_are_checked():
    m = FixedLinks(1e6, 1e6)
    with pytest.raises(ValueError, match="down | up"):
        m.transfer_s(10, 0, "sideways")
    with pytest.raises(ValueError, match="0 .down. | 1 .up."):
        m.transfer_s(10, 0, 2)


def test_random_links_are_a_pure_function_of_seed_and_client():
    m = RandomLinks(seed=5, up_bps=10e6, down_bps=100e6, latency_s=0.05)
    forward = [m.link(c) for c in range(50)]
    backward = [m.link(c) for c in reversed(range(50))][::-1]
    assert forward == backward  # independent of which clients a rank asks for, in what order
    assert RandomLinks(5, 10e6, 100e6, 0.05).link(17) == forward[17]
    assert RandomLinks(6, 10e6, 100e6, 0.05).link(17) != forward[17]
    assert len({link.up_bps for link in forward}) == 50
    # a median around up_bps (lognormal, sigma 0.5): not all above or below
    ups = np.array([link.up_bps for link in forward])
    assert 10 < (ups > 10e6).sum() < 40
    # exact time from the drawn link
    link = forward[3]
    assert m.transfer_s(12345, 3, UP) == link.latency_s + 8 * 12345 / link.up_bps


def test_random_links_do_not_depend_on_the_process():
    """Another process (another rank, another rank layout) draws the same links."""
    code = ("from fedmpi.linkmodel import RandomLinks; m = RandomLinks(9, 1e7, 1e8, 0.01, "
            "'uniform', 0.5); print(repr([tuple(m.link(c).__dict__.values()) "
            "for c in (0, 41, 7)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    m = RandomLinks(9, 1e7, 1e8, 0.01, "uniform", 0.5)
    assert out.strip() == repr([tuple(m.link(c).__dict__.values()) for c in (0, 41, 7)])
    for c in range(100):  # uniform: within +-50%
        assert 0.5e7 <= m.link(c).up_bps <= 1.5e7


def test_random_spread_limits():
    with pytest.raises(ConfigError, match="link.spread"):
        RandomLinks(0, 1e6, 1e6, 0.0, "uniform", 1.0)
    with pytest.raises(ConfigError, match="link.distribution"):
        RandomLinks(0, 1e6, 1e6, 0.0, "pareto", 0.5)


TRACE = """client,up_bps,down_bps,latency_s
# a comment line
0,1e6,8e6,0.05
1, 2000000 , 16000000, 0.1
"""


def test_trace_parses_and_times_are_exact():
    m = parse_trace(TRACE, "t.csv")
    assert m.link(1) == Link(2e6, 16e6, 0.1)
    assert m.transfer_s(1000, 0, UP) == 0.05 + 8 * 1000 / 1e6
    with pytest.raises(ConfigError, match="client 2 has none"):
        m.link(2)


@pytest.mark.parametrize("text, where, value", [
    ("client,up,down,latency\n0,1,1,0\n", "line 1, field header", "client,up,down,latency"),
    ("client,up_bps,down_bps,latency_s\n0,1e6,1e6,0\nx,1e6,1e6,0\n", "line 3, field client", "x"),
    ("client,up_bps,down_bps,latency_s\n0,fast,1e6,0\n", "line 2, field up_bps", "fast"),
    ("client,up_bps,down_bps,latency_s\n0,1e6,0,0\n", "line 2, field down_bps", "0"),
    ("client,up_bps,down_bps,latency_s\n0,1e6,1e6,-1\n", "line 2, field latency_s", "-1"),
    ("client,up_bps,down_bps,latency_s\n0,1e6,nan,0\n", "line 2, field down_bps", "nan"),
    ("client,up_bps,down_bps,latency_s\n\n0,1e6,1e6\n", "line 3, field row", "0,1e6,1e6"),
    ("client,up_bps,down_bps,latency_s\n0,1,1,0\n0,2,2,0\n", "line 3, field client", 0),
    ("client,up_bps,down_bps,latency_s\n-1,1,1,0\n", "line 2, field client", -1),
    ("", "line 1, field header", ""),
])
def test_trace_errors_name_the_line_and_the_field(text, where, value):
    with pytest.raises(ConfigError) as err:
        parse_trace(text, "links.csv")
    assert err.value.field == f"link.trace (links.csv, {where})"
    assert err.value.value == value


def _cfg(tmp_path, link, clients=3):
    return config.from_dict({"name": "t", "seed": 4, "clients": {"num_clients": clients},
                             "link": link})


def test_config_section(tmp_path):
    assert _cfg(tmp_path, {}).link.kind == "none"
    assert linkmodel.from_config(_cfg(tmp_path, {}).link, 0) is None
    cfg = _cfg(tmp_path, {"kind": "random", "up_bps": 5e6})
    m = linkmodel.from_config(cfg.link, cfg.seed)
    assert m == RandomLinks(4, 5e6, 100e6, 0.0, "lognormal", 0.5)  # seed: the experiment's
    trace = tmp_path / "links.csv"
    trace.write_text("client,up_bps,down_bps,latency_s\n0,1,1,0\n1,1,1,0\n")
    with pytest.raises(ConfigError) as err:  # 3 clients, 2 rows: found before training
        _cfg(tmp_path, {"kind": "trace", "trace": str(trace)})
    assert err.value.field == "link.trace" and "first: client 2" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, {"kind": "trace"})
    assert err.value.field == "link.trace"
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, {"kind": "satellite"})
    assert err.value.field == "link.kind" and "none | fixed | random | trace" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, {"kind": "random", "distribution": "uniform", "spread": 1.5})
    assert err.value.field == "link.spread"
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, {"kind": "fixed", "up_bps": 0})
    assert err.value.field == "link.up_bps"


def round_rows():
    """One round: client 5 and client 9 get the model (2 MODEL rows), send updates; plus
    control and checkpoint rows that a real deployment does not have."""
    kind = np.array([ASSIGN, MODEL, MODEL, UPDATE, UPDATE, REPORT, MEMORY])
    direction = np.array([DOWN, DOWN, DOWN, UP, UP, UP, UP])
    client = np.array([-1, 5, 9, 9, 5, -1, 5])
    nbytes = np.array([64, 4_000_000, 4_000_000, 1_000_000, 250_000, 500, 4_000_000])
    return kind, direction, client, nbytes


def test_round_time_is_the_slowest_clients_down_plus_up():
    m = FixedLinks(up_bps=10e6, down_bps=100e6, latency_s=0.01)
    per_message, total = round_times(m, *round_rows())
    down = 0.01 + 8 * 4_000_000 / 100e6
    expect = [math.nan, down, down, 0.01 + 8 * 1_000_000 / 10e6, 0.01 + 8 * 250_000 / 10e6,
              math.nan, math.nan]
    np.testing.assert_array_equal(per_message, expect)
    assert total == down + 0.01 + 8 * 1_000_000 / 10e6  # client 9 is the slower


def test_round_time_with_per_client_links():
    m = parse_trace("client,up_bps,down_bps,latency_s\n5,1e5,1e6,0\n9,1e7,1e8,0\n")
    per_message, total = round_times(m, *round_rows())
    assert total == 8 * 4_000_000 / 1e6 + 8 * 250_000 / 1e5  # client 5's slow link
    assert per_message[1] == 8 * 4_000_000 / 1e6 and per_message[2] == 8 * 4_000_000 / 1e8


def test_without_a_model_everything_is_nan():
    per_message, total = round_times(None, *round_rows())
    assert np.isnan(per_message).all() and math.isnan(total)
    with pytest.raises(ValueError, match="equal length"):
        round_times(None, [1, 2], [0], [0], [1])


def test_a_broadcast_to_a_worker_is_each_of_its_clients_download():
    """downlink_target update: one MODEL per worker (client -1) serves all its clients."""
    m = FixedLinks(up_bps=1e6, down_bps=1e7)
    kind = np.array([MODEL, MODEL, UPDATE, UPDATE, UPDATE])
    direction = np.array([DOWN, DOWN, UP, UP, UP])
    client = np.array([-1, -1, 3, 4, 8])
    worker = np.array([1, 2, 1, 1, 2])
    nbytes = np.array([1_000_000, 1_000_000, 100_000, 200_000, 50_000])
    per_message, total = round_times(m, kind, direction, client, nbytes, worker=worker)
    assert np.isnan(per_message[:2]).all()  # no single client's link
    assert total == 8 * 1_000_000 / 1e7 + 8 * 200_000 / 1e6  # client 4 (worker 1) is slowest
    _, without = round_times(m, kind, direction, client, nbytes)
    assert without == 8 * 200_000 / 1e6  # uploads only: the caller did not say who got what
