"""The send plan's estimate: rate, tier budget running out, when it continues (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.plan import estimate

START = datetime(2026, 12, 4, 4, 30, tzinfo=UTC)


def test_unlimited_tier_finishes_at_audience_over_rate() -> None:
    eta = estimate(to_send=10_000, new_recipients=10_000, mps=80, tier_limit=None, tier_remaining=None,
                   oldest_in_window=None, start=START)
    assert eta.finish_at == START + timedelta(seconds=125)
    assert eta.send_s == 125 and eta.budget_stops_after is None and eta.continue_at is None


def test_nothing_to_send_finishes_at_start() -> None:
    eta = estimate(to_send=0, new_recipients=0, mps=80, tier_limit=250, tier_remaining=0, oldest_in_window=None,
                   start=START)
    assert eta.finish_at == START and eta.budget_stops_after is None


def test_tier_with_room_does_not_stop() -> None:
    eta = estimate(to_send=2_000, new_recipients=1_500, mps=100, tier_limit=2_000, tier_remaining=1_500,
                   oldest_in_window=START - timedelta(hours=3), start=START)
    assert eta.budget_stops_after is None and eta.finish_at == START + timedelta(seconds=20)


def test_tier_runs_out_and_continues_when_the_oldest_contact_ages_out() -> None:
    oldest = START - timedelta(hours=14)  # 20:00 IST yesterday
    eta = estimate(to_send=10_000, new_recipients=10_000, mps=80, tier_limit=2_000, tier_remaining=1_500,
                   oldest_in_window=oldest, start=START)
    assert eta.budget_stops_after == 1_500
    assert eta.pause_at == START + timedelta(seconds=1_500 / 80)
    assert eta.continue_at == oldest + timedelta(hours=24)
    # 8,500 new left: 4 more full windows of 2,000, then 500 at 80/s
    assert eta.finish_at == eta.continue_at + timedelta(days=4, seconds=500 / 80)


def test_already_reached_recipients_do_not_use_budget() -> None:
    eta = estimate(to_send=1_000, new_recipients=500, mps=50, tier_limit=250, tier_remaining=250,
                   oldest_in_window=None, start=START)
    assert eta.budget_stops_after == 500  # half of them are new: 250 new among the first 500
    assert eta.continue_at == START + timedelta(hours=24)
    assert eta.finish_at == START + timedelta(hours=24, seconds=10)


def test_empty_budget_pauses_at_once() -> None:
    oldest = START - timedelta(hours=23)
    eta = estimate(to_send=100, new_recipients=100, mps=80, tier_limit=250, tier_remaining=0,
                   oldest_in_window=oldest, start=START)
    assert (eta.budget_stops_after, eta.pause_at, eta.continue_at) == (0, START, START + timedelta(hours=1))


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^mps must be positive, got 0$"):
        estimate(to_send=1, new_recipients=1, mps=0, tier_limit=None, tier_remaining=None, oldest_in_window=None,
                 start=START)


@given(to_send=st.integers(1, 200_000), new_share=st.floats(0.01, 1.0), mps=st.integers(1, 1000),
       tier=st.one_of(st.none(), st.sampled_from([250, 2_000, 10_000, 100_000])), used=st.floats(0, 1))
def test_estimate_is_never_faster_than_the_rate(to_send: int, new_share: float, mps: int, tier: int | None,
                                                used: float) -> None:
    new = max(1, int(to_send * new_share))
    remaining = None if tier is None else int(tier * (1 - used))
    eta = estimate(to_send=to_send, new_recipients=new, mps=mps, tier_limit=tier, tier_remaining=remaining,
                   oldest_in_window=START - timedelta(hours=1), start=START)
    assert eta.finish_at is not None
    assert eta.finish_at - START >= timedelta(seconds=(to_send - 1) / mps)  # rounding of the stop point
    if eta.budget_stops_after is not None:
        assert 0 <= eta.budget_stops_after < to_send or new > (remaining or 0)
        assert eta.continue_at is not None and eta.continue_at >= eta.pause_at  # type: ignore[operator]


def test_a_slow_number_takes_longer_than_a_day_per_tier_window() -> None:
    eta = estimate(to_send=250_000, new_recipients=250_000, mps=1, tier_limit=100_000, tier_remaining=100_000,
                   oldest_in_window=None, start=START)
    assert eta.continue_at == START + timedelta(seconds=100_000)  # the rate, not the window, is the limit
    assert eta.finish_at == START + timedelta(seconds=250_000)
