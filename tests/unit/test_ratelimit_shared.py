"""SharedBucket over MemoryTokenStore: one budget for several worker processes, simulated as
several SharedBucket instances on one store, on trio's virtual clock."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import (
    Limiter,
    MemoryTokenStore,
    RateLimitConfigError,
    SharedBucket,
    TokenStoreError,
    auto_chunk,
    store_take,
)
from tests.unit.ratelimit_support import run_virtual, window_excess

# -- the store's arithmetic (the reference for the SQL) ------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "elapsed_s", "want", "expected"),
    [
        # tokens = min(burst, tokens + rate * elapsed); granted = min(want, floor(tokens))
        (10.0, 0.0, 4, (6.0, 4, 0.0)),  # plenty: grant all, more available at once
        (2.5, 0.0, 4, (0.5, 2, 0.25)),  # partial: floor(2.5) = 2; 0.5 more token takes 0.25 s
        (0.0, 0.75, 4, (0.5, 1, 0.25)),  # refill 1.5 at 2/s
        (9.0, 100.0, 4, (6.0, 4, 0.0)),  # refill capped at burst 10
        (3.0, -5.0, 1, (2.0, 1, 0.0)),  # clock stepped back: no refill, no loss
        (0.9, 0.0, 1, (0.9, 0, 0.05)),  # no whole token: nothing granted
    ],
)
def test_store_take_arithmetic(tokens, elapsed_s, want, expected):
    assert store_take(tokens, elapsed_s, want, rate=2.0, burst=10.0) == pytest.approx(expected)


async def test_memory_store_starts_a_key_full_and_refills_at_the_callers_rate(autojump_clock):
    store = MemoryTokenStore()
    assert await store.take_tokens("n1", 5, 2.0, 8.0) == (5, 0.0)
    assert store.tokens("n1") == 3.0
    assert await store.take_tokens("n1", 5, 2.0, 8.0) == (3, 0.5)
    await trio.sleep(1.0)
    assert await store.take_tokens("n1", 5, 2.0, 8.0) == (2, 0.5)
    assert store.tokens("other") is None
    assert store.calls == 3


# -- the shared bound ---------------------------------------------------------------------------

arrival = st.tuples(
    st.integers(0, 2),  # worker
    st.floats(0, 4, allow_nan=False),  # start, s
    st.integers(1, 3),  # n
    st.one_of(st.none(), st.floats(0, 2, allow_nan=False)),  # cancel after, s
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(2, 100, allow_nan=False),
    burst=st.integers(4, 30).map(float),
    chunk=st.integers(0, 8),
    arrivals=st.lists(arrival, min_size=1, max_size=40),
)
def test_three_workers_together_never_exceed_rate_t_plus_burst(rate, burst, chunk, arrivals):
    """Three SharedBuckets (three 'workers') on one store, any arrival pattern, random
    cancellations: tokens handed out by all of them in any window of length T stay within
    rate * T + burst, every uncancelled request is served, FIFO within each worker."""
    grants: list[tuple[float, int]] = []
    entered: dict[int, list[int]] = defaultdict(list)
    granted_at: dict[int, float] = {}
    cancelled = 0

    async def main() -> None:
        nonlocal cancelled
        store = MemoryTokenStore()
        workers = [SharedBucket(store, "pn-1", rate, burst, chunk) for _ in range(3)]
        most = math.floor(workers[0].store_burst)  # the largest n one store grant covers

        async def request(i: int, w: int, start: float, n: int, cancel: float | None) -> None:
            nonlocal cancelled
            await trio.sleep_until(start)
            with trio.move_on_after(math.inf if cancel is None else cancel):
                entered[w].append(i)
                await workers[w].take(n)
                grants.append((trio.current_time(), n))
                granted_at[i] = trio.current_time()
                return
            cancelled += 1

        async with trio.open_nursery() as nursery:
            for i, (w, start, n, cancel) in enumerate(arrivals):
                nursery.start_soon(request, i, w, start, min(n, most), cancel)

    run_virtual(main)
    assert window_excess(grants, rate, burst) <= 1e-9
    assert len(granted_at) + cancelled == len(arrivals)
    for order in entered.values():
        served = [granted_at[i] for i in order if i in granted_at]
        assert served == sorted(served)


class WaitForWantStore(MemoryTokenStore):
    """Same grants as MemoryTokenStore, but wait_s counts until all of `want` could be granted
    (as the engine's SQL function does); SharedBucket must work with either reading."""

    async def take_tokens(self, key: str, want: int, rate: float, burst: float) -> tuple[int, float]:
        granted, wait_s = await super().take_tokens(key, want, rate, burst)
        if granted == want:
            return granted, 0.0
        tokens = self.tokens(key)
        assert tokens is not None
        return granted, max(0.0, (min(want - granted, burst) - tokens) / rate)


@pytest.mark.parametrize("store_class", [MemoryTokenStore, WaitForWantStore])
async def test_hungry_workers_share_the_rate_with_few_store_calls(autojump_clock, store_class):
    """3 workers x 20 lanes, each lane sending one message per API call (0.2 s each) as fast
    as allowed, for 10 s at 80 msg/s, burst 80: the number's budget is used (>= 95 %), never
    exceeded, and round trips to the store are far fewer than messages."""
    rate, burst, seconds = 80.0, 80.0, 10.0
    store = store_class()
    workers = [SharedBucket(store, "pn-1", rate, burst) for _ in range(3)]
    grants: list[tuple[float, int]] = []

    async def lane(worker: SharedBucket) -> None:
        while trio.current_time() < seconds:
            await worker.take(1)
            grants.append((trio.current_time(), 1))
            await trio.sleep(0.2)  # the API call

    async with trio.open_nursery() as nursery:
        for worker in workers:
            for _ in range(20):
                nursery.start_soon(lane, worker)
    messages = len(grants)
    assert window_excess(grants, rate, burst) <= 1e-9
    assert messages >= 0.95 * rate * seconds
    assert store.calls <= messages / 4, (store.calls, messages)
    assert sum(w.statistics().store_calls for w in workers) == store.calls


async def test_open_limiter_makes_one_store_call_per_chunk(autojump_clock):
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=1000.0, burst=1e6)
    assert bucket.statistics().chunk == auto_chunk(1000.0) == 50
    for _ in range(1000):
        await bucket.take()
    assert store.calls == 1000 // 50


