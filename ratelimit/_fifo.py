"""FIFO waiter queue shared by the token buckets (private).

Only the head of the queue ever waits on time; everyone behind it waits on an Event that is set
when it becomes the head. That is what makes the buckets fair (strict arrival order) and cheap
(one timer, however many waiters).
"""

from __future__ import annotations

from collections import OrderedDict

import trio

__all__ = ["FifoGate", "Waiter"]


class Waiter:
    """One queued ``take(n)`` call."""

    __slots__ = ("n", "scope", "turn")

    def __init__(self, n: int) -> None:
        self.n = n
        self.turn = trio.Event()  # set once, when this waiter becomes the head
        self.scope: trio.CancelScope | None = None  # the head's current timed sleep, if any


class FifoGate:
    """A FIFO of waiters in which only the head sleeps, until a computed deadline.

    Protocol for a bucket: ``w = gate.join(n)``; ``await gate.wait_turn(w)``; then, as head,
    loop ``try to grant`` / ``await gate.sleep_as_head(w, seconds)``; always ``gate.leave(w)``
    in a ``finally`` (granted or cancelled), which hands the head position on.
    ``kick()`` wakes the head early so it recomputes its deadline (the rate changed).
    """

    __slots__ = ("_queue", "demand")

    def __init__(self) -> None:
        self._queue: OrderedDict[Waiter, None] = OrderedDict()
        self.demand = 0  # tokens wanted by all queued waiters together

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def join(self, n: int) -> Waiter:
        """Append a waiter for ``n`` tokens; it is the head at once if the queue was empty."""
        waiter = Waiter(n)
        if not self._queue:
            waiter.turn.set()
        self._queue[waiter] = None
        self.demand += n
        return waiter

    async def wait_turn(self, waiter: Waiter) -> None:
        """Wait until ``waiter`` is the head. Always a checkpoint."""
        await waiter.turn.wait()

    async def sleep_as_head(self, waiter: Waiter, seconds: float) -> None:
        """Sleep ``seconds`` of trio time, or less if ``kick()`` is called meanwhile.

        This is ``trio.sleep_until(deadline)`` written out, so that the scope can be cancelled
        from outside: a woken head simply recomputes its deadline.
        """
        with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
            waiter.scope = scope
            try:
                await trio.sleep_forever()
            finally:
                waiter.scope = None

    def kick(self) -> None:
        """Wake the head from its timed sleep (it will recompute its deadline)."""
        if self._queue:
            head = next(iter(self._queue))
            if head.scope is not None:
                head.scope.cancel()

    def leave(self, waiter: Waiter) -> None:
        """Remove ``waiter`` (granted or cancelled); if it was the head, wake the next one."""
        was_head = next(iter(self._queue)) is waiter
        del self._queue[waiter]
        self.demand -= waiter.n
        if was_head and self._queue:
            next(iter(self._queue)).turn.set()
