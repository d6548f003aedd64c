"""Health signals and guards end to end: campaigns sent through the sandbox by the real runner,
WhatsApp-shaped webhooks signed and posted to the real receiver, Slack on 127.0.0.1.

- a PAUSED template webhook pauses the running campaign within one batch; APPROVED resumes it;
- a RED (FLAGGED) number-quality webhook halves the number's rate;
- 3 % of recipients replying STOP pause the campaign with `optout_spike` and one Slack post;
  `resume --force` overrides it and the guard does not trip again on the same replies;
- a burst of failed sends pauses with `failure_spike`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from broadcaster import health
from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.campaigns import Campaign, cancel, get_campaign, resume
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.errors import StateError
from broadcaster.inbound import Hooks
from broadcaster.inbox.handler import Inbox, InboxConfig
from broadcaster.inbox.rules import load_rules
from broadcaster.metrics import REGISTRY
from broadcaster.numbers import get_number
from broadcaster.sandbox import SandboxConfig, SandboxThread
from tests.conftest import SANDBOX_NUMBER
from tests.integration.factories import campaign_for, run_campaign, settings_for
from tests.integration.test_health import add_number, slack_receiver
from tests.integration.test_inbox_handler import EXAMPLE_RULES
from tests.integration.webhook_support import SECRET, WABA_ID, Receiver, running_receiver

TEMPLATE = "daily_campaign_invite"
SENT = ("accepted", "sent", "delivered", "read")


def envelope(field: str, value: dict[str, Any]) -> dict[str, Any]:
    """A webhook body shaped like WhatsApp's (API doc §4.3) carrying one change."""
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "time": 1764763200, "changes": [{"field": field, "value": value}]}]}


async def count_sent(db: Database, campaign_id: int) -> int:
    return await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state = ANY($2::text[])",
                             campaign_id, list(SENT))


async def count_taken(db: Database, campaign_id: int) -> int:
    """Rows claimed so far (sent, being sent or settled): all but the pending ones."""
    return await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state <> 'pending'",
                             campaign_id)


async def wait_until(predicate: Any, *, timeout: float = 30) -> None:
    """Poll `predicate()` (an async callable reading the database, which the runner writes from
    its own tasks: there is no event to wait on) every 20 ms until it is true."""
    with trio.fail_after(timeout):
        while True:
            if await predicate():
                return
            await trio.sleep(0.02)


@asynccontextmanager
async def own_sandbox(docs: list[dict], **changes: Any) -> AsyncIterator[SandboxThread]:
    """A sandbox of this test's own (faults and webhooks do not leak into other tests)."""
    config = SandboxConfig(templates=docs, mps=0, phone_number_id=SANDBOX_NUMBER, token="test-token",
                           app_secret=SECRET, **changes)
    sandbox = SandboxThread(config)
    await trio.to_thread.run_sync(sandbox.start)
    try:
        yield sandbox
    finally:
        await trio.to_thread.run_sync(sandbox.stop)


async def finish(db: Database, c: Campaign) -> None:
    if (await get_campaign(db, c.name)).state not in ("completed", "cancelled"):
        await cancel(db, c.name)


def trips(reason: str) -> float:
    return REGISTRY.get_sample_value("broadcaster_circuit_breaker_trips_total", {"reason": reason}) or 0.0


# ---- template status ----------------------------------------------------------------------------

