"""PacedLimiter: workers sharing one number's rate as a schedule of send slots (virtual clock)."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit import MemorySlotStore, PacedLimiter, reserve_slots
from tests.unit.ratelimit_support import run_virtual, window_excess


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


async def run_workers(rate: float, workers: int, lanes: int, seconds: float, *, latency: float = 0.0,
                      dead_after: float | None = None) -> tuple[list[float], MemorySlotStore]:
    store = MemorySlotStore()
    sent: list[float] = []

    class SlowStore:
        async def reserve(self, *a):  # a round trip to Postgres
            await trio.sleep(latency)
            return await store.reserve(*a)

    async def worker(index: int) -> None:
        limiter = PacedLimiter(SlowStore(), "n1", rate)

        async def lane() -> None:
            while True:
                await limiter.take()
                sent.append(trio.current_time())
                await trio.sleep(0.003)  # the POST

        with trio.move_on_after(dead_after if dead_after is not None and index == 0 else seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(lanes):
                    nursery.start_soon(lane)

    async with trio.open_nursery() as nursery:
        for i in range(workers):
            nursery.start_soon(worker, i)
    return sent, store


async def test_three_workers_together_never_exceed_the_rate_and_use_it_fully(autojump_clock) -> None:
    sent, store = await run_workers(198, workers=3, lanes=16, seconds=10, latency=0.006)
    assert max_in_window(sent) <= 200, "one number's ceiling holds across all workers"
    steady = [t for t in sent if 1.0 <= t < 9.0]
    assert len(steady) >= 0.98 * 198 * 8
    assert store.calls <= len(sent) / 5, "one store round trip per chunk of slots, not per message"


async def test_the_store_round_trip_leaves_no_gap_in_the_schedule(autojump_clock) -> None:
    """A 10-ms round trip per 50-ms chunk: reserved while half a chunk is still held, the next
    chunk follows the last one seamlessly, so one worker uses its whole rate (reserving only when
    the held slots ran out lost a round trip per chunk: ~17% here)."""
    sent, store = await run_workers(1000, workers=1, lanes=32, seconds=5, latency=0.010)
    steady = [t for t in sent if 1.0 <= t < 4.0]
    assert len(steady) >= 0.995 * 1000 * 3, len(steady)
    assert max_in_window(sent) <= 1001
    assert store.calls <= len(sent) / 40


async def test_a_worker_dying_with_slots_held_never_makes_the_others_overshoot(autojump_clock) -> None:
    sent, _ = await run_workers(100, workers=3, lanes=4, seconds=6, latency=0.004, dead_after=2.0)
    assert max_in_window(sent) <= 101


async def test_cancelled_waiter_does_not_block_the_queue(autojump_clock) -> None:
    limiter = PacedLimiter(MemorySlotStore(), "k", 10)
    with trio.move_on_after(0.01):
        await limiter.take(5)
    await limiter.take()  # the next waiter is still served
    assert limiter.statistics().waiting == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 50)), min_size=1, max_size=40),
       st.floats(1, 1000), st.floats(0.01, 1))
def test_reservations_never_overlap_and_stay_within_horizon(calls, rate, horizon) -> None:
    tat, slots = 0.0, []
    for now, n in sorted(calls):
        new_tat, ahead, granted = reserve_slots(tat, now, n, rate, horizon)
        assert 0 <= granted <= n
        if granted:
            assert ahead <= horizon + 1e-9
            start = now + ahead
            assert start >= tat - 1e-9, "a reservation never starts before the previous one ends"
            slots.extend(start + i / rate for i in range(granted))
            tat = new_tat
    slots.sort()
    assert all(b - a >= 1 / rate - 1e-9 for a, b in zip(slots, slots[1:], strict=False))


@settings(max_examples=150, deadline=None)
@given(rate=st.floats(5, 500), workers=st.integers(1, 3), latency=st.floats(0, 0.02),
       arrivals=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 3), st.one_of(st.none(), st.floats(0, 0.3))),
                         min_size=1, max_size=60))
def test_any_arrivals_and_cancels_keep_the_window_bound_and_serve_every_waiter(
        rate: float, workers: int, latency: float, arrivals: list[tuple[float, int, float | None]]) -> None:
    """Waiters arrive at any times on any of several workers sharing one number, asking for 1-3
    slots; some give up after a while. Slots granted in any window [a, b] never exceed
    rate·(b − a) + 1 + rate·late_s (a slot is used at most late_s after its time), and every
    waiter that did not give up is served (a cancelled one blocks nobody)."""
    store = MemorySlotStore()

    class SlowStore:
        async def reserve(self, *a):  # type: ignore[no-untyped-def]
            await trio.sleep(latency)
            return await store.reserve(*a)

    slots: list[tuple[float, int]] = []  # when each slot handed to a waiter is used (or wasted)

    class Recorded(PacedLimiter):
        async def _next_slot(self) -> float:
            slot = await super()._next_slot()
            slots.append((max(slot, trio.current_time()), 1))
            return slot

    limiters = [Recorded(SlowStore(), "n1", rate) for _ in range(workers)]
    grants: list[tuple[float, int]] = []
    unserved: list[int] = []

    async def waiter(index: int, at: float, n: int, give_up_after: float | None) -> None:
        await trio.sleep(at)
        limiter = limiters[index % workers]
        if give_up_after is None:
            await limiter.take(n)
            grants.append((trio.current_time(), n))
            return
        with trio.move_on_after(give_up_after):
            await limiter.take(n)
            grants.append((trio.current_time(), n))

    async def main() -> None:
        with trio.move_on_after(120) as scope:
            async with trio.open_nursery() as nursery:
                for i, (at, n, give_up) in enumerate(arrivals):
                    nursery.start_soon(waiter, i, at, n, give_up)
        if scope.cancelled_caught:
            unserved.append(1)

    run_virtual(main)
    assert not unserved, "a waiter that did not give up was never served"
    assert sum(n for _, n in grants) <= len(slots), "a take returns only with all its slots"
    assert window_excess(slots, rate, 1 + rate * 0.005) <= 1e-6
    assert all(lim.statistics().waiting == 0 for lim in limiters)
