"""Per-sender-number token bucket: the messages/s budget of one WhatsApp business number.

One token = one message = one Cloud API send call (``POST /{phone-number-id}/messages`` carries
exactly one message). Meta allows 80 messages/s per number by default, 1,000 after the automatic
upgrade, 20 for coexistence numbers (whatsapp-cloud-api.md §3.1); beyond it the API answers
130429.

This bucket lives in one process. For a number shared by several worker processes use
``ratelimit.shared.SharedBucket``, which has the same surface (``Limiter``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from . import _checks
from ._fifo import FifoGate

__all__ = ["BucketStatistics", "Limiter", "TokenBucket"]

# A head waiter is granted when it is short by less than this many tokens: deadlines are computed
# in floating point, and waking exactly at the deadline may leave it short by ~rate * ulp(now).
# The bucket keeps the tiny debt (tokens may dip below 0 by this much), so the error never adds up.
_TOKEN_EPSILON = 1e-6  # tokens
# Shortest timed sleep of a head waiter: guarantees a virtual clock (autojump) moves forward.
_MIN_WAIT_S = 1e-6  # seconds


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    """A snapshot of a bucket, for gauges and tests.

    Attributes:
        rate: refill rate now, messages/s.
        burst: capacity, messages.
        tokens: tokens available now (for a SharedBucket: held locally, not in the store).
        waiting: ``take()`` calls queued.
    """

    rate: float
    burst: float
    tokens: float
    waiting: int


@runtime_checkable
class Limiter(Protocol):
    """What the dispatcher needs from a per-number budget (TokenBucket or SharedBucket)."""

    async def take(self, n: int = 1) -> None: ...

    def try_take(self, n: int = 1) -> bool: ...

    def set_rate(self, rate: float) -> None: ...

    def statistics(self) -> BucketStatistics: ...


class TokenBucket:
    """FIFO-fair token bucket: ``rate`` messages/s sustained, up to ``burst`` at once.

    Guarantee: for any window of length T, the tokens granted inside it never exceed
    ``rate * T + burst`` (with the rate held constant; the bucket starts full).

    What it is NOT:
      * not the per-recipient pair spacing (1 message / 6 s to one user, error 131056): that is
        ``ratelimit.pair.PairSpacing``;
      * not the daily unique-recipient tier (250 / 2k / 10k / 100k per rolling 24 h): that is
        ``ratelimit.tier``, counted in SQL by the engine;
      * not shared between processes: that is ``ratelimit.shared.SharedBucket``;
      * not adaptive by itself: ``ratelimit.aimd.AimdController`` computes the rate and the
        caller applies it with ``set_rate()``.

    Fairness: waiters are served strictly in arrival order; a small request never overtakes a
    large one queued before it, and ``try_take`` never jumps the queue.

    Args:
        rate: tokens (messages) per second, > 0.
        burst: capacity in tokens (messages), > 0; the bucket starts full. ``take(n)`` needs
            ``n <= burst``.
        clock: seconds, monotonic; must run at the speed of trio's clock (default
            ``trio.current_time``), since waits are slept on trio's clock.

    Raises:
        RateLimitConfigError: rate or burst not a positive finite number.
    """

    __slots__ = ("_burst", "_clock", "_gate", "_last", "_rate", "_tokens")

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._rate = _checks.positive("TokenBucket", "rate", rate, "messages per second")
        self._burst = _checks.positive("TokenBucket", "burst", burst, "messages")
        self._clock = clock
        self._tokens = self._burst
        self._last: float | None = None  # clock time of the last refill; None until first use
        self._gate = FifoGate()

    def __repr__(self) -> str:
        return (
            f"<TokenBucket rate={self._rate:g}/s burst={self._burst:g} "
            f"tokens={self._tokens:.3f} waiting={len(self._gate)}>"
        )

    async def take(self, n: int = 1) -> None:
        """Wait until ``n`` tokens are available, in FIFO order, then consume them.

        Always a checkpoint, even when tokens are available at once, so a sender loop cannot
        starve other tasks.

        Raises:
            RateLimitConfigError: ``n`` is not an int in ``0..burst``.

        Cancellation: atomic. Either ``take`` returns having consumed ``n`` tokens, or it raises
        ``Cancelled`` having consumed nothing; a cancelled waiter leaves the queue and the next
        one moves up at once.
        """
        _checks.token_count("TokenBucket.take", n, self._burst)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._gate and self._grant(n):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = self._gate.join(n)
        try:
            await self._gate.wait_turn(waiter)
            # Head of the queue: sleep until the deadline at which n tokens will be there.
            # set_rate() kicks us so the deadline is recomputed with the new rate.
            while not self._grant(n):
                deficit = n - self._tokens
                await self._gate.sleep_as_head(waiter, max(deficit / self._rate, _MIN_WAIT_S))
        finally:
            self._gate.leave(waiter)

    def try_take(self, n: int = 1) -> bool:
        """Consume ``n`` tokens if available right now and nobody is queued; never blocks.

        Returns False (consuming nothing) if tokens are short or any ``take()`` is waiting.
        """
        _checks.token_count("TokenBucket.try_take", n, self._burst)
        if self._gate:
            return False
        return self._grant(n)

    def set_rate(self, rate: float) -> None:
        """Change the refill rate from now on; queued waiters recompute their deadline.

        Tokens accrued so far are kept (accrued at the old rate up to now).
        """
        rate = _checks.positive("TokenBucket.set_rate", "rate", rate, "messages per second")
        self._refill()
        self._rate = rate
        self._gate.kick()

    @property
    def rate(self) -> float:
        """Current refill rate, messages/s."""
        return self._rate

    def statistics(self) -> BucketStatistics:
        """Rate, burst, tokens available now, number of waiters."""
        self._refill()
        return BucketStatistics(
            rate=self._rate, burst=self._burst, tokens=self._tokens, waiting=len(self._gate)
        )

    # -- internals -------------------------------------------------------------------------

    def _refill(self) -> None:
        now = self._clock()
        if self._last is None:
            self._last = now
        elif now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def _grant(self, n: int) -> bool:
        """Refill, then consume ``n`` tokens if there are enough. No await: atomic."""
        self._refill()
        if self._tokens + _TOKEN_EPSILON >= n:
            self._tokens -= n
            return True
        return False