async def test_paused_template_webhook_pauses_within_one_batch_and_approved_resumes(
        db: Database, db_url: str, uniq: str, phone_factory: Any, sandbox: Any) -> None:
    phones = [phone_factory() for _ in range(300)]
    c = await campaign_for(db, uniq, phones, language="ta")
    dispatch = DispatchConfig(lanes=4, batch_size=20)
    try:
        async with running_receiver(db, hooks=Hooks(change=health.handle_change)) as rx:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(run_campaign, db, settings_for(db_url, sandbox), c, dispatch=dispatch,
                                           mps=100))
                await wait_until(lambda: _at_least(db, c.id, 60))
                response = await rx.post(envelope("message_template_status_update", {
                    "event": "PAUSED", "message_template_id": 594425479261596, "message_template_name": TEMPLATE,
                    "message_template_language": "ta", "reason": "LOW_QUALITY",
                    "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours"}}))
                assert response.status_code == 200
                await rx.applied()
                at_pause = await count_taken(db, c.id)
            # the runner stopped by itself: its campaign is no longer running. At most the batch it
            # had claimed when the webhook was applied went out after it.
            after = await count_taken(db, c.id)
            assert after - at_pause <= dispatch.batch_size, (at_pause, after)
            assert await count_sent(db, c.id) == after
            paused = await get_campaign(db, c.name)
            assert (paused.state, paused.pause_reason, paused.pause_detail["title"]) == (
                "paused", "template_paused", "FIRST_PAUSE")
            assert after < len(phones)

            await rx.post(envelope("message_template_status_update", {
                "event": "APPROVED", "message_template_id": 594425479261596, "message_template_name": TEMPLATE,
                "message_template_language": "ta", "reason": "NONE"}))
            await rx.applied()
        assert (await get_campaign(db, c.name)).state == "running"
        await CampaignRunner(db, settings_for(db_url, sandbox), _options(c, dispatch)).run()
        assert (await get_campaign(db, c.name)).state == "completed"
        assert await count_sent(db, c.id) == len(phones)
        received = await trio.to_thread.run_sync(sandbox.recipients)
        assert {p: received.get(p) for p in phones} == dict.fromkeys(phones, 1)  # nobody twice
    finally:
        await db.execute("UPDATE templates SET status = 'APPROVED' WHERE name = $1 AND language = 'ta'", TEMPLATE)
        await finish(db, c)


async def _at_least(db: Database, campaign_id: int, n: int) -> bool:
    return await count_sent(db, campaign_id) >= n


def _options(c: Campaign, dispatch: DispatchConfig) -> RunOptions:
    return RunOptions(dispatch=dispatch, mps_override=5000, only_campaign=c.id)


# ---- number quality -----------------------------------------------------------------------------

async def test_red_quality_webhook_lowers_the_numbers_rate(db: Database, uniq: str) -> None:
    pid, display = await add_number(db, uniq, mps=80, tier=2000)
    async with running_receiver(db, hooks=Hooks(change=health.handle_change)) as rx:
        response = await rx.post(envelope("phone_number_quality_update", {
            "display_phone_number": display, "event": "FLAGGED", "current_limit": "TIER_2K",
            "max_daily_conversations_per_business": "TIER_2K"}))
        assert response.status_code == 200
        await rx.applied()
        n = await get_number(db, pid)
        assert (n.quality, n.mps, n.tier) == ("RED", 40, 2000)
        await rx.post(envelope("phone_number_quality_update", {"display_phone_number": display,
                                                               "event": "UNFLAGGED", "current_limit": "TIER_10K"}))
        await rx.applied()
    n = await get_number(db, pid)
    assert (n.quality, n.mps, n.tier) == ("GREEN", 80, 10_000)
    assert await db.fetchval("SELECT count(*) FROM webhook_changes WHERE value->>'display_phone_number' = $1"
                             " AND handled_at IS NULL", display) == 0


# ---- opt-out spike ------------------------------------------------------------------------------

async def _reply_stop(db: Database, sandbox: SandboxThread, c: Campaign, chosen: set[str], done: trio.Event) -> int:
    """Play the audience: the `chosen` recipients reply STOP to the template once they have it."""
    replied: set[str] = set()
    while not done.is_set():
        rows = await db.fetch("SELECT wa_id, wamid FROM ledger WHERE campaign_id = $1 AND wamid IS NOT NULL"
                              " AND wa_id = ANY($2::text[])", c.id, list(chosen - replied))
        for r in rows:
            answer = await trio.to_thread.run_sync(partial(
                sandbox.inbound, **{"from": r["wa_id"], "text": "STOP", "context_id": r["wamid"]}))
            assert answer["webhook_status"] == 200
            replied.add(r["wa_id"])
        with trio.move_on_after(0.05):
            await done.wait()
    return len(replied)


