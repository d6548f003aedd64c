"""TokenBucket: the per-number messages/s budget, on trio's virtual clock (no real sleeps)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import BucketStatistics, Limiter, RateLimitConfigError, TokenBucket
from ratelimit._fifo import FifoGate
from tests.unit.ratelimit_support import run_virtual, window_excess

SLACK = 1e-6  # tokens: the bucket may dip this far below 0 from float rounding (bucket.py)


# -- the unit and the window bound ---------------------------------------------------------------


async def test_rate_is_messages_per_second_one_token_per_api_call(autojump_clock):
    """Unit: one token = one message = one Cloud API send call. At 80 msg/s with a burst of 80,
    ten seconds of back-to-back send calls make exactly 80 + 80 * 10 calls."""
    bucket = TokenBucket(rate=80, burst=80)
    api_calls = 0
    with trio.move_on_after(10.0 + 1e-9):
        while True:
            await bucket.take(1)  # one API call carries one message
            api_calls += 1
    assert api_calls == 80 + 80 * 10


arrival = st.tuples(
    st.floats(0, 5, allow_nan=False),  # start time, s
    st.integers(1, 4),  # n (messages in this request)
    st.one_of(st.none(), st.floats(0, 3, allow_nan=False)),  # cancel after, s (None: never)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.floats(0.5, 50, allow_nan=False),
    burst=st.integers(4, 20).map(float),
    arrivals=st.lists(arrival, min_size=1, max_size=30),
)
def test_tokens_in_any_window_never_exceed_rate_t_plus_burst(rate, burst, arrivals):
    """For any arrival pattern, with random cancellations: the window bound holds, every
    uncancelled request is served, and requests are served in arrival order."""
    grants: list[tuple[float, int]] = []
    entered: list[int] = []  # request ids in the order they called take()
    granted_at: dict[int, float] = {}
    cancelled: list[int] = []

    async def main() -> None:
        bucket = TokenBucket(rate, burst)

        async def request(i: int, start: float, n: int, cancel_after: float | None) -> None:
            await trio.sleep_until(start)
            with trio.move_on_after(math.inf if cancel_after is None else cancel_after):
                entered.append(i)
                await bucket.take(n)
                grants.append((trio.current_time(), n))
                granted_at[i] = trio.current_time()
                return
            cancelled.append(i)

        async with trio.open_nursery() as nursery:
            for i, (start, n, cancel_after) in enumerate(arrivals):
                nursery.start_soon(request, i, start, n, cancel_after)

    run_virtual(main)
    assert window_excess(grants, rate, burst) <= SLACK
    assert len(granted_at) + len(cancelled) == len(arrivals)
    assert all(arrivals[i][2] is not None for i in cancelled)
    served = [granted_at[i] for i in entered if i in granted_at]
    assert served == sorted(served), "a later request was served before an earlier one"


# -- FIFO and cancellation -----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    ns=st.lists(st.integers(1, 3), min_size=1, max_size=12),
    cancels=st.lists(st.one_of(st.none(), st.integers(0, 30)), min_size=12, max_size=12),
)
def test_cancelled_waiters_leak_no_tokens_and_the_rest_are_served_fifo(ns, cancels):
    """Bucket empty at t=0, rate 1/s, waiters queued in order at t=0; waiter i may be cancelled
    at time c + 0.5 (grants happen on whole seconds, so there is no tie). A cancelled waiter
    consumes nothing, so the k-th survivor is served exactly when the survivors' cumulative
    demand has accrued."""
    burst = 3.0
    got: dict[int, float] = {}

    async def main() -> None:
        bucket = TokenBucket(rate=1.0, burst=burst)
        assert bucket.try_take(3)  # empty it

        async def waiter(i: int, n: int, cancel_at: float | None) -> None:
            with trio.move_on_at(math.inf if cancel_at is None else cancel_at):
                await bucket.take(n)
                got[i] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for i, n in enumerate(ns):
                cancel_at = None if cancels[i] is None else cancels[i] + 0.5
                nursery.start_soon(waiter, i, n, cancel_at)
                await trio.testing.wait_all_tasks_blocked()  # queue order = i

    run_virtual(main)
    # The model: tokens accrue at 1/s from 0 (never reaching the cap while someone waits);
    # waiters in order; a waiter becomes head when the previous one is served or cancelled, is
    # served once the tokens consumed so far plus its own n have accrued, unless cancelled first.
    expected: dict[int, float] = {}
    consumed = 0
    head_since = 0.0
    for i, n in enumerate(ns):
        grant_time = max(head_since, float(consumed + n))
        cancel_at = math.inf if cancels[i] is None else cancels[i] + 0.5
        if grant_time < cancel_at:
            expected[i] = grant_time
            consumed += n
            head_since = grant_time
        else:
            head_since = max(head_since, cancel_at)
    assert got == pytest.approx(expected)


async def test_cancelled_head_hands_over_at_once(autojump_clock):
    """The head is cancelled while sleeping for its tokens: the next waiter is served when
    *its* tokens are there, as if the cancelled one had never queued."""
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert bucket.try_take(2)
    served: dict[str, float] = {}

    async def waiter(name: str, n: int) -> None:
        await bucket.take(n)
        served[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        head_scope = trio.CancelScope()

        async def head() -> None:
            with head_scope:
                await waiter("head", 2)

        nursery.start_soon(head)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "next", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert bucket.statistics().waiting == 2
        await trio.sleep(0.5)
        head_scope.cancel()
    assert served == {"next": pytest.approx(1.0)}
    assert bucket.statistics() == BucketStatistics(
        rate=1.0, burst=2.0, tokens=pytest.approx(0.0), waiting=0
    )


async def test_cancelled_take_on_fast_path_consumes_nothing(autojump_clock):
    bucket = TokenBucket(rate=1.0, burst=5.0)
    with trio.CancelScope() as scope:
        scope.cancel()
        await bucket.take(3)
    assert scope.cancelled_caught
    assert bucket.statistics().tokens == 5.0


async def test_take_checkpoints_even_on_its_fast_path(autojump_clock):
    bucket = TokenBucket(rate=1e9, burst=1e9)
    for _ in range(3):
        with trio.testing.assert_checkpoints():
            await bucket.take()


async def test_try_take_never_jumps_the_queue(autojump_clock):
    """2 tokens are there, but a waiter for 3 is queued first: try_take(1) must say no."""
    bucket = TokenBucket(rate=1.0, burst=5.0)
    assert bucket.try_take(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert bucket.statistics().tokens == pytest.approx(2.0)
        assert not bucket.try_take(1)
    assert trio.current_time() == pytest.approx(1.0)
    assert bucket.try_take(0)
    assert not bucket.try_take(1)


async def test_set_rate_takes_effect_for_a_waiter(autojump_clock):
    """A waiter for 10 tokens at 1/s would be served at t=10; at t=1 the rate goes to 9/s,
    so the 9 missing tokens arrive by t=2."""
    bucket = TokenBucket(rate=1.0, burst=10.0)
    assert bucket.try_take(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take, 10)
        await trio.sleep(1.0)
        bucket.set_rate(9.0)
    assert trio.current_time() == pytest.approx(2.0)
    assert bucket.rate == 9.0


async def test_set_rate_lower_delays_a_waiter(autojump_clock):
    bucket = TokenBucket(rate=10.0, burst=10.0)
    assert bucket.try_take(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bucket.take, 10)
        await trio.sleep(0.5)  # 5 tokens accrued
        bucket.set_rate(1.0)  # the other 5 take 5 s
    assert trio.current_time() == pytest.approx(5.5)


class CountingGate(FifoGate):
    __slots__ = ("sleeps",)

    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    async def sleep_as_head(self, waiter, seconds):  # type: ignore[no-untyped-def]
        self.sleeps += 1
        await super().sleep_as_head(waiter, seconds)


async def test_waiting_is_one_timed_sleep_per_waiter_not_polling(autojump_clock):
    """Five queued waiters, each short of tokens: each sleeps exactly once, until a computed
    deadline; the ones behind the head wait on an event, not on time."""
    bucket = TokenBucket(rate=2.0, burst=4.0)
    gate = CountingGate()
    bucket._gate = gate
    assert bucket.try_take(4)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(bucket.take, 3)
    assert trio.current_time() == pytest.approx(15 / 2.0)
    assert gate.sleeps == 5


async def test_statistics_is_a_frozen_snapshot(autojump_clock):
    bucket = TokenBucket(rate=4.0, burst=8.0)
    await bucket.take(6)
    stats = bucket.statistics()
    assert stats == BucketStatistics(rate=4.0, burst=8.0, tokens=2.0, waiting=0)
    with pytest.raises(AttributeError):
        stats.tokens = 1.0  # type: ignore[misc]
    await trio.sleep(10)
    assert bucket.statistics().tokens == 8.0  # capped at burst


def test_bucket_satisfies_the_limiter_protocol():
    assert isinstance(TokenBucket(1, 1), Limiter)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, 1, r"^TokenBucket: rate must be a positive finite number of messages per second, got 0$"),
        (math.inf, 1, r"^TokenBucket: rate must be .* got inf$"),
        (1, -2, r"^TokenBucket: burst must be a positive finite number of messages, got -2$"),
        ("80", 1, r"^TokenBucket: rate must be .* got '80'$"),
    ],
)
def test_bad_rate_or_burst_is_named(rate, burst, message):
    with pytest.raises(RateLimitConfigError, match=message):
        TokenBucket(rate, burst)


async def test_take_more_than_burst_is_refused_not_hung(autojump_clock):
    bucket = TokenBucket(rate=80, burst=80)
    with pytest.raises(RateLimitConfigError, match=r"^TokenBucket\.take: n=81 exceeds the most"):
        await bucket.take(81)
    with pytest.raises(RateLimitConfigError, match=r"^TokenBucket\.try_take: n must be an int"):
        bucket.try_take(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^TokenBucket\.set_rate: rate must be"):
        bucket.set_rate(-1)
