"""The database adapter: the only module that imports asyncpg.

asyncpg is asyncio-only; it runs under trio through trio-asyncio. Every driver call made here is
wrapped with `aio_as_trio` (an unwrapped call corrupts a pooled connection), every release of a
pooled connection is shielded (a cancelled release leaks the connection and hangs `close()`), and
every asyncpg/OS error is translated into `DatabaseError` with the driver error chained.

Callers get plain `Record` rows (mapping-like: `row["col"]`) and never see asyncpg itself.

Cancellation: a call cancelled mid-flight leaves nothing half-applied outside a transaction; a
cancelled transaction is rolled back when its connection is released (pool reset).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from broadcaster.errors import DatabaseError

Record = asyncpg.Record

RELEASE_TIMEOUT_S = 10.0  # a release that takes longer than this is abandoned, not awaited forever

# InternalClientError: asyncpg's protocol state broken by a dropped connection (seen on a restart)
_TRANSLATE = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, ConnectionError)


def _translate(exc: BaseException, sql: str | None = None) -> DatabaseError:
    where = f" while running: {sql.strip().splitlines()[0][:80]}" if sql else ""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(f"duplicate key: {exc.detail or exc}{where}")
    if isinstance(exc, asyncpg.UndefinedTableError):
        return DatabaseError(f"database error: {exc}{where} — is this database migrated? "
                             "Run `broadcaster db migrate`")
    if isinstance(exc, OSError | ConnectionError | asyncpg.CannotConnectNowError):
        return DatabaseUnavailable(f"database unreachable: {exc}{where}")
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError | asyncpg.InternalClientError
                  | asyncpg.AdminShutdownError | asyncpg.CannotConnectNowError):
        return DatabaseUnavailable(f"database connection lost: {exc}{where}")
    return DatabaseError(f"database error: {exc}{where}")


def _terminate(raw: Any) -> None:
    """Close a pooled connection whose release failed. A release that failed part-way (the server
    went away meanwhile) has already handed the connection back, and the pool closes it itself:
    asyncpg then refuses terminate() with InterfaceError, which means there is nothing left to do."""
    with contextlib.suppress(asyncpg.InterfaceError):
        raw.terminate()


class DatabaseUnavailable(DatabaseError):
    """Postgres cannot be reached or the connection dropped; retrying later may work."""


class UniqueViolation(DatabaseError):
    """A unique constraint rejected the write."""


class _Executor:
    """The call surface shared by a pooled `Database`, a held `Connection` and a transaction."""

    async def _run(self, name: str, sql: str | None, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any, timeout: float | None = None) -> str:
        """Run a statement; returns the status tag (e.g. 'UPDATE 12')."""
        return await self._run("execute", sql, *args, timeout=timeout)

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[Record]:
        return await self._run("fetch", sql, *args, timeout=timeout)

    async def fetchrow(self, sql: str, *args: Any, timeout: float | None = None) -> Record | None:
        return await self._run("fetchrow", sql, *args, timeout=timeout)

    async def fetchval(self, sql: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("fetchval", sql, *args, timeout=timeout)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        """One statement, many argument tuples, one pipelined round trip."""
        await self._run("executemany", sql, list(args))

    async def copy_records(self, table: str, records: Iterable[Sequence[Any]],
                           columns: Sequence[str], schema_name: str | None = None) -> str:
        """COPY rows into `table` (binary protocol): the fast path for bulk loads."""
        return await self._run("copy_records_to_table", None, table, records=list(records),
                               columns=list(columns), schema_name=schema_name)


class Connection(_Executor):
    """One held connection (from `Database.acquire()`); use it for transactions and COPY."""

    def __init__(self, raw: asyncpg.Connection) -> None:
        self._raw = raw

    async def _run(self, name: str, sql: str | None, *args: Any, **kw: Any) -> Any:
        fn = getattr(self._raw, name)
        call_args = (sql, *args) if sql is not None else args
        try:
            return await aio_as_trio(fn)(*call_args, **kw)
        except _TRANSLATE as exc:
            raise _translate(exc, sql) from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """BEGIN … COMMIT; ROLLBACK on any exception (or cancellation) inside the block.

        Cancellation: BEGIN is shielded (a BEGIN cancelled in flight would leave the pooled
        connection mid-transaction); a cancelled block is rolled back under a shield.
        """
        with trio.CancelScope(shield=True):
            await self.execute("BEGIN")
        try:
            yield self
        except BaseException:
            with trio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
                with contextlib.suppress(DatabaseError):
                    await self.execute("ROLLBACK")
            raise
        else:
            await self.execute("COMMIT")


@dataclass(frozen=True)
class PoolStatistics:
    size: int
    idle: int
    max_size: int


class Database(_Executor):
    """A pool of Postgres connections usable from trio. Open it with `open_db()`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

    async def _run(self, name: str, sql: str | None, *args: Any, **kw: Any) -> Any:
        async with self.acquire() as conn:
            return await conn._run(name, sql, *args, **kw)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """Hold one pooled connection for the block.

        Cancellation: the release runs shielded with its own deadline, so a cancelled caller never
        leaks the connection (an unshielded release would be cancelled too and hang pool.close()).
        """
        try:
            raw = await aio_as_trio(self._pool.acquire)()
        except _TRANSLATE as exc:
            raise _translate(exc) from exc
        try:
            yield Connection(raw)
        finally:
            with trio.move_on_after(RELEASE_TIMEOUT_S, shield=True) as scope:
                try:
                    await aio_as_trio(self._pool.release)(raw)
                except _TRANSLATE:
                    _terminate(raw)
            if scope.cancelled_caught:
                _terminate(raw)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A connection held for one transaction."""
        async with self.acquire() as conn, conn.transaction():
            yield conn

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(size=self._pool.get_size(), idle=self._pool.get_idle_size(),
                              max_size=self._pool.get_max_size())


def default_dsn() -> str:
    """DATABASE_URL, else the local server on 127.0.0.1:5432 as `postgres`."""
    return os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/broadcaster"


@contextlib.asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[None]:
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    try:
        async with trio_asyncio.open_loop():
            yield
    except BaseExceptionGroup as group:  # open_loop's nurseries wrap a lone error: unwrap it
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if inner is group:
            raise
        raise inner from inner.__cause__


@contextlib.asynccontextmanager
async def open_db(dsn: str | None = None, *, min_size: int = 1, max_size: int = 10,
                  command_timeout: float = 60.0,
                  server_settings: dict[str, str] | None = None) -> AsyncIterator[Database]:
    """Open a connection pool for the block (opening the asyncio bridge loop if needed).

    Raises:
        DatabaseUnavailable: the server cannot be reached (the message names host/port, no password).
    """
    dsn = dsn or default_dsn()
    async with _asyncio_loop():
        try:
            pool = await aio_as_trio(asyncpg.create_pool)(
                dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout,
                statement_cache_size=256, server_settings=server_settings,
            )
        except asyncpg.InvalidCatalogNameError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to Postgres at {redact_dsn(dsn)}: {exc}. "
                "`broadcaster db migrate` creates it (or fix DATABASE_URL)"
            ) from exc
        except _TRANSLATE as exc:
            raise DatabaseUnavailable(
                f"cannot connect to Postgres at {redact_dsn(dsn)}: {exc}. "
                "Set DATABASE_URL or start the server "
                "(pg_ctlcluster --skip-systemctl-redirect <ver> main start)"
            ) from exc
        db = Database(pool, dsn)
        try:
            yield db
        finally:
            with trio.move_on_after(RELEASE_TIMEOUT_S, shield=True) as scope:
                with contextlib.suppress(*_TRANSLATE):
                    await aio_as_trio(pool.close)()
            if scope.cancelled_caught:
                pool.terminate()


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


async def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` if it does not exist (connecting to `postgres`).

    Returns True when it was created.
    """
    base, _, name = dsn.rpartition("/")
    name = name.split("?", 1)[0]
    admin = f"{base}/postgres"
    async with _asyncio_loop():
        try:
            conn = await aio_as_trio(asyncpg.connect)(admin)
        except _TRANSLATE as exc:
            raise DatabaseUnavailable(f"cannot connect to Postgres at {redact_dsn(admin)}: {exc}") from exc
        try:
            exists = await aio_as_trio(conn.fetchval)(
                "SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists:
                return False
            try:
                await aio_as_trio(conn.execute)(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                return False
            return True
        finally:
            with trio.CancelScope(shield=True):
                await aio_as_trio(conn.close)()
