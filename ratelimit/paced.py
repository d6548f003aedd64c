"""PacedLimiter: one number's messages/s shared by every worker as a schedule of send slots.

What it is: a generic cell-rate algorithm (GCRA) with batch reservations. The shared store keeps
one "theoretical arrival time" (TAT) per key; a worker reserves n consecutive slots in one round
trip — slot i is at `start + i / rate`, `start = max(TAT, now)`, and TAT moves to the end — and
releases them locally on time. Reservations never overlap in time, so all workers together send
at most `rate` per second, smoothly: no burst is ever needed, and a worker that dies only wastes
the slots it held (the total can only fall short, never overshoot).

What it is not: not the per-recipient spacing (`PairSpacing`) nor the daily tier (`tier`).

Guarantees:
- a slot is used at most `late_s` after its time, else dropped: lateness can never bunch sends,
  so any 1-s window sees at most `rate·1 + rate·late_s` (+1) sends from all workers together;
- one store round trip per `chunk` slots (≈ 50 ms of sending), never per message, made while
  half a chunk is still held, so the schedule has no gap for the round trip;
- FIFO among local waiters; a cancelled waiter consumes at most the slot it was handed (one
  cancelled during a reservation wastes at most that chunk: the total only falls short).

Worked example: rate 198/s, chunk 10, three workers. Worker A reserves slots at +0…+45 ms, B at
+50…+95 ms, C at +100…+145 ms; A comes back at +40 ms and gets +150…+195 ms, and so on: the
provider sees one send every ≈ 5 ms whichever worker sends it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from ratelimit._checks import positive

__all__ = ["MemorySlotStore", "PacedLimiter", "PacedStatistics", "SlotStore", "reserve_slots"]

# A reservation is granted only slots starting within this many chunks of now. Each worker holds
# up to 1.5 chunks (it reserves the next one at half a chunk), so 10 leave room for ~6 workers
# at full speed before grants shrink (and round trips grow).
HORIZON_CHUNKS = 10


class SlotStore(Protocol):
    """Where the shared schedule lives (Postgres in the engine, memory in tests)."""

    async def reserve(self, key: str, n: int, rate: float, horizon_s: float) -> tuple[float, int]:
        """Reserve up to `n` slots; returns (seconds from now to the first slot, slots granted).

        Only slots starting within `horizon_s` of now are granted; with none granted, the first
        value says how long until one would be.
        """
        ...


def reserve_slots(tat: float, now: float, n: int, rate: float, horizon_s: float) -> tuple[float, float, int]:
    """The store's arithmetic, pure: (new TAT, start offset from now, granted).

        start = max(TAT, now);  granted = min(n, floor((horizon - (start - now)) · rate) + 1), ≥ 0
        TAT' = start + granted / rate
    """
    start = max(tat, now)
    ahead = start - now
    granted = 0 if ahead > horizon_s else min(n, math.floor((horizon_s - ahead) * rate) + 1)
    return start + granted / rate, ahead, granted


class MemorySlotStore:
    """In-process SlotStore with `reserve_slots`' arithmetic (tests, single-process runs)."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._tat: dict[str, float] = {}
        self.calls = 0

    async def reserve(self, key: str, n: int, rate: float, horizon_s: float) -> tuple[float, int]:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        now = self._clock()
        tat, ahead, granted = reserve_slots(self._tat.get(key, now), now, n, rate, horizon_s)
        self._tat[key] = tat
        return ahead, granted


@dataclass(frozen=True)
class PacedStatistics:
    rate: float
    held: int            # reserved slots not yet used
    waiting: int
    store_calls: int
    slots_granted: int
    slots_dropped: int   # reserved but not used in time (never sent: the total only falls short)


class PacedLimiter:
    """`await take()` returns at this worker's next reserved slot time (see module docstring)."""

    def __init__(self, store: SlotStore, key: str, rate: float, *, chunk: int = 0, late_s: float = 0.005,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._store = store
        self._key = key
        self._rate = positive("PacedLimiter", "rate", rate, "messages/s")
        self._chunk_fixed = chunk
        self._late_s = late_s
        self._clock = clock
        self._slots: collections.deque[float] = collections.deque()
        self._last_slot = -math.inf  # the latest slot time ever held: a new chunk never starts before it
        self._lock = trio.Lock()  # FIFO: trio.Lock wakes waiters in arrival order
        self._refilling: trio.Event | None = None  # set when the reservation in flight has landed
        self._calls = 0
        self._granted = 0
        self._dropped = 0
        self._waiting = 0

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Future reservations use `rate`; slots already held keep their times."""
        self._rate = positive("PacedLimiter", "rate", rate, "messages/s")

    def _chunk(self) -> int:
        return self._chunk_fixed or max(1, min(100, round(self._rate * 0.05)))

    def statistics(self) -> PacedStatistics:
        return PacedStatistics(self._rate, len(self._slots), self._waiting, self._calls, self._granted,
                               self._dropped)

    async def take(self, n: int = 1) -> None:
        """Wait for `n` send slots (FIFO). Checkpoints even when a slot is due already.

        When the held slots run low (half a chunk), this caller first reserves the next chunk,
        outside the queue: the others keep using the held slots meanwhile, so the store's round
        trip does not leave a gap in the schedule (it cost ~5% of the rate at 1,000/s).
        """
        self._waiting += 1
        try:
            if self._refilling is None and len(self._slots) <= self._chunk() // 2:
                await self._reserve()
            async with self._lock:
                for _ in range(n):
                    slot = await self._next_slot()
                    if slot > self._clock():
                        await trio.sleep_until(slot)
            await trio.lowlevel.checkpoint()
        finally:
            self._waiting -= 1

    async def _next_slot(self) -> float:
        while True:
            now = self._clock()
            while self._slots and self._slots[0] < now - self._late_s:
                self._slots.popleft()  # too late to use without bunching sends: drop it
                self._dropped += 1
            if self._slots:
                return self._slots.popleft()
            if self._refilling is not None:
                await self._refilling.wait()  # a reservation is in flight: its slots come next
            else:
                await self._reserve()

    async def _reserve(self) -> None:
        """One store round trip for the next chunk of slots; wakes whoever waits for it."""
        landed = self._refilling = trio.Event()
        try:
            chunk = self._chunk()
            horizon = max(0.05, HORIZON_CHUNKS * chunk / self._rate)
            ahead, granted = await self._store.reserve(self._key, chunk, self._rate, horizon)
            t1 = self._clock()
            self._calls += 1
            if granted == 0:
                await trio.sleep(max(0.001, ahead - horizon))
                return
            self._granted += granted
            # the store's offset, on our clock from when its answer arrived: a slot is never placed
            # before the store's time for it (placed from the request's start, a fresh chunk began
            # a round trip in the past and its first slots went out in one burst); and never
            # before a slot already held, so two of our chunks cannot overlap
            first = max(t1 + ahead, self._last_slot + 1 / self._rate)
            self._slots.extend(first + i / self._rate for i in range(granted))
            self._last_slot = self._slots[-1]
        finally:
            self._refilling = None
            landed.set()
