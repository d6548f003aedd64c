"""A per-number token bucket shared by all worker processes, through a ``TokenStore``.

The bucket's state (tokens, last refill) lives in a store every worker reaches (Postgres, in
the engine). A worker never asks the store per message: it takes tokens in chunks, one round trip
per chunk, and hands them out locally in FIFO order. Tokens held locally expire quickly and are
never returned, so the budget holds for all workers together, whether or not they crash.

``MemoryTokenStore`` implements ``TokenStore`` in memory with exactly the arithmetic the SQL
version must use (``store_take``); tests use it, and it is the reference for the SQL.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio

from . import _checks
from ._fifo import FifoGate
from .bucket import BucketStatistics
from .errors import RateLimitConfigError, TokenStoreError

__all__ = [
    "MemoryTokenStore",
    "SharedBucket",
    "SharedBucketStatistics",
    "TokenStore",
    "auto_chunk",
    "store_take",
]

CHUNK_MIN = 1  # tokens per store round trip, lower bound of the automatic chunk
CHUNK_MAX = 50  # tokens per store round trip, upper bound (1,000 msg/s → 20 round trips/s)
# After a store call that left the head short, sleep at least this long before the next call,
# so that a store answering "wait ~0 s" (float rounding) cannot make us spin.
_MIN_STORE_RETRY_S = 1e-3  # seconds
_MAX_CONTENDERS = 16  # upper bound of the contention estimate that spaces store calls


@runtime_checkable
class TokenStore(Protocol):
    """Where shared buckets keep their state; one row per key in the engine's Postgres.

    ``take_tokens`` refills the bucket ``key`` for the time elapsed (at ``rate``, capped at
    ``burst``; a new key starts full) and grants ``min(want, floor(tokens))`` tokens at once,
    atomically with respect to every other caller. It returns ``(granted, wait_s)``: the tokens
    granted now (0..want) and the seconds until at least one whole token is available again
    (0 if one already is). See ``store_take`` for the exact arithmetic. A store whose wait_s
    counts instead until all of ``want`` could be granted also works with ``SharedBucket``.

    The refill since the last update uses the *caller's* rate, so a rate change applies to
    that interval too (a cut accrues less, a raise more; with busy workers the interval is
    milliseconds). Every caller of a key must pass the same burst.
    """

    async def take_tokens(
        self, key: str, want: int, rate: float, burst: float
    ) -> tuple[int, float]: ...


def store_take(
    tokens: float, elapsed_s: float, want: int, rate: float, burst: float
) -> tuple[float, int, float]:
    """The store's arithmetic, as a pure function (the reference for the SQL).

    Args:
        tokens: tokens stored at the last update (a new key starts at ``burst``).
        elapsed_s: seconds since that update (negative counts as 0: clocks may step back).
        want, rate, burst: as passed to ``TokenStore.take_tokens``.

    Returns:
        ``(tokens_after, granted, wait_s)`` where::

            tokens  = min(burst, tokens + rate * max(0, elapsed_s))
            granted = min(want, floor(tokens))
            tokens_after = tokens - granted
            wait_s  = 0 if tokens_after >= 1 else (1 - tokens_after) / rate

    A sketch of the same in one SQL statement (one round trip; the row is created once with
    ``tokens = burst`` by ``INSERT … ON CONFLICT DO NOTHING``; one timestamp, ``now()``)::

        UPDATE rate_buckets b SET tokens = c.t - c.g, updated_at = now()
        FROM (SELECT key, t, LEAST($2, FLOOR(t)) AS g
              FROM (SELECT key, LEAST($4, tokens + $3 * GREATEST(0,
                           EXTRACT(EPOCH FROM now() - updated_at))) AS t
                    FROM rate_buckets WHERE key = $1 FOR UPDATE) s) c
        WHERE b.key = c.key
        RETURNING c.g AS granted, c.t - c.g AS tokens_after;  -- wait_s from tokens_after
    """
    tokens = min(burst, tokens + rate * max(0.0, elapsed_s))
    granted = min(want, math.floor(tokens))
    tokens -= granted
    wait_s = 0.0 if tokens >= 1 else (1 - tokens) / rate
    return tokens, granted, wait_s


class MemoryTokenStore:
    """In-process ``TokenStore`` (tests, single-process runs), arithmetic of ``store_take``.

    Args:
        clock: seconds, monotonic (default ``trio.current_time``); plays the role of the
            database's ``now()``.

    Attributes:
        calls: number of ``take_tokens`` calls so far (tests count round trips with it).
    """

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)
        self.calls = 0

    async def take_tokens(
        self, key: str, want: int, rate: float, burst: float
    ) -> tuple[int, float]:
        """See ``TokenStore``. A checkpoint, like a real round trip."""
        await trio.lowlevel.checkpoint()
        self.calls += 1
        now = self._clock()
        tokens, updated_at = self._state.get(key, (burst, now))
        tokens, granted, wait_s = store_take(tokens, now - updated_at, want, rate, burst)
        self._state[key] = (tokens, now)
        return granted, wait_s

    def tokens(self, key: str) -> float | None:
        """Tokens stored for ``key`` as of its last update (None if never used)."""
        state = self._state.get(key)
        return None if state is None else state[0]


def auto_chunk(rate: float) -> int:
    """Default tokens per store round trip: ~rate/20 (≈ 20 round trips/s per busy worker at
    full rate), clamped to ``CHUNK_MIN..CHUNK_MAX``: 80 msg/s → 4, 1,000 msg/s → 50."""
    return max(CHUNK_MIN, min(CHUNK_MAX, round(rate / 20)))


@dataclass(frozen=True, slots=True)
class SharedBucketStatistics(BucketStatistics):
    """``BucketStatistics`` plus the store side.

    Attributes:
        chunk: tokens asked per store round trip.
        store_calls: round trips made so far.
        tokens_granted: tokens received from the store so far.
        tokens_expired: received tokens dropped unused (held longer than ``chunk / rate``).
    """

    chunk: int
    store_calls: int
    tokens_granted: int
    tokens_expired: int


class SharedBucket:
    """Token bucket for one sender number, shared by every worker through a ``TokenStore``.

    Same surface as ``TokenBucket`` (``take`` / ``try_take`` / ``set_rate`` / ``statistics``):
    FIFO-fair inside this process, a checkpoint on every ``take``, cancellation-atomic.

    How: only the head waiter talks to the store. It asks for what the local queue needs, at
    least ``prefetch`` tokens (adaptive, 1..``chunk``), so one round trip serves many messages.
    Tokens beyond the immediate need are held locally for the next waiters for at most
    ``hold_s = chunk / rate`` seconds from the moment the request was sent, then dropped, never
    returned. To pay for that hold, the store caps the bucket at ``burst - chunk`` instead of
    ``burst``.

    Guarantee (all workers of a key together, constant rate, same rate/burst/chunk everywhere):
    tokens handed out in any window of length T never exceed ``rate * T + burst``. Proof sketch:
    a token handed out at time h was granted by the store in ``[h - hold_s, h]``; the store
    grants at most ``rate * (T + hold_s) + (burst - chunk)`` in a window of ``T + hold_s``, and
    ``rate * hold_s = chunk``. A worker that dies simply loses what it held. The bound is in the
    store's clock: in production, measure it with the round-trip latency added to T.

    Round trips (heuristics, tuned on a virtual clock; none affects the guarantee):
      * after a call that leaves the store empty, the next call waits until the store should
        hold ``contenders x chunk`` tokens, where ``contenders`` estimates how many workers
        drain it (+1 after a grant short of a chunk, -1 after a full one with tokens to spare);
        so hungry workers make about one round trip per chunk, not one per token;
      * ``prefetch`` halves when held tokens expired unused and grows by one otherwise, so a
        worker sending slower than the rate does not waste the budget of the others.
      A worker whose demand is below ``chunk`` tokens per ``hold_s`` cannot hold enough to
      amortise, and makes up to one round trip per message; that is at most about
      ``rate / chunk`` (≈ 20) round trips per second.
    Workers are not served fairly among themselves (a worker that calls more often may get a
    larger share); only the total is bounded.

    What it is NOT: not the pair spacing (``ratelimit.pair``) nor the daily tier
    (``ratelimit.tier``); not adaptive by itself (``ratelimit.aimd``).

    Args:
        store: the shared ``TokenStore``.
        key: the bucket's name in the store (e.g. the phone_number_id).
        rate: messages/s for all workers together.
        burst: capacity for all workers together, messages; >= 1.
        chunk: the largest prefetch, and the tokens that may be held locally; 0 = auto:
            ``auto_chunk(rate)`` but at most ``burst / 4``. An explicit chunk is clamped to
            ``burst / 2``; at least 1. If ``burst < 2`` nothing is held locally at all (every
            token is handed out as it arrives). Round trips need room in the store: measured
            on the virtual clock with 3 workers x 20 lanes at 80 msg/s, round trips per
            message were 0.14 with burst 80, 0.26 with 16 and 0.60 with 8: prefer a burst of
            at least ``rate / 5`` when several workers share a number.
        clock: seconds, monotonic, the same time base as the store's (default
            ``trio.current_time``).

    Raises:
        RateLimitConfigError: a bad argument (the message names it).
    """

    __slots__ = (
        "_burst",
        "_chunk",
        "_clock",
        "_contenders",
        "_expired",
        "_expired_seen",
        "_gate",
        "_granted",
        "_hold_tokens",
        "_key",
        "_local",
        "_lots",
        "_max_contenders",
        "_next_fetch_at",
        "_prefetch",
        "_rate",
        "_store",
        "_store_calls",
    )

    def __init__(
        self,
        store: TokenStore,
        key: str,
        rate: float,
        burst: float,
        chunk: int = 0,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        owner = "SharedBucket"
        self._rate = _checks.positive(owner, "rate", rate, "messages per second")
        self._burst = _checks.positive(owner, "burst", burst, "messages")
        if self._burst < 1:
            raise RateLimitConfigError(
                f"{owner}: burst must be >= 1 message (the store grants whole tokens), "
                f"got {burst!r}"
            )
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
            raise RateLimitConfigError(
                f"{owner}: chunk must be an int >= 0 (tokens per store call; 0 = auto), "
                f"got {chunk!r}"
            )
        self._store = store
        self._key = key
        self._clock = clock
        # auto: leave the store room for ~4 chunks, so waiting for a chunk per contender pays
        self._chunk = max(
            1,
            min(chunk, math.floor(self._burst / 2))
            if chunk
            else min(auto_chunk(self._rate), math.floor(self._burst / 4)),
        )
        # Tokens we may hold locally, paid for by asking the store to cap at burst - chunk.
        self._hold_tokens = self._chunk if self._burst - self._chunk >= 1 else 0
        self._lots: deque[list[float]] = deque()  # [expires_at, count], in arrival order
        self._local = 0  # sum of the lots' counts
        self._gate = FifoGate()
        self._next_fetch_at = -math.inf  # no store call before this clock time
        self._contenders = 1  # estimate of the workers draining the store (see _fetch)
        # never wait for more tokens than the store can hold
        self._max_contenders = max(1, min(_MAX_CONTENDERS, int(self.store_burst // self._chunk)))
        self._prefetch = self._chunk  # least tokens asked per call (see _fetch)
        self._store_calls = 0
        self._granted = 0
        self._expired = 0
        self._expired_seen = 0  # self._expired at the previous store call

    def __repr__(self) -> str:
        return (
            f"<SharedBucket key={self._key!r} rate={self._rate:g}/s burst={self._burst:g} "
            f"chunk={self._chunk} local={self._local} waiting={len(self._gate)}>"
        )

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def store_burst(self) -> float:
        """The cap passed to the store: ``burst`` minus what may be held locally."""
        return self._burst - self._hold_tokens

    @property
    def hold_s(self) -> float:
        """How long received tokens may be held locally before they expire, seconds."""
        return self._hold_tokens / self._rate

    async def take(self, n: int = 1) -> None:
        """Wait until ``n`` tokens are handed to us, in FIFO order within this process.

        Always a checkpoint. ``n`` may be at most ``store_burst`` (what one store grant can
        cover).

        Raises:
            RateLimitConfigError: ``n`` not an int in ``0..store_burst``.
            TokenStoreError: the store broke its contract.
            Whatever the store raises, unchanged (this waiter leaves the queue; the next one
            becomes head and tries again).

        Cancellation: atomic. A cancelled ``take`` consumed nothing; tokens already fetched
        stay local for the next waiters (until they expire). A store call cancelled in flight
        may have been granted by the store: those tokens are lost, never handed out twice.
        """
        _checks.token_count("SharedBucket.take", n, self.store_burst)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._gate and self._consume_local(n):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        waiter = self._gate.join(n)
        try:
            await self._gate.wait_turn(waiter)
            while not self._consume_local(n):
                # Not before the store can have tokens for us (see _fetch); set_rate() kicks us.
                early_s = self._next_fetch_at - self._clock()
                if early_s > 0:
                    await self._gate.sleep_as_head(waiter, early_s)
                    continue
                await self._fetch(n - self._local)
        finally:
            self._gate.leave(waiter)

    def try_take(self, n: int = 1) -> bool:
        """Consume ``n`` locally held tokens if there are enough and nobody is queued.

        Never blocks and never calls the store, so it may answer False while the store still
        has tokens.
        """
        _checks.token_count("SharedBucket.try_take", n, self.store_burst)
        if self._gate:
            return False
        return self._consume_local(n)

    def set_rate(self, rate: float) -> None:
        """Use ``rate`` for the next store calls (all workers should converge on the same
        rate); the head waiter wakes to re-check. The chunk size stays as built."""
        rate = _checks.positive("SharedBucket.set_rate", "rate", rate, "messages per second")
        if rate > self._rate:  # the store refills faster now: the old pacing is too cautious
            self._next_fetch_at = -math.inf
        self._rate = rate
        self._gate.kick()

    def statistics(self) -> SharedBucketStatistics:
        self._drop_expired(self._clock())
        return SharedBucketStatistics(
            rate=self._rate,
            burst=self._burst,
            tokens=float(self._local),
            waiting=len(self._gate),
            chunk=self._chunk,
            store_calls=self._store_calls,
            tokens_granted=self._granted,
            tokens_expired=self._expired,
        )

    # -- internals -------------------------------------------------------------------------

    async def _fetch(self, deficit: int) -> None:
        """One store round trip; adds what was granted to the local lots and sets the earliest
        time of the next call (``_next_fetch_at``)."""
        if self._expired > self._expired_seen:
            self._prefetch = max(1, self._prefetch // 2)
        else:
            self._prefetch = min(self._chunk, self._prefetch + 1)
        self._expired_seen = self._expired
        want = max(
            deficit,  # the head's need, always (<= store_burst, checked in take)
            min(max(self._gate.demand - self._local, self._prefetch), math.floor(self.store_burst)),
        )
        # The hold clock starts before the request leaves: the store's grant is later than this.
        asked_at = self._clock()
        granted, wait_s = await self._store.take_tokens(
            self._key, want, self._rate, self.store_burst
        )
        self._store_calls += 1
        if (
            isinstance(granted, bool)
            or not isinstance(granted, int)
            or not 0 <= granted <= want
            or not wait_s >= 0
        ):
            raise TokenStoreError(
                f"TokenStore.take_tokens({self._key!r}, want={want}) returned "
                f"({granted!r}, {wait_s!r}); expected granted in 0..{want} and wait_s >= 0"
            )
        now = self._clock()
        if granted:
            self._granted += granted
            # Usable at least now: the waiters take them before any further await.
            self._lots.append([max(asked_at + self.hold_s, now), granted])
            self._local += granted
        if granted < min(want, self._chunk):
            self._contenders = min(self._contenders + 1, self._max_contenders)
        elif wait_s == 0:
            self._contenders = max(1, self._contenders - 1)
        if granted < want or wait_s > 0:
            # The store is empty: come back when it should hold a chunk for each contender.
            # min(wait_s, 1/rate) is when one more token can be there, whether the store's
            # wait_s counts to the next token (store_take) or to all of `want` (also allowed).
            one_token_s = min(wait_s, 1 / self._rate)
            refill_s = (self._chunk * self._contenders - 1) / self._rate
            self._next_fetch_at = now + max(one_token_s + refill_s, _MIN_STORE_RETRY_S)
        else:
            self._next_fetch_at = now

    def _drop_expired(self, now: float) -> None:
        # Lots are few (one per store call within hold_s); scan them all, since a rate change
        # can make a newer lot expire before an older one.
        lots = self._lots
        if any(lot[0] < now for lot in lots):
            for lot in lots:
                if lot[0] < now:
                    count = int(lot[1])
                    self._local -= count
                    self._expired += count
            self._lots = deque(lot for lot in lots if lot[0] >= now)

    def _consume_local(self, n: int) -> bool:
        """Hand out ``n`` held tokens, oldest first, if there are enough. No await: atomic."""
        self._drop_expired(self._clock())
        if self._local < n:
            return False
        self._local -= n
        lots = self._lots
        while n:
            lot = lots[0]
            used = min(int(lot[1]), n)
            n -= used
            lot[1] -= used
            if not lot[1]:
                lots.popleft()
        return True
