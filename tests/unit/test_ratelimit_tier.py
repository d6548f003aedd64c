"""The daily unique-recipient tier: pure arithmetic over counts the engine takes from SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelimit import (
    TIERS,
    RateLimitConfigError,
    TierExhausted,
    require_tier_budget,
    tier_from_api,
    tier_remaining,
)


def test_tiers_are_metas_ladder():
    assert TIERS == (250, 2000, 10000, 100000, None)


@pytest.mark.parametrize(
    ("limit", "reached", "remaining"),
    [(250, 0, 250), (250, 249, 1), (250, 250, 0), (250, 300, 0), (2000, 1500, 500), (None, 10**7, None)],
)
def test_tier_remaining(limit, reached, remaining):
    assert tier_remaining(limit, reached) == remaining


@given(limit=st.sampled_from(TIERS[:-1]), reached=st.integers(0, 200_000))
def test_remaining_plus_reached_never_exceeds_the_tier(limit, reached):
    remaining = tier_remaining(limit, reached)
    assert remaining is not None and remaining >= 0
    assert remaining + min(reached, limit) == limit


def test_exhausted_tier_says_when_it_can_continue():
    oldest = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    with pytest.raises(
        TierExhausted,
        match=(
            r"^daily messaging tier exhausted: 250 of 250 unique recipients reached in the "
            r"last 24 h; can continue at 2026-12-04T09:30:00\+00:00 \(24 h after the oldest "
            r"first contact in the window\)$"
        ),
    ) as info:
        require_tier_budget(250, 250, oldest)
    assert info.value.resume_at == datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    assert (info.value.limit, info.value.reached) == (250, 250)


def test_a_zero_tier_can_only_be_raised():
    with pytest.raises(TierExhausted, match=r"; cannot continue until the tier is raised$"):
        require_tier_budget(0, 0, None)


def test_require_tier_budget_returns_what_is_left():
    assert require_tier_budget(2000, 1999, None) == 1
    assert require_tier_budget(None, 5, None) is None


@pytest.mark.parametrize(
    ("value", "tier"),
    [("TIER_250", 250), ("TIER_2K", 2000), ("TIER_1K", 2000), ("TIER_10K", 10000),
     ("TIER_100K", 100000), ("TIER_UNLIMITED", None)],
)
def test_tier_from_api(value, tier):
    assert tier_from_api(value) == tier


def test_unknown_api_tier_is_named():
    with pytest.raises(
        RateLimitConfigError,
        match=r"^tier_from_api: unknown messaging limit 'TIER_5K'; expected one of TIER_250, ",
    ):
        tier_from_api("TIER_5K")


@pytest.mark.parametrize(
    ("limit", "reached", "message"),
    [
        (-1, 0, r"^tier_remaining: limit must be an int >= 0 or None \(unlimited\), got -1$"),
        (250.0, 0, r"^tier_remaining: limit must be an int"),
        (250, -3, r"^tier_remaining: reached_last_24h must be an int >= 0, got -3$"),
    ],
)
def test_bad_counts_are_named(limit, reached, message):
    with pytest.raises(RateLimitConfigError, match=message):
        tier_remaining(limit, reached)
