"""A real campaign end to end: Postgres ledger, httpcore lanes, the sandbox over real HTTP."""

from __future__ import annotations

import random

import httpx
import orjson
import pytest
import trio

from broadcaster import campaigns as camp
from broadcaster.campaigns import PreflightFailed, get_campaign
from broadcaster.db import Database, open_db
from broadcaster.ledger import LedgerStore
from broadcaster.report import campaign_report
from tests.integration.factories import add_contacts, campaign_for, run_campaign, settings_for


async def sandbox_counts(sandbox: object, phones: list[str]) -> dict[str, int]:
    """Accepted requests per recipient, as counted by the sandbox."""
    async with httpx.AsyncClient() as client:
        resp = await client.get(sandbox.base_url.rsplit("/", 1)[0] + "/_sandbox/recipients")  # type: ignore[attr-defined]
    recipients = resp.json()
    return {p: recipients.get(p, 0) for p in phones}


async def test_campaign_of_300_is_accepted_once_each(db: Database, db_url: str, sandbox: object,
                                                     uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(300)]
    campaign = await campaign_for(db, uniq, phones)
    await run_campaign(db, settings_for(db_url, sandbox), campaign)

    counts = await LedgerStore(db).counts(campaign.id)
    assert counts.audience == 300
    assert counts["accepted"] == 300, counts.by_state
    assert (await get_campaign(db, campaign.name)).state == "completed"
    per_recipient = await sandbox_counts(sandbox, phones)
    assert set(per_recipient.values()) == {1}, "the sandbox must see exactly one request per recipient"
    wamids = await db.fetchval("SELECT count(DISTINCT wamid) FROM ledger WHERE campaign_id = $1", campaign.id)
    assert wamids == 300


async def test_report_counts_partition_the_audience(db: Database, db_url: str, sandbox: object,
                                                    uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(40)]
    campaign = await campaign_for(db, uniq, phones[:30])
    # ten more contacts who opted out of marketing: skipped at freeze, never sent
    await add_contacts(db, f"ws_{uniq}", phones[30:], opted_in=False)
    await run_campaign(db, settings_for(db_url, sandbox), campaign)

    report = await campaign_report(db, campaign.name)
    assert report["audience"] == 40
    assert report["accepted"] == 30
    assert report["skipped_by_reason"] == {"opted_out": 10}
    states = ("pending", "claimed", "unknown", "accepted", "sent", "delivered", "read", "failed", "skipped")
    assert sum(report[s] for s in states) == report["audience"]
    assert set((await sandbox_counts(sandbox, phones[30:])).values()) == {0}
    orjson.dumps(report)  # JSON-ready


async def test_payload_carries_callback_data_and_rendered_values(db: Database, db_url: str, sandbox: object,
                                                                uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(3)]
    campaign = await campaign_for(db, uniq, phones)
    await run_campaign(db, settings_for(db_url, sandbox), campaign)
    base = sandbox.base_url.rsplit("/", 1)[0]  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as client:
        sent = (await client.get(f"{base}/_sandbox/messages", params={"limit": 2000})).json()
    ours = [m for m in sent if m.get("to", "").lstrip("+") in phones]
    assert len(ours) == 3
    rows = {r["wa_id"]: r["id"] for r in await db.fetch(
        "SELECT id, wa_id FROM ledger WHERE campaign_id = $1", campaign.id)}
    for msg in ours:
        wa_id = msg["to"].lstrip("+")
        assert msg["biz_opaque_callback_data"] == f"{campaign.id}:{rows[wa_id]}"
        body = next(c for c in msg["template"]["components"] if c["type"] == "body")
        assert [p["text"] for p in body["parameters"]] == [f"Creator {wa_id[-4:]}", "Entertainment",
                                                          "#MonsoonMasti", "9 PM"]
        assert msg["template"]["language"] == {"code": "hi"}


async def test_paused_template_refuses_to_create(db: Database, uniq: str, phone_factory) -> None:
    with pytest.raises(PreflightFailed, match=r"^campaign 'camp_\w+' cannot launch, pre-flight found 1 problem"):
        await campaign_for(db, uniq, [phone_factory()], template="weekly_earnings",
                           variables={"1": "contact.name", "2": "100"})


