"""Group commit of raw bodies, against a fake database (no sockets, virtual clock)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from broadcaster.errors import DatabaseError
from broadcaster.inbound.ingest import GroupCommitter


class SlowDb:
    """Records each INSERT's bodies; every INSERT takes `latency_s` of (virtual) time."""

    def __init__(self, latency_s: float = 0.01, fail: bool = False) -> None:
        self.latency_s = latency_s
        self.fail = fail
        self.batches: list[list[bytes]] = []

    async def execute(self, sql: str, *args: Any) -> str:
        assert sql.startswith("INSERT INTO webhook_events")
        await trio.sleep(self.latency_s)
        if self.fail:
            raise DatabaseError("database error: disk full")
        self.batches.append(list(args[0]))
        return f"INSERT 0 {len(args[0])}"


async def test_many_concurrent_requests_share_few_inserts(autojump_clock: trio.abc.Clock) -> None:
    db = SlowDb()
    commits: list[int] = []
    committer = GroupCommitter(db, on_commit=commits.append, writers=2)  # type: ignore[arg-type]
    done: list[bytes] = []

    async def request(i: int) -> None:
        body = f"body-{i}".encode()
        await committer.store(body)
        done.append(body)
        # by the time store() returns, the body is in a committed INSERT
        assert any(body in batch for batch in db.batches)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for i in range(1000):
                clients.start_soon(request, i)
        nursery.cancel_scope.cancel()
    assert sorted(done) == sorted(f"body-{i}".encode() for i in range(1000))
    assert sum(len(b) for b in db.batches) == 1000
    assert len(db.batches) <= 10  # 1,000 requests, a handful of commits
    stats = committer.statistics()
    assert (stats.stored, stats.commits, stats.failed, stats.queued) == (1000, len(db.batches), 0, 0)
    assert commits == [len(b) for b in db.batches]


async def test_batches_respect_the_size_limit(autojump_clock: trio.abc.Clock) -> None:
    db = SlowDb()
    committer = GroupCommitter(db, max_batch=7, writers=1)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for i in range(50):
                clients.start_soon(committer.store, b"x%d" % i)
        nursery.cancel_scope.cancel()
    assert max(len(b) for b in db.batches) == 7
    assert sum(len(b) for b in db.batches) == 50


async def test_a_failed_insert_fails_every_request_in_it(autojump_clock: trio.abc.Clock) -> None:
    db = SlowDb(fail=True)
    committer = GroupCommitter(db)  # type: ignore[arg-type]
    errors: list[str] = []

    async def request() -> None:
        with pytest.raises(DatabaseError, match=r"^webhook body not stored: database error: disk full$"):
            await committer.store(b"{}")
        errors.append("x")

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for _ in range(20):
                clients.start_soon(request)
        nursery.cancel_scope.cancel()
    assert len(errors) == 20
    assert committer.statistics().failed == 20


async def test_store_before_run_is_a_clear_error() -> None:
    committer = GroupCommitter(SlowDb())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"^GroupCommitter\.store\(\) called before run\(\) started$"):
        await committer.store(b"{}")


async def test_a_full_queue_makes_store_wait(autojump_clock: trio.abc.Clock) -> None:
    db = SlowDb(latency_s=10.0)
    committer = GroupCommitter(db, queue_size=2, max_batch=1, writers=1)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(4):  # one in the writer, two queued, the fourth waits
            nursery.start_soon(committer.store, b"%d" % i)
        await trio.testing.wait_all_tasks_blocked()
        assert committer.statistics().queued == 2
        nursery.cancel_scope.cancel()
