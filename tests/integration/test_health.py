"""broadcaster.health against real Postgres: the webhook hook (templates, numbers), the guard query,
pausing with one queued alert, the alert outbox against a Slack receiver on 127.0.0.1, resume --force.

Each test owns its campaigns (cancelled at the end, so no other test's worker claims their rows) and
its sender numbers. Template status is global: every test that changes it sets it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import orjson
import pytest
import trio
from typer.testing import CliRunner

from broadcaster import health
from broadcaster.campaigns import Campaign, cancel, get_campaign, launch, resume
from broadcaster.db import Database
from broadcaster.errors import NotFoundError, StateError
from broadcaster.httpserver import Request, Response, serve_http
from broadcaster.inbox.slack import SlackConfig
from tests.integration.factories import campaign_for, settings_for

TEMPLATE = "daily_campaign_invite"
NUMBER = "106540352242922"


async def running(db: Database, uniq: str, phones: Sequence[str], language: str = "pa") -> Campaign:
    """A running campaign (audience frozen, nothing sent) in the template's `language`."""
    c = await campaign_for(db, uniq, phones, language=language)
    await launch(db, c.name)
    return await get_campaign(db, c.name)


async def finish(db: Database, *campaigns: Campaign) -> None:
    for c in campaigns:
        if (await get_campaign(db, c.name)).state not in ("completed", "cancelled"):
            await cancel(db, c.name)


def status_value(event: str, language: str = "pa", **extra: Any) -> dict[str, Any]:
    return {"event": event, "message_template_id": 594425479261596, "message_template_name": TEMPLATE,
            "message_template_language": language, "reason": extra.pop("reason", "NONE"), **extra}


async def template_status(db: Database, language: str) -> str:
    return await db.fetchval("SELECT status FROM templates WHERE name = $1 AND language = $2", TEMPLATE, language)


# ---- templates ----------------------------------------------------------------------------------

async def test_paused_template_pauses_campaigns_using_it_and_approved_resumes_them(
        db: Database, uniq: str, phone_factory: Any) -> None:
    uses = await running(db, uniq, [phone_factory() for _ in range(5)], language="pa")
    other = await running(db, uniq + "o", [phone_factory() for _ in range(5)], language="gu")
    try:
        await health.handle_change(db, "message_template_status_update", status_value(
            "PAUSED", reason="LOW_QUALITY", other_info={"title": "FIRST_PAUSE", "description": "3 hours"}))
        assert await template_status(db, "pa") == "PAUSED"
        c = await get_campaign(db, uses.name)
        assert (c.state, c.pause_reason) == ("paused", "template_paused")
        assert c.pause_detail == {"template": TEMPLATE, "language": "pa", "status": "PAUSED", "event": "PAUSED",
                                  "reason": "LOW_QUALITY", "title": "FIRST_PAUSE"}
        assert (await get_campaign(db, other.name)).state == "running"  # another language: untouched
        alerts = await db.fetch("SELECT kind, payload FROM health_alerts WHERE payload->>'text' LIKE $1",
                                f"%{uses.name}%")
        assert [a["kind"] for a in alerts] == ["template_paused"]

        # the same webhook again (Meta delivers at least once): nothing more happens
        await health.handle_change(db, "message_template_status_update", status_value("PAUSED", reason="LOW_QUALITY"))
        assert await db.fetchval("SELECT count(*) FROM health_alerts WHERE payload->>'text' LIKE $1",
                                 f"%{uses.name}%") == 1

        await health.handle_change(db, "message_template_status_update", status_value("APPROVED"))
        assert await template_status(db, "pa") == "APPROVED"
        c = await get_campaign(db, uses.name)
        assert (c.state, c.pause_reason, c.pause_detail) == ("running", None, None)
    finally:
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language = 'pa'", TEMPLATE)
        await finish(db, uses, other)


