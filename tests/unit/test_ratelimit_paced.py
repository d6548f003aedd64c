"""PacedLimiter: workers sharing one number's rate as a schedule of send slots (virtual clock)."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit import MemorySlotStore, PacedLimiter, reserve_slots


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
