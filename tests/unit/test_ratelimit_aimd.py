"""AimdController: cut on throughput throttles, probe back up, honour Retry-After.

Time comes from trio's MockClock, advanced by hand (the controller never awaits)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from ratelimit import AimdController, RateLimitConfigError


def controller(clock: MockClock, **kwargs: float) -> AimdController:
    args = {"ceiling": 80.0, "floor": 1.0, "decrease": 0.5, "increase_per_s": 4.0} | kwargs
    return AimdController(**args, clock=clock.current_time)  # type: ignore[arg-type]


def at(clock: MockClock, t: float) -> None:
    clock.jump(t - clock.current_time())


def test_worked_sequence_from_the_docstring():
    """80 → 40 → 20 → 10 on throttles a second apart (20 in the first second cut once), then
    +4/s from one second after the last throttle, back to 80 at t=20.5."""
    clock = MockClock()
    aimd = controller(clock)
    assert aimd.current_rate() == 80.0
    assert aimd.on_throttle() == 40.0
    for i in range(1, 20):  # 19 more 130429 within the same second
        at(clock, i * 0.05)
        assert aimd.on_throttle() == 40.0
    at(clock, 1.0)
    assert aimd.on_throttle() == 20.0
    at(clock, 2.0)
    assert aimd.on_throttle() == 10.0
    expected = {3.0: 10.0, 4.0: 14.0, 5.0: 18.0, 10.0: 38.0, 20.5: 80.0, 100.0: 80.0}
    for t, rate in expected.items():
        at(clock, t)
        assert aimd.on_success() == pytest.approx(rate), t
    stats = aimd.statistics()
    assert (stats.throttles, stats.cuts, stats.rate) == (22, 3, 80.0)


def test_a_burst_of_20_throttles_cuts_once():
    clock = MockClock()
    aimd = controller(clock)
    for _ in range(20):
        aimd.on_throttle()
    assert aimd.current_rate() == 40.0
    assert aimd.statistics().cuts == 1


def test_retry_after_holds_and_delays_the_probe():
    clock = MockClock()
    aimd = controller(clock)
    assert aimd.hold_until == -math.inf
    at(clock, 10.0)
    assert aimd.on_throttle(retry_after=30.0) == 40.0
    assert aimd.hold_until == 40.0
    at(clock, 39.0)
    assert aimd.current_rate() == 40.0  # no probing while held
    at(clock, 41.0)
    assert aimd.current_rate() == 44.0
    at(clock, 41.5)
    assert aimd.on_throttle(retry_after=1.0) == 23.0  # 46 halved
    assert aimd.hold_until == 42.5
    at(clock, 42.0)
    aimd.on_throttle(retry_after=0.1)  # a shorter Retry-After never shortens the hold
    assert aimd.hold_until == 42.5


def test_a_cut_never_goes_below_the_floor():
    clock = MockClock()
    aimd = controller(clock, floor=15.0)
    for t in range(10):
        at(clock, float(t))
        aimd.on_throttle()
    assert aimd.current_rate() == 15.0


event = st.tuples(
    st.floats(0.0, 3.0, allow_nan=False),  # gap since the previous event, s
    st.sampled_from(["throttle", "success"]),
    st.one_of(st.none(), st.floats(0.0, 60.0, allow_nan=False)),  # retry_after
)


@settings(max_examples=300, deadline=None)
@given(
    ceiling=st.floats(1.0, 1000.0, allow_nan=False),
    floor_fraction=st.floats(0.001, 1.0, allow_nan=False),
    decrease=st.floats(0.05, 0.95, allow_nan=False),
    events=st.lists(event, max_size=60),
)
def test_rate_stays_within_bounds_and_recovers_to_the_ceiling(
    ceiling, floor_fraction, decrease, events
):
    """For any sequence of throttles and successes: floor <= rate <= ceiling at every event,
    and once throttles stop the rate climbs back to the ceiling no later than the documented
    time (cooldown + (ceiling - floor) / increase after the last throttle or hold), never
    going down on the way."""
    clock = MockClock()
    floor = ceiling * floor_fraction
    aimd = AimdController(ceiling, floor, decrease, clock=clock.current_time)
    increase = ceiling / 20
    last_throttle = -math.inf
    for gap, kind, retry_after in events:
        clock.jump(gap)
        if kind == "throttle":
            rate = aimd.on_throttle(retry_after)
            last_throttle = clock.current_time()
        else:
            rate = aimd.on_success()
        assert floor <= rate <= ceiling
    quiet_from = max(last_throttle, aimd.hold_until)
    recovered_by = quiet_from + 1.0 + (ceiling - floor) / increase
    previous = aimd.current_rate()
    for t in (clock.current_time() + k * 0.5 for k in range(1, 400)):
        rate = aimd.current_rate(t)
        assert floor <= rate <= ceiling
        assert rate >= previous
        previous = rate
    assert aimd.current_rate(max(recovered_by, clock.current_time())) == pytest.approx(ceiling)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ceiling": 0}, r"^AimdController: ceiling must be a positive finite number"),
        ({"floor": 100.0}, r"^AimdController: floor \(100\.0\) must not exceed ceiling \(80\.0\)$"),
        ({"decrease": 1.0}, r"^AimdController: decrease must be a factor strictly between 0 and 1"),
        ({"increase_per_s": -1}, r"^AimdController: increase_per_s must be a positive"),
        ({"cooldown_s": -0.1}, r"^AimdController: cooldown_s must be a finite number of seconds"),
    ],
)
def test_bad_knobs_are_named(kwargs, message):
    args = {"ceiling": 80.0} | kwargs
    with pytest.raises(RateLimitConfigError, match=message):
        AimdController(**args, clock=MockClock().current_time)  # type: ignore[arg-type]


def test_negative_retry_after_is_refused():
    aimd = controller(MockClock())
    with pytest.raises(RateLimitConfigError, match=r"^AimdController\.on_throttle: retry_after"):
        aimd.on_throttle(-1.0)