async def test_a_breaker_pause_on_132015_becomes_template_paused_and_resumes_on_approval(
        db: Database, uniq: str, phone_factory: Any) -> None:
    c = await running(db, uniq, [phone_factory() for _ in range(3)], language="pa")
    try:
        await db.execute("UPDATE campaigns SET state = 'paused', pause_reason = 'circuit_breaker:132015',"
                         " pause_detail = '{\"code\": 132015}' WHERE id = $1", c.id)
        await health.handle_change(db, "message_template_status_update", status_value("PAUSED"))
        got = await get_campaign(db, c.name)
        assert (got.state, got.pause_reason, got.pause_detail["was"]) == (
            "paused", "template_paused", "circuit_breaker:132015")
        await health.handle_change(db, "message_template_status_update", status_value("REINSTATED"))
        assert (await get_campaign(db, c.name)).state == "running"
    finally:
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language = 'pa'", TEMPLATE)
        await finish(db, c)


async def test_disabled_template_pauses_for_good_and_a_later_approval_does_not_resume(
        db: Database, uniq: str, phone_factory: Any) -> None:
    c = await running(db, uniq, [phone_factory() for _ in range(3)], language="pa")
    try:
        await health.handle_change(db, "message_template_status_update", status_value("DISABLED"))
        got = await get_campaign(db, c.name)
        assert (got.state, got.pause_reason, got.pause_detail["status"]) == ("paused", "template_disabled", "DISABLED")
        await health.handle_change(db, "message_template_status_update", status_value("APPROVED"))
        assert (await get_campaign(db, c.name)).pause_reason == "template_disabled"
    finally:
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language = 'pa'", TEMPLATE)
        await finish(db, c)


async def test_approval_of_one_variant_waits_for_another_paused_variant_the_campaign_uses(
        db: Database, uniq: str, phone_factory: Any) -> None:
    c = await campaign_for(db, uniq, [phone_factory() for _ in range(3)], language="pa")
    await db.execute("UPDATE contacts SET language = 'ml' WHERE id = (SELECT min(id) FROM contacts"
                     " WHERE workspace = $1)", c.workspace)
    await launch(db, c.name)
    try:
        assert await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1 AND language = 'ml'", c.id) == 1
        await health.handle_change(db, "message_template_status_update", status_value("PAUSED", "pa"))
        await health.handle_change(db, "message_template_status_update", status_value("PAUSED", "ml"))
        await health.handle_change(db, "message_template_status_update", status_value("APPROVED", "pa"))
        got = await get_campaign(db, c.name)
        assert (got.state, got.pause_detail["language"], got.pause_detail["status"]) == ("paused", "ml", "PAUSED")
        await health.handle_change(db, "message_template_status_update", status_value("APPROVED", "ml"))
        assert (await get_campaign(db, c.name)).state == "running"
    finally:
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language IN ('pa', 'ml')",
                         TEMPLATE)
        await finish(db, c)


async def test_a_pause_that_ends_without_a_webhook_is_noticed_by_the_recheck(
        db: Database, db_url: str, sandbox: Any, uniq: str, phone_factory: Any) -> None:
    """Meta's APPROVED webhook never comes: the worker's recheck reads the templates from the Graph
    API (the sandbox) and resumes the campaign once the variant is APPROVED there again."""
    c = await running(db, uniq, [phone_factory() for _ in range(3)], language="pa")
    settings = settings_for(db_url, sandbox, whatsapp_waba_id=sandbox.config.waba_id)
    try:
        await trio.to_thread.run_sync(partial(sandbox.set_faults, template_status={f"{TEMPLATE}/pa": "PAUSED"}))
        await health.handle_change(db, "message_template_status_update", status_value("PAUSED"))
        assert (await get_campaign(db, c.name)).pause_reason == "template_paused"
        assert await health.recheck_paused_templates(db, settings) == 0, "still PAUSED at Meta"
        assert await template_status(db, "pa") == "PAUSED"

        await trio.to_thread.run_sync(sandbox.set_faults)  # the pause ends, silently
        without_waba = settings_for(db_url, sandbox)
        assert await health.recheck_paused_templates(db, without_waba) == 0, "no WABA id: nothing to read"
        assert await health.recheck_paused_templates(db, settings) == 1
        assert await template_status(db, "pa") == "APPROVED"
        got = await get_campaign(db, c.name)
        assert (got.state, got.pause_reason) == ("running", None)
        assert await health.recheck_paused_templates(db, settings) == 0
    finally:
        await trio.to_thread.run_sync(sandbox.set_faults)
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language = 'pa'", TEMPLATE)
        await finish(db, c)


