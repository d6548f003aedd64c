"""The DB adapter and migrations against a real Postgres."""

from __future__ import annotations

import pytest
import trio

from broadcaster.db import Database, DatabaseUnavailable, UniqueViolation, open_db
from broadcaster.migrate import available_migrations, migrate


async def test_migrate_twice_is_a_noop(db: Database) -> None:
    assert await migrate(db) == []
    versions = [r["version"] for r in await db.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in available_migrations()]


async def test_unique_violation_is_translated(db: Database, uniq: str) -> None:
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", f"ws_{uniq}")
    with pytest.raises(UniqueViolation, match=r"^duplicate key"):
        await db.execute("INSERT INTO workspaces (name) VALUES ($1)", f"ws_{uniq}")


async def test_transaction_rolls_back_on_error(db: Database, uniq: str) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO workspaces (name) VALUES ($1)", f"ws_{uniq}")
            raise RuntimeError("boom")
    assert await db.fetchval("SELECT count(*) FROM workspaces WHERE name = $1", f"ws_{uniq}") == 0


async def test_cancel_while_holding_connection_does_not_leak(db: Database) -> None:
    """A cancelled holder releases its connection: the pool is whole and closes promptly after."""
    with trio.move_on_after(0.05):
        async with db.acquire() as conn:
            await conn.execute("SELECT pg_sleep(5)")
    stats = db.statistics()
    assert stats.idle == stats.size
    assert await db.fetchval("SELECT 1") == 1


async def test_unreachable_server_names_the_fix() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"^cannot connect to Postgres at postgresql://nobody@127\.0\.0\.1:1/x"):
        async with open_db("postgresql://nobody:secret@127.0.0.1:1/x"):
            pass


async def test_terminating_a_connection_already_handed_back_is_a_no_op(db_url: str) -> None:
    """What a release that failed part-way leaves (seen when the cluster stopped under a worker):
    asyncpg refuses terminate() on the proxy; the pool must go on working."""
    import asyncpg
    from trio_asyncio import aio_as_trio

    from broadcaster.db import _terminate

    async with open_db(db_url, max_size=1) as small:
        raw = await aio_as_trio(small._pool.acquire)()
        await aio_as_trio(small._pool.release)(raw)
        with pytest.raises(asyncpg.InterfaceError):
            raw.terminate()
        _terminate(raw)
        assert await small.fetchval("SELECT 1") == 1
