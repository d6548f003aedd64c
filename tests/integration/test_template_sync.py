"""`templates sync` against the sandbox's Graph endpoint: every page is followed, (name, language)
is the key, and a status change upserts in place."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.sandbox import SandboxConfig, SandboxThread
from broadcaster.template_store import fetch_remote_templates, list_templates, sync_templates

WABA = "555000111"


@pytest.fixture
def graph(template_docs: list[dict]) -> Iterator[SandboxThread]:
    with SandboxThread(SandboxConfig(templates=template_docs, waba_id=WABA)) as sandbox:
        yield sandbox


async def test_sync_follows_paging_and_upserts(db: Database, db_url: str, graph: SandboxThread,
                                               template_docs: list[dict]) -> None:
    settings = Settings(database_url=db_url, whatsapp_api_url=graph.base_url, whatsapp_token="t",
                        whatsapp_waba_id=WABA)
    # 3 per page: all 20 arrive only by following paging.next through 7 pages
    fetched = await fetch_remote_templates(settings, page_limit=3)
    assert [(t.name, t.language) for t in fetched] == [(d["name"], d["language"]) for d in template_docs]

    await db.execute("UPDATE templates SET status = 'PAUSED' WHERE name = 'daily_campaign_invite' AND language = 'hi'")
    summary = await sync_templates(db, settings)
    assert summary.read == 20 and summary.by_status["APPROVED"] == 16
    registry = {(t.name, t.language): t.status for t in await list_templates(db)}
    assert registry[("daily_campaign_invite", "hi")] == "APPROVED", "the registry follows WhatsApp"
    assert registry[("weekly_earnings", "hi")] == "PAUSED"


async def test_sync_without_waba_id_names_the_variable(db_url: str, graph: SandboxThread) -> None:
    from broadcaster.errors import ConfigError

    settings = Settings(database_url=db_url, whatsapp_api_url=graph.base_url)
    with pytest.raises(ConfigError, match=r"^missing required environment variable\(s\): WHATSAPP_WABA_ID$"):
        await fetch_remote_templates(settings)