async def test_template_quality_is_stored_and_unknown_templates_are_no_error(db: Database, uniq: str) -> None:
    await campaign_for(db, uniq, [])  # imports the templates
    try:
        await health.handle_change(db, "message_template_quality_update", {
            "previous_quality_score": "GREEN", "new_quality_score": "YELLOW", "message_template_id": 1,
            "message_template_name": TEMPLATE, "message_template_language": "kn"})
        assert await db.fetchval("SELECT quality FROM templates WHERE name = $1 AND language = 'kn'",
                                 TEMPLATE) == "YELLOW"
        await health.handle_change(db, "message_template_status_update", {
            "event": "PAUSED", "message_template_name": f"never_imported_{uniq}", "message_template_language": "en"})
        with pytest.raises(health.HealthError, match=r"^message_template_quality_update: field new_quality_score "):
            await health.handle_change(db, "message_template_quality_update", {
                "message_template_name": TEMPLATE, "message_template_language": "kn", "new_quality_score": "PURPLE"})
    finally:
        await db.execute("UPDATE templates SET quality = NULL WHERE name = $1 AND language = 'kn'", TEMPLATE)


# ---- numbers ------------------------------------------------------------------------------------

async def add_number(db: Database, uniq: str, *, mps: int = 80, tier: int | None = 10_000) -> tuple[str, str]:
    """A sender number of its own with a display number of its own: (phone_number_id, display digits)."""
    pid, display = f"pn{uniq}", "1555" + str(int(uniq.strip("u"), 16) % 10**7).zfill(7)
    await db.execute("INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT DO NOTHING", f"ws_{uniq}")
    await db.execute("INSERT INTO sender_numbers (phone_number_id, workspace, mps, tier) VALUES ($1, $2, $3, $4)",
                     pid, f"ws_{uniq}", mps, tier)
    await health.set_display_number(db, pid, f"+{display[0]} {display[1:4]}-{display[4:]}")
    return pid, display


async def number(db: Database, pid: str) -> dict[str, Any]:
    return dict(await db.fetchrow("SELECT quality, mps, mps_ceiling, tier FROM sender_numbers"
                                  " WHERE phone_number_id = $1", pid))


async def test_red_quality_halves_the_rate_and_green_restores_the_configured_ceiling(db: Database, uniq: str) -> None:
    pid, display = await add_number(db, uniq)
    await health.handle_change(db, "phone_number_quality_update",
                               {"display_phone_number": display, "event": "FLAGGED", "current_limit": "TIER_10K"})
    assert await number(db, pid) == {"quality": "RED", "mps": 40, "mps_ceiling": 80, "tier": 10_000}
    await health.handle_change(db, "phone_number_quality_update",  # idempotent: still half the ceiling
                               {"display_phone_number": display, "event": "FLAGGED", "current_limit": "TIER_10K"})
    assert await number(db, pid) == {"quality": "RED", "mps": 40, "mps_ceiling": 80, "tier": 10_000}
    await health.handle_change(db, "phone_number_quality_update",
                               {"display_phone_number": display, "event": "DOWNGRADE", "old_limit": "TIER_10K",
                                "current_limit": "TIER_2K"})
    assert await number(db, pid) == {"quality": "RED", "mps": 40, "mps_ceiling": 80, "tier": 2000}
    await health.handle_change(db, "phone_number_quality_update", {"display_phone_number": display,
                                                                   "event": "UNFLAGGED"})
    assert await number(db, pid) == {"quality": "GREEN", "mps": 80, "mps_ceiling": None, "tier": 2000}
    rows = {n.phone_number_id: n for n in await health.list_numbers_health(db)}
    assert (rows[pid].display_phone_number, rows[pid].mps_ceiling) == (display, 80)


