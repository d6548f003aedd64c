"""Metrics against the real thing: a sandbox campaign scraped over HTTP, and the ledger gauges' SQL
against the real schema.

The campaign test needs the dispatcher to call `metrics.record_send` (wired by the lead); until
then it is an expected failure.
"""

from __future__ import annotations

import json

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from broadcaster import metrics
from broadcaster.db import Database
from tests.conftest import SANDBOX_NUMBER

TEMPLATE = "daily_campaign_invite"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of one /metrics text."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def failed_by_code(before: dict, after: dict) -> dict[int, int]:
    out: dict[int, int] = {}
    for (name, labels), value in after.items():
        lab = dict(labels)
        if (name == "broadcaster_send_errors_total" and lab.get("number") == SANDBOX_NUMBER
                and lab.get("outcome") == "permanent_error"):
            d = int(value - before.get((name, labels), 0.0))
            if d:
                out[int(lab["code"])] = d
    return out


async def test_scraped_counters_equal_the_ledger(db: Database, db_url: str, sandbox: object, uniq: str,
                                                 phone_factory) -> None:
    from tests.integration.factories import campaign_for, run_campaign, settings_for

    phones = [phone_factory() for _ in range(60)]
    campaign = await campaign_for(db, uniq, phones)
    server, thread = metrics.start_metrics_server(0)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    sandbox.set_faults(error_rate={"131026": 0.2}, slow_ms=2)  # type: ignore[attr-defined]
    try:
        before = samples(httpx.get(url, timeout=5).text)  # noqa: ASYNC210 - served by its own thread
        done = False
        scrapes_during = 0

        async def scrape_while_running() -> None:
            nonlocal scrapes_during
            async with httpx.AsyncClient(timeout=5) as client:
                while not done:
                    resp = await client.get(url)
                    assert resp.status_code == 200
                    assert metrics.unsafe_labels(resp.text) == []
                    if not done:
                        scrapes_during += 1
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(scrape_while_running)
            await run_campaign(db, settings_for(db_url, sandbox), campaign)
            done = True
        text = httpx.get(url, timeout=5).text  # noqa: ASYNC210
    finally:
        sandbox.set_faults()  # type: ignore[attr-defined]
        metrics.stop_metrics_server(server, thread)
    after = samples(text)
    assert scrapes_during >= 1, "no scrape completed while the campaign was sending"

    accepted = await db.fetchval(
        "SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state IN ('accepted', 'sent', 'delivered', 'read')",
        campaign.id)
    failed = {r["error_code"]: r["n"] for r in await db.fetch(
        "SELECT error_code, count(*) AS n FROM ledger WHERE campaign_id = $1 AND state = 'failed' GROUP BY 1",
        campaign.id)}
    assert accepted > 0 and failed, "the fault plan should leave both accepted and failed rows"
    assert accepted + sum(failed.values()) == len(phones)
    assert delta(before, after, "broadcaster_send_requests_total", number=SANDBOX_NUMBER, template=TEMPLATE,
                 outcome="accepted") == accepted
    assert failed_by_code(before, after) == failed
    assert delta(before, after, "broadcaster_send_requests_total", number=SANDBOX_NUMBER, template=TEMPLATE,
                 outcome="permanent_error") == sum(failed.values())

    # no label value looks like a phone number, and no recipient appears anywhere in the scrape
    assert metrics.unsafe_labels(text) == []
    assert not [p for p in phones if p in text]


async def test_campaign_gauges_come_from_the_ledger(db: Database, uniq: str) -> None:
    """refresh_campaign_gauges' one GROUP BY against the real schema: running campaigns only."""
    ws = f"ws_{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
    await db.execute(
        "INSERT INTO contacts (workspace, wa_id, marketing_opt_in) SELECT $1, '9170000' || lpad(g::text, 5, '0'), true"
        " FROM generate_series(1, 6) AS g", ws)
    await db.execute("INSERT INTO segments (name, workspace, filter) VALUES ($1, $2, $3::jsonb)",
                     f"seg_{uniq}", ws, json.dumps({"workspace": ws}))
    ids = {}
    for name, state in ((f"run_{uniq}", "running"), (f"done_{uniq}", "completed"), (f"new_{uniq}", "running")):
        ids[name] = await db.fetchval(
            "INSERT INTO campaigns (name, workspace, segment, template_name, default_language, state)"
            " VALUES ($1, $2, $3, 'daily_campaign_invite', 'hi', $4) RETURNING id",
            name, ws, f"seg_{uniq}", state)
    states = ["accepted", "accepted", "failed", "pending", "skipped", "read"]
    for campaign in (f"run_{uniq}", f"done_{uniq}"):
        await db.execute(
            "INSERT INTO ledger (campaign_id, contact_id, wa_id, language, state)"
            " SELECT $1, c.id, c.wa_id, 'hi', ($3::text[])[row_number() OVER (ORDER BY c.id)]"
            " FROM contacts c WHERE c.workspace = $2", ids[campaign], ws, states)

    running = await metrics.refresh_campaign_gauges(db)
    assert running >= 2  # ours, plus whatever other tests left running

    def gauge(campaign: str, state: str) -> float | None:
        return metrics.REGISTRY.get_sample_value("broadcaster_campaign_recipients",
                                                 {"workspace": ws, "campaign": campaign, "state": state})

    run = f"run_{uniq}"
    assert {s: gauge(run, s) for s in metrics.LEDGER_STATES} == {
        "pending": 1, "claimed": 0, "unknown": 0, "accepted": 2, "sent": 0, "delivered": 0, "read": 1,
        "failed": 1, "skipped": 1}
    assert gauge(f"new_{uniq}", "pending") == 0  # running, audience not frozen yet: zeros, not absent
    assert gauge(f"done_{uniq}", "accepted") is None  # not running: no series

    await db.execute("UPDATE campaigns SET state = 'completed' WHERE id = ANY($1::int[])", list(ids.values()))
    await metrics.refresh_campaign_gauges(db)
    assert gauge(run, "accepted") is None
