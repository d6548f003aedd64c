"""PairSpacing (one message per 6 s to one recipient) and the 131056 backoff."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from ratelimit import (
    BACKOFF_131056_CAP_S,
    PairSpacing,
    PairStatistics,
    RateLimitConfigError,
    backoff_131056,
)

attempt = st.tuples(
    st.floats(0.0, 4.0, allow_nan=False),  # gap since the previous attempt, s
    st.sampled_from(["wa:111", "wa:222", "wa:333", ("pn-2", "wa:111")]),  # any hashable key
)


@settings(max_examples=300, deadline=None)
@given(interval=st.floats(0.5, 10.0, allow_nan=False), attempts=st.lists(attempt, max_size=80))
def test_each_recipient_is_spaced_and_independent_of_the_others(interval, attempts):
    """Against a per-key model: a reservation succeeds iff the key's last reservation is at
    least `interval` old; a refusal returns exactly the time still to wait (> 0) and reserves
    nothing; so accepted sends to one key are >= interval apart and other keys never matter."""
    clock = MockClock()
    pair = PairSpacing(interval, clock=clock.current_time)
    last_sent: dict[object, float] = {}
    for gap, key in attempts:
        clock.jump(gap)
        now = clock.current_time()
        expected_next = last_sent[key] + interval if key in last_sent else now
        assert pair.next_allowed(key) == max(now, expected_next)
        wait = pair.try_reserve(key)
        if expected_next <= now:
            assert wait == 0.0
            last_sent[key] = now
        else:
            assert wait == pytest.approx(expected_next - now)
            assert wait > 0
        # memory: only keys reserved within the last interval are remembered
        live = sum(1 for t in last_sent.values() if t + interval > now)
        assert len(pair) == live


def test_a_waiting_recipient_does_not_block_another():
    clock = MockClock()
    pair = PairSpacing(6.0, clock=clock.current_time)
    assert pair.try_reserve("wa:111") == 0.0
    clock.jump(1.0)
    assert pair.try_reserve("wa:111") == pytest.approx(5.0)  # defer this one...
    assert pair.try_reserve("wa:222") == 0.0  # ...and send to the next one now
    clock.jump(5.0)
    assert pair.try_reserve("wa:111") == 0.0


def test_memory_stays_bounded_by_the_recipients_of_the_last_interval():
    """100,000 distinct recipients at 1,000/s, 6 s spacing: never more than ~6,000 remembered,
    and the expiry heap does not grow past that either."""
    clock = MockClock()
    pair = PairSpacing(6.0, clock=clock.current_time)
    high_water = 0
    for i in range(100_000):
        clock.jump(0.001)
        assert pair.try_reserve(f"wa:{i}") == 0.0
        high_water = max(high_water, len(pair._slots), len(pair._heap))
    assert high_water <= 6_001
    assert pair.statistics() == PairStatistics(interval_s=6.0, tracked=6000)


def test_131056_backs_off_the_pair():
    """After a 131056, hold the pair for 4^attempt s; a hold never brings a slot earlier."""
    clock = MockClock()
    pair = PairSpacing(6.0, clock=clock.current_time)
    assert pair.try_reserve("wa:111") == 0.0
    pair.hold("wa:111", backoff_131056(2))  # 16 s
    assert pair.next_allowed("wa:111") == 16.0
    pair.hold("wa:111", backoff_131056(0))  # 1 s: shorter, ignored
    assert pair.try_reserve("wa:111") == 16.0
    clock.jump(16.0)
    assert pair.try_reserve("wa:111") == 0.0
    pair.hold("wa:999", 3.0)  # a key never reserved can be held too
    assert pair.try_reserve("wa:999") == 3.0


def test_backoff_131056_sequence_is_4_to_the_x_capped():
    assert [backoff_131056(x) for x in range(8)] == [1, 4, 16, 64, 256, 900, 900, 900]
    assert backoff_131056(10**9) == BACKOFF_131056_CAP_S


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_backoff_131056_refuses_bad_attempts(bad):
    with pytest.raises(RateLimitConfigError, match=r"^backoff_131056: attempt must be an int >= 0"):
        backoff_131056(bad)


def test_bad_interval_and_hold_are_named():
    with pytest.raises(RateLimitConfigError, match=r"^PairSpacing: interval_s must be a positive"):
        PairSpacing(0, clock=MockClock().current_time)
    pair = PairSpacing(clock=MockClock().current_time)
    assert pair.interval_s == 6.0
    with pytest.raises(RateLimitConfigError, match=r"^PairSpacing\.hold: delay_s must be"):
        pair.hold("wa:1", -3)
