"""Helpers shared by the rate-limiter tests: the window-bound check and a virtual-clock run."""

from __future__ import annotations

import math
from collections import defaultdict

import trio
import trio.testing


def window_excess(grants: list[tuple[float, int]], rate: float, burst: float) -> float:
    """max over windows [a, b] of (tokens granted in it) - (rate * (b - a) + burst).

    The worst window starts and ends at grant times, so checking those pairs is exhaustive.
    """
    per_time: dict[float, int] = defaultdict(int)
    for t, n in grants:
        per_time[t] += n
    times = sorted(per_time)
    worst = -math.inf
    for i, a in enumerate(times):
        total = 0
        for b in times[i:]:
            total += per_time[b]
            worst = max(worst, total - (rate * (b - a) + burst))
    return worst


def run_virtual(async_fn, *args):  # type: ignore[no-untyped-def]
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