async def test_a_number_webhook_nobody_can_place_names_the_fix(db: Database, uniq: str) -> None:
    await add_number(db, uniq)  # there are several numbers: no guessing
    await add_number(db, uniq[::-1])
    with pytest.raises(health.HealthError, match=r"^phone_number_quality_update: no sender number has display "
                                                 r"number \*+1234 or id None: set it with `broadcaster health number"):
        await health.handle_change(db, "phone_number_quality_update",
                                   {"display_phone_number": "99991234", "event": "FLAGGED"})
    with pytest.raises(NotFoundError, match=r"^number nope is not configured"):
        await health.set_display_number(db, "nope", "15550783881")


# ---- guards -------------------------------------------------------------------------------------

async def seed_window(db: Database, c: Campaign, *, accepted: int, stops: int = 0, optout_failed: int = 0,
                      failed: int = 0, minutes_ago: float = 1.0, number: str = NUMBER) -> None:
    """Move ledger rows of `c` into states as if sent `minutes_ago`: accepted, STOP replies to some,
    failures (131050 and 131026). Rows are taken in id order, each used once."""
    ids = [r["id"] for r in await db.fetch("SELECT id FROM ledger WHERE campaign_id = $1 AND state = 'pending'"
                                           " ORDER BY id", c.id)]
    need = accepted + optout_failed + failed
    assert len(ids) >= need, "not enough pending rows"
    at = f"now() - make_interval(secs => {minutes_ago * 60})"
    acc, opt, bad = ids[:accepted], ids[accepted:accepted + optout_failed], ids[accepted + optout_failed:need]
    await db.execute(f"UPDATE ledger SET state = 'delivered', accepted_at = {at}, phone_number_id = $2,"
                     " wamid = 'wamid.h.' || id WHERE id = ANY($1::bigint[])", acc, number)
    await db.execute(f"UPDATE ledger SET state = 'failed', accepted_at = {at}, failed_at = {at},"
                     " phone_number_id = $2, error_code = 131050 WHERE id = ANY($1::bigint[])", opt, number)
    await db.execute(f"UPDATE ledger SET state = 'failed', failed_at = {at}, error_code = 131026"
                     " WHERE id = ANY($1::bigint[])", bad)
    for lid in acc[:stops]:
        mid = await db.fetchval(
            f"""INSERT INTO inbox_messages (wamid, workspace, contact_id, wa_id, type, body, campaign_id, ledger_id,
                                            sent_at, received_at, raw)
                SELECT 'wamid.in.' || l.id, $2, l.contact_id, l.wa_id, 'text', 'STOP', l.campaign_id, l.id,
                       {at}, {at}, '{{}}' FROM ledger l WHERE l.id = $1 RETURNING id""", lid, c.workspace)
        await db.execute("INSERT INTO inbox_rule_actions (message_id, rule_id, action)"
                         " VALUES ($1, 'opt_out', 'opt_out')", mid)