async def test_a_misspelt_contact_field_is_refused_with_a_suggestion(db: Database, uniq: str,
                                                                     phone_factory) -> None:
    """contact.nmae would render empty and skip the whole audience: pre-flight names it."""
    variables = {"1": "contact.nmae", "2": "contact.genre_label", "3": "#x", "4": "9 PM",
                 "button.0": "contact.external_id"}
    with pytest.raises(PreflightFailed) as info:
        await campaign_for(db, uniq, [phone_factory()], variables=variables)
    [problem] = info.value.problems
    assert problem.startswith("variable `1`: contact.nmae is neither a contact field nor an attribute")
    assert "did you mean contact.name?" in problem
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE name = $1", f"camp_{uniq}") == 0


async def test_an_attribute_some_contacts_carry_is_a_valid_field_and_launch_rechecks_it(
        db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(2)]
    variables = {"1": "contact.handle", "2": "contact.genre_label", "3": "#x", "4": "9 PM",
                 "button.0": "contact.external_id"}
    ws = f"ws_{uniq}"
    await add_contacts(db, ws, phones)
    await db.execute("UPDATE contacts SET attributes = '{\"handle\": \"@asha\"}' WHERE workspace = $1"
                     " AND wa_id = $2", ws, phones[0])
    campaign = await campaign_for(db, uniq, [], variables=variables)  # the workspace has the attribute
    await db.execute("UPDATE contacts SET attributes = '{}' WHERE workspace = $1", ws)
    with pytest.raises(PreflightFailed, match="contact.handle is neither"):
        await camp.launch(db, campaign.name)
    assert (await get_campaign(db, campaign.name)).state == "draft"


def _many_phones(n: int) -> list[str]:
    prefix = f"917{random.randint(100, 999)}"
    return [f"{prefix}{i:06d}" for i in range(n)]


async def _last_analyze(db: Database):
    return await db.fetchval("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'ledger'")


async def test_a_large_freeze_refreshes_the_ledger_statistics_before_any_claim(db: Database, uniq: str) -> None:
    """Planned on statistics that know no pending rows, a claim sorts the whole campaign: a launch
    of at least ANALYZE_AFTER_ROWS rows analyzes the ledger in the launch transaction."""
    campaign = await campaign_for(db, uniq, _many_phones(camp.ANALYZE_AFTER_ROWS + 200))
    started = await db.fetchval("SELECT now()")
    result = await camp.launch(db, campaign.name)
    assert result.started_now and result.frozen_rows == camp.ANALYZE_AFTER_ROWS + 200
    analyzed = await _last_analyze(db)
    assert analyzed is not None and analyzed >= started
    plan = "\n".join(r[0] for r in await db.fetch(
        "EXPLAIN SELECT id FROM ledger WHERE campaign_id = ANY($1::int[]) AND state = 'pending'"
        " AND (retry_at IS NULL OR retry_at <= now()) ORDER BY campaign_id, id LIMIT 500 FOR UPDATE SKIP LOCKED",
        [campaign.id]))
    await camp.cancel(db, campaign.name)  # no other test's worker may send it
    assert "ledger_claimable_idx" in plan and "Sort" not in plan, plan


async def test_a_vacuum_holding_the_ledger_does_not_hold_up_a_launch(db: Database, db_url: str, uniq: str) -> None:
    """The statistics are best effort: with the table locked against ANALYZE (as a long vacuum
    does), the launch gives up on them after 2 s and the campaign runs."""
    campaign = await campaign_for(db, uniq, _many_phones(camp.ANALYZE_AFTER_ROWS + 10))
    before = await _last_analyze(db)
    async with open_db(db_url, max_size=1) as other, other.transaction() as holder:
        await holder.execute("LOCK TABLE ledger IN SHARE UPDATE EXCLUSIVE MODE")
        t0 = trio.current_time()
        result = await camp.launch(db, campaign.name)
        waited = trio.current_time() - t0
    running = (await get_campaign(db, campaign.name)).state
    pending = (await LedgerStore(db).counts(campaign.id))["pending"]
    await camp.cancel(db, campaign.name)  # no other test's worker may send it
    assert result.started_now and running == "running"
    assert pending == camp.ANALYZE_AFTER_ROWS + 10, "the audience is frozen all the same"
    assert 1.5 <= waited < 10, waited
    assert await _last_analyze(db) == before