async def test_three_percent_stop_replies_pause_with_optout_spike_and_one_slack_post(
        db: Database, db_url: str, uniq: str, phone_factory: Any, template_docs: list[dict]) -> None:
    phones = [phone_factory() for _ in range(1000)]
    c = await campaign_for(db, uniq, phones, language="hi")
    await health.set_guards(db, c.workspace, min_sample=100)  # 2 % over 10 min (the defaults), 100 sends
    inbox = Inbox(InboxConfig(), rules=load_rules(EXAMPLE_RULES))
    hooks = Hooks(messages=inbox.handle_messages, change=health.handle_change)
    before = trips("optout_spike")
    try:
        async with slack_receiver() as slack, running_receiver(db, hooks=hooks) as rx:
            async with own_sandbox(template_docs, webhook_url=f"{rx.url}/webhook") as sandbox:
                settings = settings_for(db_url, sandbox, slack_webhook_url=slack.url)
                stoppers = set(phones[::33])  # 31 of 1,000: 3 %
                replies = await _send_with_replies(db, rx, settings, sandbox, c, stoppers)
                paused = await get_campaign(db, c.name)
                assert (paused.state, paused.pause_reason) == ("paused", "optout_spike")
                detail = paused.pause_detail
                assert detail["guard"] == "optout_spike" and detail["min_sample"] == 100
                assert detail["attempts"] >= 100 and detail["share"] > 0.02 == detail["threshold"]
                assert detail["opt_outs"] == detail["stop_replies"] + detail["failed_131050"]
                assert 0 < replies and await count_sent(db, c.id) < len(phones)
                [post] = slack.about(c.name)
                assert "opt-out spike" in post["text"] and f"campaign resume {c.name} --force" in str(post)
                assert trips("optout_spike") == before + 1

                # a manager looks, decides the list is fine and overrides; the audience stops replying
                with pytest.raises(StateError, match=rf"^campaign '{c.name}' was paused by the optout_spike guard"):
                    await resume(db, c.name)
                await resume(db, c.name, force=True)
                runner = CampaignRunner(db, settings, _options(c, DispatchConfig(lanes=8, batch_size=50)))
                runner.guards.interval_s = 0.1
                await runner.run()
                assert runner.guards.trips == []  # the replies before the override do not count again
        assert (await get_campaign(db, c.name)).state == "completed"
        assert len(slack.about(c.name)) == 1
    finally:
        await finish(db, c)


async def _send_with_replies(db: Database, rx: Receiver, settings: Any, sandbox: SandboxThread, c: Campaign,
                             chosen: set[str]) -> int:
    """Send `c` at 100 msg/s with guards checked every 0.1 s while the `chosen` recipients reply
    STOP; returns once the runner stopped and every reply has been handled."""
    done = trio.Event()
    replied: list[int] = []

    async def audience() -> None:
        replied.append(await _reply_stop(db, sandbox, c, chosen, done))

    def fast_guards(runner: CampaignRunner) -> None:
        runner.guards.interval_s = 0.1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(audience)
        await run_campaign(db, settings, c, dispatch=DispatchConfig(lanes=8, batch_size=50), mps=100,
                           hook=fast_guards)
        done.set()
    await rx.applied()
    return replied[0]


# ---- failure spike ------------------------------------------------------------------------------

async def test_a_burst_of_failed_sends_pauses_with_failure_spike(
        db: Database, db_url: str, uniq: str, phone_factory: Any, template_docs: list[dict]) -> None:
    phones = [phone_factory() for _ in range(600)]
    c = await campaign_for(db, uniq, phones, language="hi")
    await health.set_guards(db, c.workspace, min_sample=100, failure_share=0.2)
    try:
        async with own_sandbox(template_docs) as sandbox:
            await trio.to_thread.run_sync(partial(sandbox.set_faults, error_rate={"131026": 0.35}))
            runner = await run_campaign(db, settings_for(db_url, sandbox), c, mps=200,
                                        dispatch=DispatchConfig(lanes=8, batch_size=50),
                                        hook=lambda r: setattr(r.guards, "interval_s", 0.1))
        paused = await get_campaign(db, c.name)
        assert (paused.state, paused.pause_reason) == ("paused", "failure_spike")
        assert paused.pause_detail["share"] > 0.2 and paused.pause_detail["attempts"] >= 100
        assert set(paused.pause_detail["codes"]) == {"131026"}
        assert [t.guard for t in runner.guards.trips] == ["failure_spike"]
        assert await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state = 'pending'", c.id) > 0
        # no Slack configured: the alert waits in the outbox for a process that has one
        assert await db.fetchval("SELECT state FROM health_alerts WHERE campaign_id = $1", c.id) == "pending"
    finally:
        await db.execute("UPDATE health_alerts SET state = 'failed' WHERE campaign_id = $1", c.id)
        await finish(db, c)