async def test_guard_query_counts_the_window_per_workspace_and_only_after_a_forced_resume(
        db: Database, uniq: str, phone_factory: Any) -> None:
    c = await running(db, uniq, [phone_factory() for _ in range(400)], language="hi")
    try:
        await seed_window(db, c, accepted=200, stops=8, minutes_ago=30)  # outside the default 10-min window
        assert await health.check_guards(db, [c.id], default_number=NUMBER) == []
        await seed_window(db, c, accepted=150, stops=3, optout_failed=2, failed=45, minutes_ago=2)
        # in the window: 152 accepted + 45 sync failures = 197 attempts < 200 (default min sample)
        assert await health.check_guards(db, [c.id], default_number=NUMBER) == []
        await health.set_guards(db, c.workspace, min_sample=100)
        [trip] = await health.check_guards(db, [c.id], default_number=NUMBER)
        # opt-out is looked at first: (3 STOP + 2 × 131050) / 197 = 2.54 % > 2 %
        assert (trip.campaign_id, trip.guard, trip.detail["opt_outs"]) == (c.id, "optout_spike", 5)
        await health.set_guards(db, c.workspace, optout_share=0.03)
        [trip] = await health.check_guards(db, [c.id], default_number=NUMBER)
        assert trip.guard == "failure_spike"
        assert {k: trip.detail[k] for k in ("failed", "attempts", "share", "threshold", "codes")} == {
            "failed": 47, "attempts": 197, "share": 0.2386, "threshold": 0.2, "codes": {"131026": 45, "131050": 2}}
        assert trip.detail["guard"] == "failure_spike" and trip.detail["tripped_at"] and trip.detail["since"]
        # sends are counted from the numbers the campaign sends from: without the default number a
        # campaign that names none has only its 45 sync failures in the window (< min sample)
        assert await health.check_guards(db, [c.id]) == []
    finally:
        await finish(db, c)


async def test_trip_pauses_once_queues_one_alert_and_only_force_resumes(
        db: Database, uniq: str, phone_factory: Any) -> None:
    c = await running(db, uniq, [phone_factory() for _ in range(300)], language="hi")
    try:
        await health.set_guards(db, c.workspace, min_sample=100)
        await seed_window(db, c, accepted=200, stops=6)
        [trip] = await health.check_guards(db, [c.id], default_number=NUMBER)
        assert trip.guard == "optout_spike" and trip.detail["opt_outs"] == 6
        assert await health.enforce(db, trip) is True
        assert await health.enforce(db, trip) is False  # another worker got there first: nothing more
        got = await get_campaign(db, c.name)
        assert (got.state, got.pause_reason, got.pause_detail) == ("paused", "optout_spike", trip.detail)
        assert await db.fetchval("SELECT count(*) FROM health_alerts WHERE campaign_id = $1", c.id) == 1

        with pytest.raises(StateError, match=rf"^campaign '{c.name}' was paused by the optout_spike guard "):
            await resume(db, c.name)
        resumed = await resume(db, c.name, force=True)
        assert resumed.state == "running"
        assert await db.fetchval("SELECT guards_since IS NOT NULL FROM campaigns WHERE id = $1", c.id)
        # the same events no longer count: the guard does not trip again on them
        assert await health.check_guards(db, [c.id], default_number=NUMBER) == []
    finally:
        await finish(db, c)


# ---- alerts to Slack ----------------------------------------------------------------------------

