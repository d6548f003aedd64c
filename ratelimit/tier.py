"""The daily messaging tier: unique recipients reached per rolling 24 h (pure functions).

Meta limits how many *unique users* a business portfolio may reach outside a customer-service
window in a moving 24 h: 250 → 2,000 → 10,000 → 100,000 → unlimited, shared by all numbers of the
portfolio (whatsapp-cloud-api.md §3.3). No error code is documented for hitting it, so the engine
budgets it itself: it counts, in SQL, the distinct recipients first contacted in the last 24 h
and asks this module how many more it may start.

What it is NOT: not the messages/s budget (``ratelimit.bucket.TokenBucket``) and not the
per-recipient spacing (``ratelimit.pair.PairSpacing``). Messages to a recipient already reached
in the window do not consume tier budget.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from .errors import RateLimitConfigError, RateLimitError

__all__ = [
    "TIERS",
    "TIER_WINDOW",
    "TierExhausted",
    "require_tier_budget",
    "tier_from_api",
    "tier_remaining",
]

TIERS: Final = (250, 2000, 10000, 100000, None)  # unique recipients / rolling 24 h; None = unlimited
TIER_WINDOW: Final = timedelta(hours=24)

# Values of GET /{PHONE_NUMBER_ID}?fields=whatsapp_business_manager_messaging_limit (§3.3).
# TIER_1K is the retired name of what is now the 2,000 tier.
_API_TIERS: Final[dict[str, int | None]] = {
    "TIER_250": 250,
    "TIER_1K": 2000,
    "TIER_2K": 2000,
    "TIER_10K": 10000,
    "TIER_100K": 100000,
    "TIER_UNLIMITED": None,
}


class TierExhausted(RateLimitError):
    """The portfolio reached its daily unique-recipient tier; new recipients must wait.

    Recipients already reached in the window may still be messaged. New ones can start again
    once the oldest first contact leaves the rolling window: at ``resume_at`` =
    oldest first contact + 24 h (one slot frees then; more as later contacts age out).

    Attributes:
        limit, reached: the tier and the unique recipients counted in the last 24 h.
        resume_at: when the next new recipient may be started, or None if nothing in the window
            will age out (limit 0): only raising the tier helps.
    """

    def __init__(self, limit: int, reached: int, oldest_first_contact: datetime | None) -> None:
        self.limit = limit
        self.reached = reached
        self.resume_at = (
            None if oldest_first_contact is None else oldest_first_contact + TIER_WINDOW
        )
        when = (
            "cannot continue until the tier is raised"
            if self.resume_at is None
            else f"can continue at {self.resume_at.isoformat()} "
            "(24 h after the oldest first contact in the window)"
        )
        super().__init__(
            f"daily messaging tier exhausted: {reached} of {limit} unique recipients reached "
            f"in the last 24 h; {when}"
        )


def tier_remaining(limit: int | None, reached_last_24h: int) -> int | None:
    """How many more new unique recipients may be started now.

    Args:
        limit: the tier (``TIERS`` values, or any int >= 0 the operator configured); None means
            unlimited.
        reached_last_24h: distinct recipients first contacted in the rolling 24 h.

    Returns:
        ``max(0, limit - reached_last_24h)``, or None when unlimited.

    Raises:
        RateLimitConfigError: a negative or non-int argument.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise RateLimitConfigError(
            f"tier_remaining: limit must be an int >= 0 or None (unlimited), got {limit!r}"
        )
    if (
        isinstance(reached_last_24h, bool)
        or not isinstance(reached_last_24h, int)
        or reached_last_24h < 0
    ):
        raise RateLimitConfigError(
            f"tier_remaining: reached_last_24h must be an int >= 0, got {reached_last_24h!r}"
        )
    if limit is None:
        return None
    return max(0, limit - reached_last_24h)


def require_tier_budget(
    limit: int | None, reached_last_24h: int, oldest_first_contact: datetime | None
) -> int | None:
    """``tier_remaining`` that raises when nothing is left.

    Returns:
        The remaining budget (> 0), or None when unlimited.

    Raises:
        TierExhausted: the budget is 0; its message says when sending can continue.
    """
    remaining = tier_remaining(limit, reached_last_24h)
    if remaining == 0 and limit is not None:
        raise TierExhausted(limit, reached_last_24h, oldest_first_contact)
    return remaining


def tier_from_api(value: str) -> int | None:
    """Map the Graph field ``whatsapp_business_manager_messaging_limit`` to a tier.

    ``"TIER_250"`` → 250, ``"TIER_2K"`` → 2000, ``"TIER_10K"`` → 10000, ``"TIER_100K"`` → 100000,
    ``"TIER_UNLIMITED"`` → None (``"TIER_1K"``, retired, → 2000).

    Raises:
        RateLimitConfigError: an unknown value (Meta may have added a tier: check §3.3).
    """
    try:
        return _API_TIERS[value]
    except (KeyError, TypeError):
        raise RateLimitConfigError(
            f"tier_from_api: unknown messaging limit {value!r}; expected one of "
            f"{', '.join(_API_TIERS)}"
        ) from None
