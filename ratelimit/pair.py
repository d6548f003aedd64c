"""Per-recipient pair spacing: at most one message per ``interval_s`` from a number to one user.

Meta's pair rate limit is 1 message per 6 s from one business number to one user; beyond it the
API answers 131056 (whatsapp-cloud-api.md §3.2). Meta tolerates bursts of up to 45 in 6 s but
makes you pay them back later; we never borrow, we simply space.

This module never awaits: a recipient that must wait is *deferred* by the caller (the dispatcher
puts its ledger row back with a ``retry_at``), so one slow recipient never blocks the others.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import trio

from . import _checks
from .errors import RateLimitConfigError

__all__ = ["BACKOFF_131056_CAP_S", "PairSpacing", "PairStatistics", "backoff_131056"]

BACKOFF_131056_CAP_S = 900.0  # seconds; past ~15 min the ledger's retry_at takes over anyway


def backoff_131056(attempt: int) -> float:
    """Seconds to wait before re-sending to a recipient after its ``attempt``-th 131056.

    Meta's advice for the pair rate limit: wait 4^X seconds, X = 0, 1, 2, … per failure,
    capped at ``BACKOFF_131056_CAP_S``.
    Worked sequence: attempt 0, 1, 2, 3, 4, 5, 6 → 1, 4, 16, 64, 256, 900, 900 s.

    Raises:
        RateLimitConfigError: ``attempt`` is not an int >= 0.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise RateLimitConfigError(
            f"backoff_131056: attempt must be an int >= 0 (failures so far), got {attempt!r}"
        )
    if attempt >= 5:  # 4**5 = 1024 > cap; also avoids huge ints for silly attempts
        return BACKOFF_131056_CAP_S
    return min(float(4**attempt), BACKOFF_131056_CAP_S)


@dataclass(frozen=True, slots=True)
class PairStatistics:
    """A snapshot: the spacing and how many recipients are currently remembered."""

    interval_s: float
    tracked: int


class PairSpacing:
    """Per-key send slots, at least ``interval_s`` apart.

    A key is whatever identifies the pair, e.g. ``(phone_number_id, wa_id)``; if one PairSpacing
    serves a single sender number, the recipient alone is enough.

    Guarantees:
      * two reservations for the same key are at least ``interval_s`` apart (and at least the
        ``hold()`` delay after a hold);
      * keys are independent: reserving, holding or refusing one key never changes another's;
      * memory is bounded: a key is forgotten once its next allowed time has passed, so only
        keys reserved within the last ``interval_s`` (or held) are kept. Cleanup is amortised
        O(log n) per reservation (a heap of expiry times).

    What it is NOT: not the per-number messages/s budget (``ratelimit.bucket.TokenBucket``), nor
    the daily unique-recipient tier (``ratelimit.tier``).

    Args:
        interval_s: minimum spacing per key, seconds (Meta: 6).
        clock: seconds, monotonic (default ``trio.current_time``).
    """

    __slots__ = ("_clock", "_heap", "_interval_s", "_seq", "_slots")

    def __init__(
        self, interval_s: float = 6.0, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self._interval_s = _checks.positive("PairSpacing", "interval_s", interval_s, "seconds")
        self._clock = clock
        self._slots: dict[Hashable, float] = {}  # key -> earliest time of its next send
        self._heap: list[tuple[float, int, Hashable]] = []  # (that time, tiebreak, key)
        self._seq = itertools.count()  # heap tiebreak: keys need not be orderable

    def __len__(self) -> int:
        """Number of keys currently remembered (after forgetting expired ones)."""
        self._forget_expired(self._clock())
        return len(self._slots)

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def next_allowed(self, key: Hashable) -> float:
        """Earliest clock time at which ``key`` may be sent to (now, if it is free)."""
        now = self._clock()
        slot = self._slots.get(key)
        return now if slot is None or slot <= now else slot

    def try_reserve(self, key: Hashable) -> float:
        """Reserve a send to ``key`` now if its slot is free.

        Returns:
            0.0 if the slot was reserved (the caller sends now; the next send to ``key`` is
            allowed ``interval_s`` later), else the seconds still to wait (> 0), reserving
            nothing: defer that recipient and move on.
        """
        now = self._clock()
        self._forget_expired(now)
        slot = self._slots.get(key)
        if slot is not None and slot > now:
            return slot - now
        self._set(key, now + self._interval_s)
        return 0.0

    def hold(self, key: Hashable, delay_s: float) -> None:
        """Push ``key``'s next allowed time to at least ``now + delay_s`` (e.g. after a 131056,
        ``hold(key, backoff_131056(attempt))``). Never brings a slot earlier."""
        delay_s = _checks.non_negative("PairSpacing.hold", "delay_s", delay_s, "seconds")
        now = self._clock()
        self._forget_expired(now)
        until = now + delay_s
        slot = self._slots.get(key)
        if until > now and (slot is None or until > slot):
            self._set(key, until)

    def statistics(self) -> PairStatistics:
        return PairStatistics(interval_s=self._interval_s, tracked=len(self))

    # -- internals -------------------------------------------------------------------------

    def _set(self, key: Hashable, until: float) -> None:
        self._slots[key] = until
        heapq.heappush(self._heap, (until, next(self._seq), key))

    def _forget_expired(self, now: float) -> None:
        heap, slots = self._heap, self._slots
        while heap and heap[0][0] <= now:
            until, _, key = heapq.heappop(heap)
            # A stale heap entry (the key was re-reserved or held later) leaves the key alone.
            if slots.get(key) == until:
                del slots[key]
