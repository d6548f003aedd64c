"""The loop closed: a campaign sent to the sandbox, whose signed status webhooks (batched,
duplicated, reordered) come back to the receiver and settle every ledger row; an injected
inbound message reaches the inbox hook."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from broadcaster.db import Database
from broadcaster.inbound import Hooks
from broadcaster.ledger import LedgerStore, Outcome
from broadcaster.sandbox import SandboxConfig, SandboxThread
from tests.conftest import SANDBOX_NUMBER
from tests.integration.webhook_support import (
    SECRET,
    dead_letters_after,
    last_event_id,
    ledger_rows,
    make_ledger,
    running_receiver,
)


async def settled(rx: Any, db: Database, campaign_id: int) -> None:
    """Wait (pass by pass of the apply worker) until no row of the campaign is still on its way."""
    with trio.fail_after(60):
        while await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1"
                                " AND state NOT IN ('delivered', 'read', 'failed')", campaign_id):
            await rx.service.worker.wait_pass()


async def test_sandbox_webhooks_settle_sends_whatever_the_order_of_responses(db: Database, uniq: str) -> None:
    """Sends posted straight to the sandbox; their send responses are written to the ledger
    immediately, late (after the webhooks), or never (only the callback data says who it was)."""
    seeded = await make_ledger(db, uniq, 90, state="claimed", with_wamid=False, lease_owner="e2e")
    rnd = random.Random(uniq)
    plan = {r.id: rnd.choice(["now", "late", "never"]) for r in seeded.rows}
    undeliverable = {r.wa_id for r in seeded.rows if r.wa_id.endswith("3")}
    first_event = await last_event_id(db)
    async with running_receiver(db) as rx:
        config = SandboxConfig(mps=0, token="t", webhook_url=f"{rx.url}/webhook", app_secret=SECRET,
                               enforce_service_window=False, undeliverable_suffixes=("3",), read_rate=0.5,
                               webhook_batch_size=7, webhook_duplicate_rate=0.3, webhook_reorder=True, seed=3)
        sandbox = SandboxThread(config)
        await trio.to_thread.run_sync(sandbox.start)
        try:
            late: list[Outcome] = []
            async with httpx.AsyncClient(headers={"authorization": "Bearer t"}) as client:
                for r in seeded.rows:
                    payload = {"messaging_product": "whatsapp", "to": r.wa_id, "type": "text",
                               "text": {"body": "नमस्ते 👋"}}
                    if plan[r.id] != "late":  # a late row's webhooks can only match by wamid
                        payload["biz_opaque_callback_data"] = f"{seeded.campaign_id}:{r.id}"
                    resp = await client.post(f"{sandbox.base_url}/{SANDBOX_NUMBER}/messages", json=payload)
                    assert resp.status_code == 200, resp.text
                    outcome = Outcome(r.id, "accepted", wamid=resp.json()["messages"][0]["id"])
                    if plan[r.id] == "now":
                        await LedgerStore(db).record_results([outcome], owner="e2e")
                    elif plan[r.id] == "late":
                        late.append(outcome)
            await rx.applied()
            await LedgerStore(db).record_results(late, owner="e2e")
            await settled(rx, db, seeded.campaign_id)
            webhook_stats = (await trio.to_thread.run_sync(sandbox.stats))["webhooks"]
        finally:
            await trio.to_thread.run_sync(sandbox.stop)
        stats = rx.service.statistics()
    got = await ledger_rows(db, seeded.campaign_id)
    for r in seeded.rows:
        row = got[r.id]
        assert row["wamid"] is not None, (plan[r.id], row)
        if r.wa_id in undeliverable:
            assert (row["state"], row["error_code"]) == ("failed", 131026), (plan[r.id], row)
        else:
            assert row["state"] in ("delivered", "read") and row["delivered_at"] is not None, (plan[r.id], row)
    assert webhook_stats["failed"] == 0 and webhook_stats["dropped"] == 0
    assert stats.bad_signature == 0 and await dead_letters_after(db, first_event) == 0
    assert stats.apply.statuses > stats.apply.new_statuses  # duplicates came, and were no-ops
    assert stats.apply.unmatched > 0  # the late rows' statuses waited for their wamid


async def test_sandbox_status_webhooks_settle_a_campaign(db: Database, db_url: str, uniq: str,
                                                         phone_factory: Any,
                                                         template_docs: list[dict]) -> None:
    pytest.importorskip("broadcaster.segment_store", reason="campaign factories need segment_store")
    from tests.integration.factories import campaign_for, run_campaign, settings_for

    phones = [phone_factory() for _ in range(120)]
    undeliverable = {p for p in phones if p.endswith("3")}
    seen_messages: list[dict[str, Any]] = []

    async def inbox(db_: Database, value: dict[str, Any]) -> None:
        seen_messages.extend(value["messages"])

    first_event = await last_event_id(db)
    async with running_receiver(db, hooks=Hooks(messages=inbox)) as rx:
        config = SandboxConfig(
            templates=template_docs, mps=0, phone_number_id=SANDBOX_NUMBER, token="test-token",
            webhook_url=f"{rx.url}/webhook", app_secret=SECRET, undeliverable_suffixes=("3",),
            read_rate=0.5, webhook_batch_size=25, webhook_duplicate_rate=0.2, webhook_reorder=True,
            seed=7)
        sandbox = SandboxThread(config)
        await trio.to_thread.run_sync(sandbox.start)
        try:
            campaign = await campaign_for(db, uniq, phones)
            await run_campaign(db, settings_for(db_url, sandbox), campaign)
            await settled(rx, db, campaign.id)
            reply = await trio.to_thread.run_sync(partial(
                sandbox.inbound, **{"from": phones[0], "text": "कब है? 🎉", "name": "Asha"}))
            assert reply["webhook_status"] == 200
            await rx.applied()
            webhook_stats = (await trio.to_thread.run_sync(sandbox.stats))["webhooks"]
        finally:
            await trio.to_thread.run_sync(sandbox.stop)

    rows = await db.fetch("SELECT wa_id, state, error_code, delivered_at, accepted_at, unknown_resolution"
                          " FROM ledger WHERE campaign_id = $1", campaign.id)
    assert len(rows) == 120
    for r in rows:
        if r["wa_id"] in undeliverable:
            assert (r["state"], r["error_code"]) == ("failed", 131026), dict(r)
        else:
            assert r["state"] in ("delivered", "read") and r["delivered_at"] is not None, dict(r)
    states = {r["state"] for r in rows if r["wa_id"] not in undeliverable}
    assert states == {"delivered", "read"}  # read_rate 0.5 over ~100 recipients
    assert webhook_stats["failed"] == 0 and webhook_stats["dropped"] == 0
    stats = rx.service.statistics()
    assert stats.bad_signature == 0 and await dead_letters_after(db, first_event) == 0
    assert stats.apply.statuses > stats.apply.new_statuses  # duplicates came, and were no-ops
    assert [m["text"]["body"] for m in seen_messages] == ["कब है? 🎉"]
