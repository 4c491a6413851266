"""The wait schedule of fedmpi.backoff, on a fake clock: spin first, then sleeps that
double from min_sleep_s up to max_sleep_s, never more than 1/32 of the time waited."""

import pytest

from fedmpi.backoff import LATE_FRACTION, Backoff, PollPolicy


class FakeTime:
    def __init__(self, poll_cost: float = 1e-6):
        self.now = 0.0
        self.poll_cost = poll_cost  # what one spin (a poll + sched_yield) takes
        self.sleeps: list[float] = []
        self.spins = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def spin(self) -> None:
        self.spins += 1
        self.now += self.poll_cost


def waiter(policy: PollPolicy, t: FakeTime) -> Backoff:
    return Backoff(policy, clock=t.clock, sleep=t.sleep, spin=t.spin)


def run_until(b: Backoff, t: FakeTime, until: float) -> None:
    while t.now < until:
        b.pause()


def test_spins_without_sleeping_for_spin_s():
    t = FakeTime()
    b = waiter(PollPolicy(spin_s=1e-4, min_sleep_s=1e-5, max_sleep_s=1e-3), t)
    run_until(b, t, 0.99e-4)
    assert t.sleeps == [] and t.spins in (99, 100)  # the old transport slept 0.5 ms at once
    assert b.spinning


def test_sleeps_double_up_to_the_cap_and_never_exceed_a_share_of_the_wait():
    t = FakeTime()
    p = PollPolicy(spin_s=1e-4, min_sleep_s=1e-5, max_sleep_s=2e-3)
    b = waiter(p, t)
    run_until(b, t, 2.0)
    assert min(t.sleeps) == p.min_sleep_s
    assert max(t.sleeps) == p.max_sleep_s
    prev = 0.0  # replay: every sleep is min(2 x previous, cap, 1/32 of the wait), >= min
    now = t.spins * t.poll_cost
    for s in t.sleeps:
        want = p.min_sleep_s if prev == 0 else min(2 * prev, p.max_sleep_s)
        want = max(p.min_sleep_s, min(want, LATE_FRACTION * now))
        assert s == pytest.approx(want, rel=1e-12)
        prev, now = s, now + s
    # an idle wait of 2 s wakes about 1 / max_sleep_s times a second, not 2000 times
    assert len(t.sleeps) < 2.0 / p.max_sleep_s + 200


def test_a_message_that_arrives_during_a_sleep_is_seen_at_most_a_32nd_late():
    p = PollPolicy(spin_s=1e-4, min_sleep_s=1e-5, max_sleep_s=1.0)
    for arrival in (3e-4, 2e-3, 0.02, 0.3):
        t = FakeTime()
        b = waiter(p, t)
        run_until(b, t, arrival)
        assert t.now - arrival <= max(p.min_sleep_s, LATE_FRACTION * t.now) + 1e-12


def test_progress_starts_the_spin_over():
    t = FakeTime()
    b = waiter(PollPolicy(spin_s=1e-4, min_sleep_s=1e-5, max_sleep_s=1e-3), t)
    run_until(b, t, 0.01)
    assert not b.spinning
    b.progress()
    before = len(t.sleeps)
    run_until(b, t, t.now + 0.9e-4)
    assert b.spinning and len(t.sleeps) == before


@pytest.mark.parametrize("kw", [{"spin_s": -1.0}, {"min_sleep_s": 0.0},
                                {"min_sleep_s": 1e-2, "max_sleep_s": 1e-3}])
def test_policy_refuses_contradictions(kw):
    with pytest.raises(ValueError, match="poll policy"):
        PollPolicy(**kw)


def test_policy_from_config_section():
    from fedmpi import config

    cfg = config.from_dict({"name": "t", "run": {"poll": {"spin_s": 0.0, "min_sleep_s": 2e-5,
                                                          "max_sleep_s": 4e-3}}})
    assert PollPolicy.of(cfg.run.poll) == PollPolicy(0.0, 2e-5, 4e-3)
    assert cfg.to_dict()["run"]["poll"] == {"spin_s": 0.0, "min_sleep_s": 2e-5,
                                            "max_sleep_s": 4e-3}  # stored in the result file


def test_a_cap_bounds_each_sleep_but_never_below_min_sleep():
    """A wait with posted sends pending sleeps at most the cap (the transport's
    TRANSFER_SLEEP_S), so that its transfers progress; a cap below min_sleep_s is min_sleep_s."""
    t = FakeTime()
    p = PollPolicy(spin_s=1e-4, min_sleep_s=1e-5, max_sleep_s=2e-3)
    b = waiter(p, t)
    while t.now < 1.0:
        b.pause(cap=1e-4)
    assert max(t.sleeps) == pytest.approx(1e-4) and min(t.sleeps) == p.min_sleep_s
    assert len(t.sleeps) > 0.9 / 1e-4
    t2 = FakeTime()
    b = waiter(p, t2)
    while t2.now < 0.1:
        b.pause(cap=1e-9)
    assert set(t2.sleeps) == {p.min_sleep_s}
    b.pause()  # without a cap the doubling resumes from where it was
    assert t2.sleeps[-1] == pytest.approx(2 * p.min_sleep_s)


def test_a_start_in_the_past_counts_as_spun():
    # the transport spins on its own first and hands the backoff its start time
    t = FakeTime()
    t.now = 5.0
    p = PollPolicy(spin_s=1e-3, min_sleep_s=1e-5, max_sleep_s=1e-3)
    b = Backoff(p, clock=t.clock, sleep=t.sleep, spin=t.spin, start=5.0 - p.spin_s)
    b.pause()
    assert t.spins == 0 and t.sleeps == [p.min_sleep_s] and not b.spinning
    fresh = waiter(p, t)  # without start: spins from now
    fresh.pause()
    assert t.spins == 1 and fresh.spinning