# -- local holding and expiry -------------------------------------------------------------------


async def test_held_tokens_expire_after_chunk_over_rate_and_are_not_returned(autojump_clock):
    """rate 80, chunk 4: a take(1) fetches 4; the 3 spare ones are usable for 4/80 = 50 ms
    from the request, then dropped; the store does not get them back."""
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=80.0, burst=80.0, chunk=4)
    assert (bucket.store_burst, bucket.hold_s) == (76.0, 0.05)
    await bucket.take(1)
    assert store.tokens("pn-1") == 72.0
    assert bucket.statistics().tokens == 3.0
    await trio.sleep(0.05)
    assert bucket.try_take(1)  # still inside the hold
    await trio.sleep(0.001)
    stats = bucket.statistics()
    assert (stats.tokens, stats.tokens_expired, stats.tokens_granted) == (0.0, 2, 4)
    assert not bucket.try_take(1)
    assert store.tokens("pn-1") == 72.0  # as of its last update: nothing came back


async def test_a_dead_worker_loses_its_tokens_and_the_bound_still_holds(autojump_clock):
    """Worker A fetches a chunk and dies (its task is cancelled, the object dropped). Worker B
    then drains the store: together they stay within rate * T + burst."""
    rate, burst = 10.0, 10.0
    store = MemoryTokenStore()
    grants: list[tuple[float, int]] = []
    a = SharedBucket(store, "pn-1", rate, burst, chunk=5)
    await a.take(1)
    grants.append((trio.current_time(), 1))
    del a
    b = SharedBucket(store, "pn-1", rate, burst, chunk=5)
    with trio.move_on_after(3.0):
        while True:
            await b.take(1)
            grants.append((trio.current_time(), 1))
    assert window_excess(grants, rate, burst) <= 1e-9
    assert len(grants) <= rate * 3.0 + burst


