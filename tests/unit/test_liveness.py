"""The liveness rule (fedmpi/liveness.py): how long a rank waits on a silent peer."""

from __future__ import annotations

import math

import pytest

from fedmpi import config
from fedmpi.errors import ConfigError
from fedmpi.liveness import DEFAULT_TIMEOUT_S, PAUSE_S, Liveness, Stopwatch, when


def test_the_floor_alone_until_rounds_are_slow():
    rule = Liveness(timeout_s=30.0)
    assert rule.limit() == 30.0  # start-up and round 0: nothing measured yet
    rule.observe_round(2.5)
    assert rule.limit() == 30.0  # 10 x 2.5 = 25 < 30
    rule.observe_round(4.0)
    assert rule.limit() == 40.0  # 10 x the slowest round
    rule.observe_round(1.0)  # a faster round does not shrink it
    assert rule.limit() == 40.0
    assert rule.slowest_round_s == 4.0


def test_workers_wait_twice_as_long_as_rank_0():
    hub, worker = Liveness(timeout_s=30.0), Liveness(timeout_s=30.0, hub=False)
    assert (hub.limit(), worker.limit()) == (30.0, 60.0)
    for rule in (hub, worker):
        rule.observe_round(7.0)
    assert (hub.limit(), worker.limit()) == (70.0, 140.0)
    assert hub.explain() == "max(run.timeout_s 30 s, 10 x slowest round 7.0 s)"
    assert worker.explain() == "2 x max(run.timeout_s 30 s, 10 x slowest round 7.0 s) on a worker rank"


def polled(watch: Stopwatch, now: list[float], until: float, step: float = 0.5) -> bool:
    """Advance the fake clock to `until` in poll steps; whether the wait expired by then."""
    while now[0] < until:
        now[0] = min(until, now[0] + step)
        if watch.expired():
            return True
    return False


def test_stopwatch_expires_after_the_limit_and_restarts_on_progress():
    now = [100.0]
    watch = Stopwatch(8.0, clock=lambda: now[0])
    assert not polled(watch, now, 108.0)  # exactly the limit is still in time
    assert polled(watch, now, 108.01)
    watch.progress()
    assert not polled(watch, now, 116.0)
    assert polled(watch, now, 116.5)


def test_time_this_rank_was_stopped_itself_does_not_count():
    """A suspended job (every rank stopped, then continued) must not fail on resume."""
    now = [0.0]
    watch = Stopwatch(8.0, clock=lambda: now[0])
    assert not polled(watch, now, 6.0)
    now[0] += 3600.0  # no poll for an hour: we were stopped
    assert not watch.expired()
    assert not polled(watch, now, 3600 + 8.0)  # 6 s before the pause + 2 s after
    assert polled(watch, now, 3600 + 8.5)
    now[0] += PAUSE_S  # a gap of exactly PAUSE_S still counts as waiting
    assert watch.expired()


def test_round_wording():
    assert when(None) == "during start-up" and when(-1) == "during start-up"
    assert when(4) == "in round 4"


def test_run_timeout_s_default_and_validation():
    cfg = config.from_dict({"name": "t"})
    assert cfg.run.timeout_s == DEFAULT_TIMEOUT_S == 600.0
    assert config.from_dict({"run": {"timeout_s": 5}}).run.timeout_s == 5.0
    for bad in (0, 0.5, -3, math.inf, math.nan, 8 * 24 * 3600):
        with pytest.raises(ConfigError) as err:
            config.from_dict({"run": {"timeout_s": bad}})
        assert err.value.field == "run.timeout_s"
        assert "a number in [1, 604800]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.from_dict({"run": {"timeout_s": "10 min"}})
    assert err.value.field == "run.timeout_s" and "a number" in str(err.value)
