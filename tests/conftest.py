"""Test session fixtures: one throwaway Postgres database per test session, migrated once.

Tests talk to a real server: DATABASE_URL if set (its database name is replaced by a throwaway
one), else 127.0.0.1:5432 as `postgres`. The database is dropped at the end of the session.
Each test owns its data through unique names (`uniq`), so tests never need a fresh database.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
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
    """A short unique suffix: tests name their workspaces/campaigns with it to own their data.

    Starts with a letter, so no name carries 8 digits in a row (metrics redact such label values
    as phone-number-like).
    """
    return "u" + uuid.uuid4().hex[:7]


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SANDBOX_NUMBER = "106540352242922"


@pytest.fixture(scope="session")
def template_docs() -> list[dict]:
    """The Graph `message_templates` entries shipped in examples/ (20 templates, all statuses)."""
    return orjson.loads((EXAMPLES / "message_templates.json").read_bytes())["data"]


@pytest.fixture(scope="session")
def sandbox(template_docs: list[dict]) -> Iterator[object]:
    """The built-in Cloud API sandbox on 127.0.0.1, one per test session, in its own thread.

    Unlimited mps, validating template sends against the shipped templates. Tests use their own
    recipient numbers (`phone_factory`) and read per-recipient counts, so they can share it.
    """
    from broadcaster.sandbox import SandboxConfig, SandboxThread

    with SandboxThread(SandboxConfig(templates=template_docs, mps=0, phone_number_id=SANDBOX_NUMBER,
                                     token="test-token")) as thread:
        yield thread


@pytest.fixture
def phone_factory() -> Iterator[object]:
    """Unique, valid Indian mobile numbers in WhatsApp digit form (91 + 10 digits)."""
    prefix = f"9{random.randint(10, 99)}{random.randint(100, 999)}"
    counter = iter(range(10_000))

    def make() -> str:
        return f"91{prefix}{next(counter):04d}0"[:12]

    yield make
