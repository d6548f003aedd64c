"""Adaptive send rate for one sender number: multiplicative decrease, additive increase (AIMD).

On a throughput throttle (Graph 130429, HTTP 429) the rate is cut; once throttles stop it is
probed back up linearly to the ceiling. Retry-After is honoured as a hold-off. The controller only
computes a rate: the caller applies it to its bucket (``bucket.set_rate(aimd.current_rate())``)
after each throttle and periodically (e.g. once per batch), and waits out ``hold_until``.

A 131056 (pair rate) concerns one recipient, not the number: hold that pair with
``ratelimit.pair.PairSpacing.hold`` rather than cutting the number's rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import _checks
from .errors import RateLimitConfigError

__all__ = ["AimdController", "AimdStatistics"]


@dataclass(frozen=True, slots=True)
class AimdStatistics:
    """A snapshot: rate now (messages/s), bounds, hold-off end (clock time; -inf if none),
    throttles reported and cuts made."""

    rate: float
    ceiling: float
    floor: float
    hold_until: float
    throttles: int
    cuts: int


class AimdController:
    """Rate for one number: cut ×``decrease`` on throttles, then +``increase_per_s`` per second.

    Rules:
      * **Cut**: ``on_throttle()`` multiplies the rate by ``decrease`` (never below ``floor``),
        at most once per ``cooldown_s``. Throttles arriving within ``cooldown_s`` of the last
        cut are answers to requests already in flight at the old rate, so they belong to the
        same congestion event and do not cut again: a burst of 20 × 130429 in one second cuts
        once, not 20 times down to the floor.
      * **Hold**: ``on_throttle(retry_after)`` sets ``hold_until`` to at least now + retry_after;
        the caller sends nothing on this number before it.
      * **Probe**: the rate grows by ``increase_per_s`` per second, up to ``ceiling``, starting
        ``cooldown_s`` after the last throttle (cutting or not) and not before ``hold_until``.
        The probe runs on time, not on the count of successes, so it behaves the same at 1 and
        at 1,000 messages/s.

    Guarantees: ``floor <= current_rate() <= ceiling`` always; once throttles stop, the rate
    is back at the ceiling within ``cooldown_s + (ceiling - floor) / increase_per_s`` seconds
    after the later of the last throttle and ``hold_until``.

    Worked sequence (ceiling 80, decrease 0.5, increase 4/s, cooldown 1 s)::

        t=0.0   130429            80 → 40   (cut)
        t=0.1…0.9  19 × 130429    40        (same event: within 1 s of the cut)
        t=1.0   130429            40 → 20   (cut)
        t=2.0   130429            20 → 10   (cut); throttles stop
        t=3.0                     10        (probe starts 1 s after the last throttle)
        t=4.0, 5.0, …             14, 18, … (+4/s)
        t=20.5                    80        (ceiling; stays there)

    With ``on_throttle(retry_after=30)`` at t=0: rate 40, ``hold_until`` = 30, probe from t=30.

    Args:
        ceiling: the number's configured messages/s (80 default, 1,000 upgraded, 20
            coexistence); the controller starts there.
        floor: lowest rate a cut may reach, messages/s (0 < floor <= ceiling).
        decrease: factor applied on a cut, 0 < decrease < 1.
        increase_per_s: messages/s added per second of probing; default ``ceiling / 20``
            (back from the floor to the ceiling in ~20 s).
        cooldown_s: minimum time between cuts, and the quiet time before probing, seconds.
        clock: seconds, monotonic (default ``trio.current_time``).

    Raises:
        RateLimitConfigError: an argument out of its range (the message names it).
    """

    __slots__ = (
        "_base",
        "_ceiling",
        "_clock",
        "_cooldown_s",
        "_cuts",
        "_decrease",
        "_floor",
        "_hold_until",
        "_increase_per_s",
        "_last_cut",
        "_probe_from",
        "_throttles",
    )

    def __init__(
        self,
        ceiling: float,
        floor: float = 1.0,
        decrease: float = 0.5,
        increase_per_s: float | None = None,
        *,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        owner = "AimdController"
        self._ceiling = _checks.positive(owner, "ceiling", ceiling, "messages per second")
        self._floor = _checks.positive(owner, "floor", floor, "messages per second")
        if self._floor > self._ceiling:
            raise RateLimitConfigError(
                f"{owner}: floor ({floor!r}) must not exceed ceiling ({ceiling!r})"
            )
        if (
            isinstance(decrease, bool)
            or not isinstance(decrease, int | float)
            or not 0 < decrease < 1
        ):
            raise RateLimitConfigError(
                f"{owner}: decrease must be a factor strictly between 0 and 1, got {decrease!r}"
            )
        self._decrease = float(decrease)
        self._increase_per_s = (
            self._ceiling / 20
            if increase_per_s is None
            else _checks.positive(
                owner, "increase_per_s", increase_per_s, "messages per second per second"
            )
        )
        self._cooldown_s = _checks.non_negative(owner, "cooldown_s", cooldown_s, "seconds")
        self._clock = clock
        self._base = self._ceiling  # the rate at _probe_from
        self._probe_from = -math.inf  # when the additive increase (re)starts
        self._last_cut = -math.inf
        self._hold_until = -math.inf
        self._throttles = 0
        self._cuts = 0

    def __repr__(self) -> str:
        return (
            f"<AimdController ceiling={self._ceiling:g}/s floor={self._floor:g}/s "
            f"cuts={self._cuts}>"
        )

    @property
    def ceiling(self) -> float:
        return self._ceiling

    @property
    def hold_until(self) -> float:
        """Clock time before which nothing should be sent (from Retry-After); -inf if none."""
        return self._hold_until

    def current_rate(self, now: float | None = None) -> float:
        """The rate to apply at ``now`` (default: the clock), messages/s."""
        if now is None:
            now = self._clock()
        if now <= self._probe_from:
            return self._base
        return min(self._ceiling, self._base + self._increase_per_s * (now - self._probe_from))

    def on_throttle(self, retry_after: float | None = None) -> float:
        """Report a throughput throttle (130429 / HTTP 429) on this number.

        Args:
            retry_after: the server's Retry-After in seconds, if it sent one.

        Returns:
            The new rate, messages/s (apply it to the bucket).

        Raises:
            RateLimitConfigError: ``retry_after`` negative or not finite.
        """
        if retry_after is not None:
            retry_after = _checks.non_negative(
                "AimdController.on_throttle", "retry_after", retry_after, "seconds"
            )
        now = self._clock()
        rate = self.current_rate(now)
        self._throttles += 1
        if now - self._last_cut >= self._cooldown_s:
            rate = max(self._floor, rate * self._decrease)
            self._last_cut = now
            self._cuts += 1
        if retry_after is not None:
            self._hold_until = max(self._hold_until, now + retry_after)
        # Re-anchor: the rate stays at `rate` until the probe restarts.
        self._base = rate
        self._probe_from = max(now + self._cooldown_s, self._hold_until)
        return rate

    def on_success(self) -> float:
        """Report an accepted send. Returns the rate to apply now, messages/s.

        The probe is driven by time (see class docstring), so a success changes no state; this
        is the natural place for the caller to refresh its bucket's rate.
        """
        return self.current_rate()

    def statistics(self) -> AimdStatistics:
        return AimdStatistics(
            rate=self.current_rate(),
            ceiling=self._ceiling,
            floor=self._floor,
            hold_until=self._hold_until,
            throttles=self._throttles,
            cuts=self._cuts,
        )