async def test_burst_below_two_holds_nothing_locally(autojump_clock):
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=5.0, burst=1.0)
    assert (bucket.store_burst, bucket.hold_s, bucket.statistics().chunk) == (1.0, 0.0, 1)
    for _ in range(3):
        await bucket.take(1)
    assert trio.current_time() == pytest.approx(0.4)


# -- the Limiter surface ------------------------------------------------------------------------


async def test_cancelled_waiter_consumes_nothing_and_the_next_is_served(autojump_clock):
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=1.0, burst=3.0, chunk=1)  # store_burst 2
    await bucket.take(2)  # drains the store at t=0
    served: list[tuple[str, float]] = []

    async def waiter(name: str) -> None:
        await bucket.take(1)
        served.append((name, trio.current_time()))

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def doomed() -> None:
            with scope:
                await waiter("doomed")

        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "next")
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
        scope.cancel()
    assert served == [("next", pytest.approx(1.0))]


async def test_take_checkpoints_and_is_atomic_on_cancel(autojump_clock):
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=100.0, burst=100.0)
    await bucket.take()
    held = bucket.statistics().tokens
    assert held > 0
    with trio.testing.assert_checkpoints():
        await bucket.take()
    with trio.CancelScope() as scope:
        scope.cancel()
        await bucket.take()
    assert bucket.statistics().tokens == held - 1


async def test_set_rate_wakes_a_waiter_to_use_the_faster_rate(autojump_clock):
    """At 1/s the waiter would get its 2 tokens at t=2; at t=0.5 the rate goes to 10/s and
    the store refills the elapsed 0.5 s at the caller's new rate (see TokenStore), so the
    waiter, woken by set_rate, is served at once."""
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=1.0, burst=4.0, chunk=1)  # store_burst 3
    await bucket.take(3)  # drains the store at t=0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take, 2)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
        bucket.set_rate(10.0)
    assert trio.current_time() == pytest.approx(0.5)
    assert bucket.rate == 10.0


async def test_set_rate_lower_slows_the_next_grants(autojump_clock):
    store = MemoryTokenStore()
    bucket = SharedBucket(store, "pn-1", rate=10.0, burst=4.0, chunk=1)
    await bucket.take(3)
    bucket.set_rate(1.0)
    await bucket.take(2)
    assert trio.current_time() >= 2.0


class LyingStore:
    async def take_tokens(self, key: str, want: int, rate: float, burst: float):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return want + 1, 0.0


async def test_a_store_granting_more_than_asked_is_an_error(autojump_clock):
    bucket = SharedBucket(LyingStore(), "pn-1", rate=80.0, burst=80.0)
    with pytest.raises(
        TokenStoreError,
        match=r"^TokenStore\.take_tokens\('pn-1', want=4\) returned \(5, 0\.0\); expected",
    ):
        await bucket.take()


def test_shared_bucket_satisfies_the_limiter_protocol():
    assert isinstance(SharedBucket(MemoryTokenStore(), "k", 1, 2), Limiter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0}, r"^SharedBucket: rate must be a positive finite number"),
        ({"burst": 0.5}, r"^SharedBucket: burst must be >= 1 message"),
        ({"chunk": -1}, r"^SharedBucket: chunk must be an int >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"rate": 80.0, "burst": 80.0, "chunk": 0} | kwargs
    with pytest.raises(RateLimitConfigError, match=message):
        SharedBucket(MemoryTokenStore(), "pn-1", **args)


async def test_take_more_than_one_store_grant_can_cover_is_refused(autojump_clock):
    bucket = SharedBucket(MemoryTokenStore(), "pn-1", rate=80.0, burst=80.0)  # chunk 4
    with pytest.raises(RateLimitConfigError, match=r"^SharedBucket\.take: n=77 exceeds the most"):
        await bucket.take(77)
