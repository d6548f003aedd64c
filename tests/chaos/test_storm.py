"""Provider storm under a running campaign: 10% 5xx (131000/131016), 2% connections reset after
the request was accepted, 1% answers that never come, a 130429 burst — and the status webhooks of
what was accepted, into the inbound receiver. Every deliverable recipient is accepted exactly once,
unknown outcomes are settled by webhooks, attempts stay bounded. Slow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.campaigns import launch
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.inbound import WEBHOOK_PATH, serve_inbound
from broadcaster.ledger import LedgerStore
from broadcaster.sandbox import SandboxConfig, SandboxThread
from tests.integration.factories import campaign_for, settings_for

pytestmark = pytest.mark.slow

SECRET = "storm-secret"


@pytest.fixture
def stormy(template_docs: list[dict]) -> Iterator[SandboxThread]:
    with SandboxThread(SandboxConfig(templates=template_docs, mps=0, seed=11, app_secret=SECRET, stall_s=3.0,
                                     webhook_batch_size=100, read_rate=0.0)) as sandbox:
        yield sandbox


async def test_provider_storm_every_recipient_once_unknowns_settled(
        db: Database, db_url: str, stormy: SandboxThread, uniq: str, phone_factory) -> None:
    n = 2000
    phones = [phone_factory() for _ in range(n)]
    campaign = await campaign_for(db, uniq, phones)
    settings = settings_for(db_url, stormy, whatsapp_app_secret=SECRET, whatsapp_verify_token="v")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_inbound, db, settings, "127.0.0.1", 0)
        await trio.to_thread.run_sync(lambda: stormy.configure(webhook_url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}"))
        await trio.to_thread.run_sync(lambda: stormy.set_faults(
            error_rate={"131000": 0.07, "131016": 0.03}, reset_rate=0.02, timeout_rate=0.01, throttle_next=30))
        await launch(db, campaign.name)
        runner = CampaignRunner(db, settings, RunOptions(
            dispatch=DispatchConfig(lanes=32, backoff_base_s=0.1, throttle_defer_s=0.1, max_attempts=8),
            mps_override=2000, only_campaign=campaign.id, read_timeout_s=1.0))
        with trio.fail_after(240):
            await runner.run()  # returns when nothing is pending/claimed/unknown: completed
        nursery.cancel_scope.cancel()

    counts = await LedgerStore(db).counts(campaign.id)
    seen = await trio.to_thread.run_sync(stormy.recipients)
    stats = await trio.to_thread.run_sync(stormy.stats)
    dupes = sum(1 for p in phones if seen.get(p, 0) > 1)
    lost = sum(1 for p in phones if seen.get(p, 0) == 0)
    settled = {r["unknown_resolution"]: r["n"] for r in await db.fetch(
        "SELECT unknown_resolution, count(*)::int AS n FROM ledger WHERE campaign_id = $1"
        " AND unknown_resolution IS NOT NULL GROUP BY 1", campaign.id)}
    worst = await db.fetchval("SELECT max(attempts) FROM ledger WHERE campaign_id = $1", campaign.id)
    print(f"\nstorm: recipients={n} states={counts.by_state} duplicates at provider={dupes} lost={lost} "
          f"unknown settled={settled} rejected={stats['rejected_by_code']} max attempts={worst}")
    assert dupes == 0 and lost == 0
    assert counts["failed"] == 0 and counts["unknown"] == 0 and counts["pending"] == 0, counts.by_state
    assert settled.get("webhook", 0) > 0, "outcomes lost with the connection were settled by status webhooks"
    assert worst <= 8