class Slack:
    """A fake incoming webhook on 127.0.0.1 that answers `fail_first` POSTs with 500, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.posts: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: Request) -> Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return Response(500, b"server_error")
        self.posts.append(orjson.loads(request.body))
        return Response(200, b"ok", {"content-type": "text/plain"})

    def about(self, campaign: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if f"Campaign {campaign} " in p["text"]]


@asynccontextmanager
async def slack_receiver(fail_first: int = 0) -> AsyncIterator[Slack]:
    slack = Slack(fail_first)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, slack.handle, "127.0.0.1", 0)
        slack.url = f"http://127.0.0.1:{port}/services/T000/B000/XXXX"
        yield slack
        nursery.cancel_scope.cancel()


async def test_alerts_are_posted_once_through_slack_failures(db: Database, uniq: str, phone_factory: Any) -> None:
    c = await running(db, uniq, [phone_factory() for _ in range(250)], language="hi")
    try:
        await health.set_guards(db, c.workspace, min_sample=100)
        await seed_window(db, c, accepted=100, failed=100)
        [trip] = await health.check_guards(db, [c.id], default_number=NUMBER)
        assert await health.enforce(db, trip)
        async with slack_receiver(fail_first=2) as slack, httpx.AsyncClient() as client:
            config = SlackConfig(slack.url, wait_initial_s=0.0, wait_max_s=0.0)
            await health.send_due_alerts(db, client, config)
            await health.send_due_alerts(db, client, config)  # nothing left: no second post
        [post] = slack.about(c.name)
        assert post["text"].startswith(f"Campaign {c.name} ({c.workspace}) paused: failure spike. guard failure_spike:"
                                       " 100 failed in 200 sends = 50.0 % > 20.0 %")
        row = await db.fetchrow("SELECT state, attempts FROM health_alerts WHERE campaign_id = $1", c.id)
        assert (row["state"], row["attempts"]) == ("sent", 1)  # two 500s retried inside one claim
    finally:
        await finish(db, c)


# ---- the CLI ------------------------------------------------------------------------------------

def test_guards_cli_show_set_and_status_line(db_url: str, uniq: str) -> None:
    from broadcaster.commands.health import app

    cli = CliRunner()
    ws = f"ws_{uniq}"

    async def make_ws() -> None:
        from broadcaster.db import open_db
        async with open_db(db_url, max_size=1) as db:
            await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)

    trio.run(make_ws)
    shown = cli.invoke(app, ["guards", "show", "--workspace", ws], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert f"guards of {ws} (defaults)" in shown.output and "STOP replies + 131050 > 2 % of sends" in shown.output
    done = cli.invoke(app, ["guards", "set", "-w", ws, "--optout-share", "1.5%", "--window-min", "5",
                            "--min-sample", "50", "--failure-share", "off"], terminal_width=200)
    assert done.exit_code == 0, done.output
    assert "> 1.5 % of sends" in done.output and "5 min" in done.output and "off" in done.output
    bad = cli.invoke(app, ["guards", "set", "-w", ws, "--optout-share", "lots"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --optout-share 'lots': expected a share")
    missing = cli.invoke(app, ["guards", "set", "-w", f"nope_{uniq}", "--min-sample", "5"])
    assert missing.exit_code == 1 and missing.output.startswith(f"error: workspace 'nope_{uniq}' does not exist")


def test_campaign_status_says_which_guard_and_resume_needs_force(db_url: str, uniq: str, phone_factory: Any) -> None:
    from broadcaster.commands.campaign import app
    from broadcaster.db import open_db

    phones = [phone_factory() for _ in range(150)]

    async def trip() -> Campaign:
        async with open_db(db_url, max_size=2) as db:
            c = await running(db, uniq, phones, language="hi")
            await health.set_guards(db, c.workspace, min_sample=100)
            await seed_window(db, c, accepted=120, stops=4)
            [t] = await health.check_guards(db, [c.id], default_number=NUMBER)
            assert await health.enforce(db, t)
            return c

    async def cleanup(c: Campaign) -> None:
        async with open_db(db_url, max_size=1) as db:
            await finish(db, c)

    c = trio.run(trip)
    try:
        cli = CliRunner()
        status = cli.invoke(app, ["status", c.name], terminal_width=300)
        assert status.exit_code == 0, status.output
        text = " ".join(status.output.split())  # the console wraps long lines
        assert f"campaign {c.name}: paused (optout_spike)" in text
        assert ("paused: guard optout_spike: 4 opt-outs (4 STOP replies + 0 × 131050) in 120 sends = 3.3 % > 2.0 % "
                f"over 10.0 min; a manager may override: `campaign resume {c.name} --force`") in text
        refused = cli.invoke(app, ["resume", c.name, "--detach"])
        assert refused.exit_code == 1
        assert " ".join(refused.output.split()).startswith(
            f"error: campaign '{c.name}' was paused by the optout_spike guard")
        forced = cli.invoke(app, ["resume", c.name, "--detach", "--force"])
        assert forced.exit_code == 0, forced.output
        assert f"campaign '{c.name}' is running again" in forced.output
    finally:
        trio.run(cleanup, c)
