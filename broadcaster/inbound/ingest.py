"""Durable intake of raw webhook bodies with group commit: many requests, one INSERT.

    handler ─store(body)─▶ bounded channel ─▶ writer task: take all queued (≤ max_batch) ─▶
        INSERT … SELECT FROM unnest($1::bytea[]) ─commit─▶ wake every waiting handler + on_commit(n)

Guarantees:
- `store()` returns only after the body is committed (synchronous_commit as the server has it,
  on by default): the caller may answer 200. It raises `DatabaseError` when the INSERT failed:
  the caller answers 5xx and Meta delivers again.
- While one INSERT is in flight the next requests queue up and go in the next one, so the
  number of commits per second stays small however many requests arrive.
- The queue is bounded (`queue_size`): when it is full, `store()` waits (backpressure reaches
  the HTTP client) instead of growing memory.

Cancellation: a `store()` cancelled while its batch is being written may or may not have been
stored; the client got no answer and will deliver again (duplicates are no-ops downstream).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import trio

from broadcaster.db import Database
from broadcaster.errors import DatabaseError

__all__ = ["GroupCommitter", "IngestStatistics"]

INSERT_SQL = "INSERT INTO webhook_events (body) SELECT b FROM unnest($1::bytea[]) AS b"

MAX_BATCH = 512  # bodies per INSERT
MAX_BATCH_BYTES = 32 * 1024 * 1024  # bytes per INSERT (bodies are at most 4 MB each)
QUEUE_SIZE = 4096  # bodies waiting for a writer before store() blocks
WRITERS = 2  # INSERTs in flight at once: one commits while the next batch gathers


@dataclass(slots=True)
class _Slot:
    body: bytes
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class IngestStatistics:
    stored: int  # bodies committed
    commits: int  # INSERT statements committed
    failed: int  # bodies whose INSERT failed (their requests were answered 5xx)
    queued: int  # bodies waiting now


class GroupCommitter:
    """Stores raw bodies in `webhook_events`, many per INSERT. Start `run` in a nursery first."""

    def __init__(self, db: Database, *, on_commit: Callable[[int], None] | None = None,
                 max_batch: int = MAX_BATCH, max_batch_bytes: int = MAX_BATCH_BYTES,
                 queue_size: int = QUEUE_SIZE, writers: int = WRITERS) -> None:
        if max_batch < 1 or writers < 1 or queue_size < 1:
            raise ValueError("GroupCommitter: max_batch, writers and queue_size must be at least 1")
        self._db = db
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._writers = writers
        self._send, self._receive = trio.open_memory_channel[_Slot](queue_size)
        self._running = False
        self._stored = self._commits = self._failed = 0

    def statistics(self) -> IngestStatistics:
        return IngestStatistics(self._stored, self._commits, self._failed,
                                self._send.statistics().current_buffer_used)

    async def store(self, body: bytes) -> None:
        """Store one body durably; returns once it is committed.

        Raises:
            DatabaseError: the INSERT failed (nothing of this body was stored).
            RuntimeError: `run` is not running.
        """
        if not self._running:
            raise RuntimeError("GroupCommitter.store() called before run() started")
        slot = _Slot(body)
        await self._send.send(slot)
        await slot.done.wait()
        if slot.error is not None:
            raise DatabaseError(f"webhook body not stored: {slot.error}") from slot.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Run the writer tasks; never returns unless cancelled.

        Cancellation: queued bodies are abandoned (their requests are cancelled with the server).
        """
        async with trio.open_nursery() as nursery:
            for _ in range(self._writers):
                nursery.start_soon(self._writer, self._receive.clone())
            self._running = True
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _writer(self, receive: trio.MemoryReceiveChannel[_Slot]) -> None:
        async for first in receive:
            batch = [first]
            size = len(first.body)
            while len(batch) < self._max_batch and size < self._max_bytes:
                try:
                    slot = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(slot)
                size += len(slot.body)
            try:
                await self._db.execute(INSERT_SQL, [s.body for s in batch])
            except DatabaseError as exc:
                self._failed += len(batch)
                for s in batch:
                    s.error = exc
                    s.done.set()
                continue
            self._stored += len(batch)
            self._commits += 1
            for s in batch:
                s.done.set()
            if self._on_commit is not None:
                self._on_commit(len(batch))
