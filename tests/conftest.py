"""Test session fixtures: one throwaway Postgres database per test session, migrated once.

Tests talk to a real server: DATABASE_URL if set (its database name is replaced by a throwaway
one), else 127.0.0.1:5432 as `postgres`. The database is dropped at the end of the session.
Each test owns its data through unique names (`uniq`), so tests never need a fresh database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

for _var in list(os.environ):
    if _var.startswith(("BROADCASTER_", "WHATSAPP_", "SLACK_")):
        del os.environ[_var]

from broadcaster.db import Database, _asyncio_loop, ensure_database, open_db  # noqa: E402
from broadcaster.migrate import migrate  # noqa: E402


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    return url.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def db_url() -> Iterator[str]:
    """URL of this session's migrated throwaway database."""
    name = f"bc_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    url = f"{_server_url()}/{name}"

    async def setup() -> None:
        await ensure_database(url)
        async with open_db(url, max_size=2) as db:
            await migrate(db)

    trio.run(setup)
    os.environ["DATABASE_URL"] = url
    yield url

    async def teardown() -> None:
        async with open_db(f"{_server_url()}/postgres", max_size=1) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    trio.run(teardown)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A pool on the session database, inside this test's asyncio bridge loop."""
    async with _asyncio_loop(), open_db(db_url, max_size=8) as database:
        yield database


@pytest.fixture
def uniq() -> str:
    """A short unique suffix: tests name their workspaces/campaigns with it to own their data."""
    return uuid.uuid4().hex[:8]
