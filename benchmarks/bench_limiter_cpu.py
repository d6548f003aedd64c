"""CPU cost of the rate limiters per call, at an open limiter (huge rate) and when waiting.

Prints CPU µs per call (process time, so other load on the machine barely matters) for:
the trio checkpoint every take() makes (the floor), TokenBucket.take / try_take, SharedBucket.take
over MemoryTokenStore (store round trips counted), a saturated bucket with 32 queued lanes on a
real clock (the waiting path, about 2 s), PairSpacing.try_reserve and AimdController.current_rate.

    .venv/bin/python benchmarks/bench_limiter_cpu.py [--n 200000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import trio

from ratelimit import (
    AimdController,
    MemorySlotStore,
    MemoryTokenStore,
    PacedLimiter,
    PairSpacing,
    SharedBucket,
    TokenBucket,
)

OPEN_RATE = 1e12  # messages/s: never the bottleneck


def cpu_us_per_call(n: int, run: Callable[[], None]) -> float:
    start = time.process_time_ns()
    run()
    return (time.process_time_ns() - start) / n / 1000


def in_trio(n: int, body: Callable[[int], Awaitable[None]], **run_kwargs: object) -> float:
    return cpu_us_per_call(n, lambda: trio.run(body, n, **run_kwargs))  # type: ignore[arg-type]


async def checkpoint_only(n: int) -> None:
    for _ in range(n):
        await trio.lowlevel.checkpoint()


async def bucket_take(n: int) -> None:
    bucket = TokenBucket(OPEN_RATE, OPEN_RATE)
    for _ in range(n):
        await bucket.take()


async def bucket_try_take(n: int) -> None:
    bucket = TokenBucket(OPEN_RATE, OPEN_RATE)
    for _ in range(n):
        bucket.try_take()


store_calls: dict[str, int] = {}


async def shared_take(n: int) -> None:
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=1000.0, burst=1e12)  # chunk 50 (auto at 1,000/s)
    for _ in range(n):
        await bucket.take()
    store_calls["shared"] = store.calls


SATURATED_RATE = 20_000.0  # messages/s: the lanes want more, so nearly every take() queues


async def saturated_lanes(n: int) -> None:
    """32 lanes share SATURATED_RATE with a burst of 10, on the real clock (n / rate seconds):
    nearly every take() queues, and the head sleeps until its computed deadline."""
    bucket = TokenBucket(SATURATED_RATE, 10.0)
    per_lane = n // 32

    async def lane() -> None:
        for _ in range(per_lane):
            await bucket.take()

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(lane)


PACED_RATE = 1_000.0  # the highest per-number ceiling WhatsApp grants


async def paced_lanes(n: int) -> None:
    """What the engine runs per number: 32 lanes on one PacedLimiter (GCRA slot reservations, here
    over MemorySlotStore) at PACED_RATE on the real clock (n / rate seconds)."""
    limiter = PacedLimiter(MemorySlotStore(), "bench", PACED_RATE)
    per_lane = n // 32

    async def lane() -> None:
        for _ in range(per_lane):
            await limiter.take()

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(lane)
    store_calls["paced"] = limiter.statistics().store_calls


def pair_reserve(n: int) -> None:
    now = [0.0]
    pair = PairSpacing(6.0, clock=lambda: now[0])
    for i in range(n):
        now[0] += 0.001  # 1,000 recipients/s, all distinct
        pair.try_reserve(i)


def aimd_rate(n: int) -> None:
    now = [0.0]
    aimd = AimdController(80.0, clock=lambda: now[0])
    aimd.on_throttle()
    for _ in range(n):
        now[0] += 0.001
        aimd.current_rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per row")
    n = parser.parse_args().n
    saturated_n = min(n, 40_000) // 32 * 32  # about 2 s of real time
    paced_n = 3_200  # 3.2 s of real time at PACED_RATE
    rows = [
        ("trio checkpoint (the floor of any take)", in_trio(n, checkpoint_only)),
        ("TokenBucket.take, open", in_trio(n, bucket_take)),
        ("TokenBucket.try_take, open", in_trio(n, bucket_try_take)),
        ("SharedBucket.take, open, MemoryTokenStore", in_trio(n, shared_take)),
        (f"TokenBucket.take, 32 lanes queued at {SATURATED_RATE:,.0f}/s (real clock)",
         in_trio(saturated_n, saturated_lanes)),
        (f"PacedLimiter.take, 32 lanes at {PACED_RATE:,.0f}/s, MemorySlotStore (real clock)",
         in_trio(paced_n, paced_lanes)),
        ("PairSpacing.try_reserve, 1,000 new keys/s", cpu_us_per_call(n, lambda: pair_reserve(n))),
        ("AimdController.current_rate", cpu_us_per_call(n, lambda: aimd_rate(n))),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'call':<{width}}  CPU µs/call   ({n:,} calls per row; {saturated_n:,} when queued)")
    for name, us in rows:
        print(f"{name:<{width}}  {us:10.2f}")
    floor = rows[0][1]
    print(f"\ntake() over the bare checkpoint: {rows[1][1] / floor:.1f}x; "
          f"SharedBucket store round trips: {store_calls['shared']:,} for {n:,} takes "
          f"(1 per {n / store_calls['shared']:.0f}); PacedLimiter slot reservations: {store_calls['paced']:,} "
          f"for {paced_n:,} takes (1 per {paced_n / store_calls['paced']:.0f})")


if __name__ == "__main__":
    main()
