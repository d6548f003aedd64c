"""Report exports: JSON, CSV and HTML of one campaign agree with each other and with the ledger."""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from broadcaster.campaigns import launch
from broadcaster.db import Database
from broadcaster.report_export import CSV_COLUMNS, full_report, inbox_available, render_html, write_csv
from tests.integration.factories import add_contacts, campaign_for, run_campaign, settings_for

BASE = datetime(2026, 12, 4, 4, 30, tzinfo=UTC)  # 10:00 IST
LATENCIES = [0.4, 0.9, 1.5, 3.0, 3.0, 7.0, 12.0, 45.0, 200.0, 4000.0]  # seconds, delivered − accepted


async def _crafted(db: Database, uniq: str, phone_factory) -> tuple[str, int, list[str]]:
    """A launched campaign whose ledger rows are moved into a known mix of outcomes.

    40 recipients: 5 opted out (skipped), 10 delivered (3 of them read, 2 replied), 4 sent, 6 accepted,
    8 failed (3×131026, 2×131049 after acceptance, 3×131000), 7 still pending.
    """
    phones = [phone_factory() for _ in range(40)]
    campaign = await campaign_for(db, uniq, phones[:30])
    await add_contacts(db, f"ws_{uniq}", phones[30:35], language="en")
    await add_contacts(db, f"ws_{uniq}", phones[35:], opted_in=False)
    await launch(db, campaign.name)
    rows = await db.fetch("SELECT id, wa_id FROM ledger WHERE campaign_id = $1 AND state = 'pending' ORDER BY id",
                          campaign.id)
    ids = [r["id"] for r in rows]
    assert len(ids) == 35
    minute = timedelta(minutes=1)
    for i, rid in enumerate(ids[:10]):  # delivered, latencies as listed; 3 read
        acc = BASE + (i // 4) * minute + timedelta(seconds=i)
        await db.execute(
            "UPDATE ledger SET state = $2, wamid = 'wamid.' || id, accepted_at = $3,"
            " sent_at = $3::timestamptz + interval '0.2 s', delivered_at = $3::timestamptz + make_interval(secs => $4),"
            " read_at = CASE WHEN $2 = 'read' THEN $3::timestamptz + interval '1 h' END"
            " WHERE id = $1", rid, "read" if i < 3 else "delivered", acc, LATENCIES[i])
    for rid in ids[10:14]:
        await db.execute("UPDATE ledger SET state = 'sent', wamid = 'wamid.' || id, accepted_at = $2,"
                         " sent_at = $2::timestamptz WHERE id = $1", rid, BASE + 3 * minute)
    for rid in ids[14:20]:
        await db.execute("UPDATE ledger SET state = 'accepted', wamid = 'wamid.' || id, accepted_at = $2 WHERE id = $1",
                         rid, BASE + 3 * minute)
    for rid, code, accepted in ([(r, 131026, False) for r in ids[20:23]] + [(r, 131049, True) for r in ids[23:25]]
                                + [(r, 131000, False) for r in ids[25:28]]):
        await db.execute(
            "UPDATE ledger SET state = 'failed', error_code = $2, error_title = 'from api', failed_at = $3,"
            " accepted_at = CASE WHEN $4 THEN $3::timestamptz - interval '5 s' END, attempts = 1 WHERE id = $1",
            rid, code, BASE + 4 * minute, accepted)
    if await inbox_available(db):
        for n, rid in enumerate([ids[0], ids[0], ids[5]]):  # two recipients replied, one twice
            await db.execute(
                "INSERT INTO inbox_messages (wamid, workspace, contact_id, wa_id, type, body, campaign_id, ledger_id,"
                " sent_at, raw) SELECT 'in.' || $2 || '.' || l.id, $3, l.contact_id, l.wa_id, 'text', 'hi', $4,"
                " l.id, now(), '{}' FROM ledger l WHERE l.id = $1",
                rid, f"{uniq}{n}", f"ws_{uniq}", campaign.id)
    return campaign.name, campaign.id, phones


async def _ledger_truth(db: Database, campaign_id: int) -> dict[str, int]:
    by_state = {r["state"]: r["n"] for r in await db.fetch(
        "SELECT state, count(*) AS n FROM ledger WHERE campaign_id = $1 GROUP BY 1", campaign_id)}
    return by_state


async def test_report_json_matches_the_ledger(db: Database, uniq: str, phone_factory) -> None:
    name, cid, _ = await _crafted(db, uniq, phone_factory)
    report = await full_report(db, name)
    truth = await _ledger_truth(db, cid)
    assert {s: report[s] for s in truth} == truth
    assert report["funnel"] | {"replied": None} == {
        "audience": 40, "skipped": 5, "accepted": 22, "sent": 14, "delivered": 10, "read": 3, "failed": 8,
        "replied": None}
    assert report["replied"] == (2 if await inbox_available(db) else None)
    assert report["skipped_by_reason"] == {"opted_out": 5}
    assert [(f["code"], f["title"], f["n"]) for f in report["failures"]] == [
        (131000, "Something went wrong", 3), (131026, "Message undeliverable", 3),
        (131049, "Not delivered to maintain healthy ecosystem engagement", 2)]
    assert report["failures_by_language"] == {"hi": 8}
    assert report["audience_by_language"] == {"hi": 35, "en": 5}

    lat = report["latency_s"]
    expected = statistics.quantiles(LATENCIES, n=100, method="inclusive")  # linear, like percentile_cont
    assert lat["n"] == 10
    assert lat["p50"] == pytest.approx(statistics.median(LATENCIES))
    assert lat["p90"] == pytest.approx(expected[89])
    assert lat["p99"] == pytest.approx(expected[98])
    assert lat["max"] == pytest.approx(4000.0)
    hist = {h["label"]: h["n"] for h in report["latency_histogram"]}
    assert sum(hist.values()) == 10
    assert list(hist) == ["<1s", "1–2s", "2–5s", "5–10s", "10–30s", "30s–1m", "1–2m", "2–5m", "5–10m", "10–30m",
                          "30m–1h", "≥1h"]
    assert hist["<1s"] == 2 and hist["2–5s"] == 2 and hist["≥1h"] == 1

    timeline = report["sends_timeline"]
    assert timeline["bucket_s"] == 60
    assert [p["t"] for p in timeline["points"]] == [(BASE + timedelta(minutes=m)).isoformat() for m in range(5)]
    assert sum(p["accepted"] for p in timeline["points"]) == report["funnel"]["accepted"]
    assert sum(p["failed"] for p in timeline["points"]) == report["funnel"]["failed"]
    assert [p["accepted"] for p in timeline["points"]] == [4, 4, 2, 12, 0]  # 131049s were accepted at 3:55
    assert [p["failed"] for p in timeline["points"]] == [0, 0, 0, 0, 8]
    orjson.dumps(report)


async def test_csv_and_html_agree_with_the_json(db: Database, uniq: str, phone_factory, tmp_path: Path) -> None:
    name, cid, phones = await _crafted(db, uniq, phone_factory)
    report = await full_report(db, name)

    path = tmp_path / "outcomes.csv"
    assert await write_csv(db, name, path) == 40
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert Counter(r["state"] for r in rows) == Counter({s: report[s] for s in
                                                         ("pending", "accepted", "sent", "delivered", "read",
                                                          "failed", "skipped") if report[s]})
    assert {r["wa_id"] for r in rows} == set(phones)
    failed = Counter(int(r["error_code"]) for r in rows if r["state"] == "failed")
    assert failed == {f["code"]: f["n"] for f in report["failures"]}
    assert {r["error_title"] for r in rows if r["error_code"] == "131026"} == {"Message undeliverable"}
    assert sum(1 for r in rows if r["accepted_at"]) == report["funnel"]["accepted"]
    assert sum(1 for r in rows if r["delivery_latency_s"]) == report["latency_s"]["n"]
    if report["replied"] is None:
        assert {r["replied"] for r in rows} == {""}
    else:
        assert sum(1 for r in rows if r["replied"] == "yes") == report["replied"]

    masked = tmp_path / "masked.csv"
    assert await write_csv(db, name, masked, mask_numbers=True) == 40
    assert {r["wa_id"] for r in csv.DictReader(masked.open(newline=""))} == {"*" * 8 + p[-4:] for p in phones}

    page = render_html(report)
    embedded = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert embedded is not None
    assert json.loads(embedded.group(1).replace("<\\/", "</")) == json.loads(orjson.dumps(report))
    metrics = dict(re.findall(r'data-metric="(\w+)">([^<]*)<', page))
    for key in ("audience", "accepted", "delivered", "read", "failed", "skipped"):
        assert int(metrics[key].replace(",", "")) == report["funnel"][key], key
    states = dict(re.findall(r'data-state="(\w+)">([^<]*)<', page))
    assert {k: int(v.replace(",", "")) for k, v in states.items()} == {
        s: report[s] for s in ("pending", "claimed", "unknown", "accepted", "sent", "delivered", "read", "failed",
                               "skipped")}
    codes = dict(re.findall(r'data-failure-code="(\d+)">([^<]*)<', page))
    assert {int(k): int(v) for k, v in codes.items()} == {f["code"]: f["n"] for f in report["failures"]}
    funnel_bars = dict(re.findall(r'<g data-label="(\w+)" data-value="(\d+)">', page))
    assert {k: int(v) for k, v in funnel_bars.items() if k in report["funnel"]} == {
        k: v for k, v in report["funnel"].items() if k in ("audience", "accepted", "sent", "delivered", "read",
                                                             "replied") and v is not None}
    assert "http://" not in page and "https://" not in page and "<link" not in page  # self-contained


async def test_report_of_a_real_run_agrees_with_the_ledger(db: Database, db_url: str, sandbox: object, uniq: str,
                                                           phone_factory, tmp_path: Path) -> None:
    phones = [phone_factory() for _ in range(60)]
    campaign = await campaign_for(db, uniq, phones)
    await run_campaign(db, settings_for(db_url, sandbox), campaign)
    report = await full_report(db, campaign.name)
    truth = await _ledger_truth(db, campaign.id)
    assert report["funnel"]["audience"] == 60 == sum(truth.values())
    assert report["funnel"]["accepted"] == truth.get("accepted", 0) + truth.get("sent", 0) + \
        truth.get("delivered", 0) + truth.get("read", 0)
    assert sum(p["accepted"] for p in report["sends_timeline"]["points"]) == report["funnel"]["accepted"]
    assert await write_csv(db, campaign.name, tmp_path / "o.csv") == 60
    assert 'data-metric="accepted">60<' in render_html(report)


async def test_empty_campaign_renders(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory()])
    report = await full_report(db, campaign.name)
    assert report["funnel"]["audience"] == 0 and report["latency_s"]["p50"] is None
    assert report["sends_timeline"]["points"] == []
    page = render_html(report)
    assert page.count("nothing to show yet") == 5


async def test_live_view_follows_a_run_until_it_completes(db: Database, db_url: str, sandbox: object, uniq: str,
                                                          phone_factory) -> None:
    import io

    import trio
    from rich.console import Console

    from broadcaster.commands.campaign_extra import watch_live

    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(200)])
    out = io.StringIO()
    last = None

    async def watch() -> None:
        nonlocal last
        last = await watch_live(db, campaign.id, out=Console(file=out, width=160), refresh_s=0.2)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await launch(db, campaign.name)
            nursery.start_soon(watch)
            await run_campaign(db, settings_for(db_url, sandbox), campaign, mps=400)
    assert last is not None and last.state == "completed"
    assert (last.settled, last.audience, last.by_state) == (200, 200, {"accepted": 200})
    assert "200/200 100%" in out.getvalue()
