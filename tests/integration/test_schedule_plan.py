"""The send plan against the real database, and its ETA against a real run at 80 messages/s."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.campaigns import create_campaign, get_campaign, launch
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.numbers import sending_rate
from broadcaster.plan import send_plan
from broadcaster.segment_store import create_segment
from broadcaster.template_store import import_templates
from segments.filters import SegmentFilter
from tests.integration.factories import EXAMPLES, INVITE_VARS, add_contacts, campaign_for, settings_for

NUMBER = "106540352242922"


def _now() -> datetime:
    return datetime.now(UTC)


async def test_dry_run_matches_what_launch_freezes_and_writes_nothing(db: Database, uniq: str,
                                                                      phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(12)])            # hi
    await add_contacts(db, f"ws_{uniq}", [phone_factory() for _ in range(5)], language="en")
    await add_contacts(db, f"ws_{uniq}", [phone_factory() for _ in range(3)], language="bho")  # → hi
    await add_contacts(db, f"ws_{uniq}", [phone_factory() for _ in range(4)], opted_in=False)
    await db.execute("UPDATE contacts SET status = 'blocked' WHERE id IN (SELECT id FROM contacts"
                     " WHERE workspace = $1 AND language = 'en' LIMIT 2)", f"ws_{uniq}")

    plan = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert not plan.frozen and plan.preflight_ok and plan.problems == []
    assert plan.audience == 24
    assert plan.skipped == {"opted_out": 4, "blocked": 2}
    assert plan.by_language == {"hi": 15, "en": 3}
    assert plan.to_send == 18 and plan.category == "MARKETING"
    assert await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1", campaign.id) == 0
    assert (await get_campaign(db, campaign.name)).audience_frozen_at is None

    await launch(db, campaign.name)
    after = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert after.frozen
    assert (after.audience, after.skipped, after.by_language, after.to_send) == (
        plan.audience, plan.skipped, plan.by_language, plan.to_send)


async def test_plan_counts_the_recipients_the_sender_will_skip_when_rendering(
        db: Database, db_url: str, uniq: str, phone_factory, sandbox: object) -> None:
    """A contact with no name cannot fill {{1}} = contact.name: the run skips it (empty_value:body.1),
    so the plan must not count it as one to send, before the launch and after it."""
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(7)])
    await db.execute("UPDATE contacts SET name = CASE WHEN id % 2 = 0 THEN NULL ELSE '   ' END WHERE id IN"
                     " (SELECT id FROM contacts WHERE workspace = $1 ORDER BY id LIMIT 3)", f"ws_{uniq}")
    plan = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert plan.skipped == {"empty_value:body.1": 3}
    assert (plan.to_send, plan.by_language, plan.new_recipients) == (4, {"hi": 4}, 4)

    await launch(db, campaign.name)
    frozen = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert (frozen.skipped, frozen.to_send) == (plan.skipped, plan.to_send)

    runner = CampaignRunner(db, settings_for(db_url, sandbox), RunOptions(
        dispatch=DispatchConfig(lanes=4), mps_override=5000, only_campaign=campaign.id))
    with trio.fail_after(60):
        await runner.run()
    rows = await db.fetch("SELECT state, skip_reason, count(*) AS n FROM ledger WHERE campaign_id = $1"
                          " GROUP BY 1, 2", campaign.id)
    got = {(r["state"], r["skip_reason"]): r["n"] for r in rows}
    assert got[("skipped", "empty_value:body.1")] == 3
    assert sum(n for (state, _), n in got.items() if state != "skipped") == plan.to_send


async def test_a_template_of_an_unexpected_category_is_suppressed_like_marketing(
        db: Database, uniq: str, phone_factory, tmp_path) -> None:
    import json

    docs = json.loads((EXAMPLES / "message_templates.json").read_text(encoding="utf-8"))["data"]
    doc = next(d for d in docs if d["name"] == "daily_campaign_invite" and d["language"] == "hi")
    doc = {**doc, "name": f"promo_{uniq}", "category": "SPAM", "id": f"9{uniq[1:]}"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"data": [doc]}), encoding="utf-8")
    await import_templates(db, path)
    ws = f"ws_{uniq}"
    await add_contacts(db, ws, [phone_factory() for _ in range(3)])
    await add_contacts(db, ws, [phone_factory() for _ in range(2)], opted_in=False)
    await create_segment(db, f"seg_{uniq}", SegmentFilter(workspace=ws))
    campaign = await create_campaign(db, f"camp_{uniq}", segment=f"seg_{uniq}", template=f"promo_{uniq}",
                                     variables=INVITE_VARS, default_language="hi")
    plan = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert (plan.skipped, plan.to_send) == ({"opted_out": 2}, 3)


async def test_eta_uses_the_numbers_rate(db: Database, uniq: str, phone_factory) -> None:
    number = f"99{random.randint(10**11, 10**12 - 1)}"
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(300)])
    await db.execute("UPDATE campaigns SET phone_number_id = $2 WHERE id = $1", campaign.id, number)
    await db.execute("INSERT INTO sender_numbers (phone_number_id, workspace, mps) VALUES ($1, $2, 20)",
                     number, f"ws_{uniq}")
    now = _now()
    plan = await send_plan(db, campaign.name, default_number=None, now=now)
    assert (plan.number, plan.mps, plan.tier) == (number, 20.0, None)
    rate = sending_rate(20)  # the engine sends just under the ceiling (19.7/s at 20)
    assert plan.eta.start_at == now and plan.eta.finish_at == now + timedelta(seconds=300 / rate)


async def test_tier_budget_counts_recipients_reached_in_the_last_day(db: Database, uniq: str,
                                                                     phone_factory) -> None:
    number = f"98{random.randint(10**11, 10**12 - 1)}"
    phones = [phone_factory() for _ in range(400)]
    earlier = await campaign_for(db, uniq, phones[:100])
    await db.execute("UPDATE campaigns SET phone_number_id = $2 WHERE id = $1", earlier.id, number)
    await db.execute("INSERT INTO sender_numbers (phone_number_id, workspace, mps, tier, portfolio)"
                     " VALUES ($1, $2, 80, 250, $3)", number, f"ws_{uniq}", f"pf_{uniq}")
    await launch(db, earlier.name)
    reached_at = _now() - timedelta(hours=20)
    # what record_results writes when these were accepted, 20 h ago
    await db.execute("UPDATE ledger SET state = 'accepted', accepted_at = $2, phone_number_id = $3"
                     " WHERE campaign_id = $1", earlier.id, reached_at, number)
    await db.execute("INSERT INTO portfolio_reach (portfolio, wa_id, last_at)"
                     " SELECT $2, wa_id, accepted_at FROM ledger WHERE campaign_id = $1", earlier.id, f"pf_{uniq}")
    # a second campaign over the same workspace: the 100 reached + 300 new contacts
    await add_contacts(db, f"ws_{uniq}", phones[100:])
    second = await create_campaign(db, f"camp2_{uniq}", segment=f"seg_{uniq}", template="daily_campaign_invite",
                                   variables=INVITE_VARS, default_language="hi", phone_number_id=number)
    now = _now()
    plan = await send_plan(db, second.name, default_number=None, now=now)
    assert (plan.to_send, plan.tier, plan.tier_reached, plan.tier_remaining) == (400, 250, 100, 150)
    assert plan.new_recipients == 300
    assert plan.eta.budget_stops_after == 200  # 150 new among the first 200 (a quarter were reached)
    assert plan.eta.continue_at is not None
    assert abs((plan.eta.continue_at - (reached_at + timedelta(hours=24))).total_seconds()) < 1


async def test_preflight_problems_are_listed_not_raised(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(7)])
    await db.execute("UPDATE campaigns SET variables = '{}' WHERE id = $1", campaign.id)
    plan = await send_plan(db, campaign.name, default_number=None, now=_now())
    assert not plan.preflight_ok
    assert any("no sender number" in p for p in plan.problems)
    assert len(plan.problems) >= 2  # the missing variables too
    assert plan.to_send == 7 and plan.by_language == {"hi": 7}


async def test_a_failed_preflight_still_counts_suppression(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(7)])
    await add_contacts(db, f"ws_{uniq}", [phone_factory() for _ in range(2)], opted_in=False)
    await db.execute("UPDATE campaigns SET variables = '{}' WHERE id = $1", campaign.id)
    plan = await send_plan(db, campaign.name, default_number=NUMBER, now=_now())
    assert not plan.preflight_ok and plan.category == "MARKETING"
    assert (plan.audience, plan.skipped, plan.to_send) == (9, {"opted_out": 2}, 7)


@pytest.fixture
def sandbox_80(template_docs: list[dict]) -> Iterator[object]:
    """A sandbox enforcing WhatsApp's default 80 messages/s per number (the session one is unlimited)."""
    from broadcaster.sandbox import SandboxConfig, SandboxThread

    with SandboxThread(SandboxConfig(templates=template_docs, mps=80, phone_number_id=NUMBER,
                                     token="test-token")) as thread:
        yield thread


@pytest.mark.slow
async def test_plan_eta_for_10k_at_80_per_s_is_within_5_percent_of_a_real_run(
        db: Database, db_url: str, uniq: str, sandbox_80: object) -> None:
    number = f"97{random.randint(10**11, 10**12 - 1)}"  # its own 80/s window in the sandbox
    ws = f"ws_{uniq}"
    base = random.randint(100, 999)
    await add_contacts(db, ws, [f"91{base}{i:07d}" for i in range(10_000)])
    await import_templates(db, EXAMPLES / "message_templates.json")
    await create_segment(db, f"seg_{uniq}", SegmentFilter(workspace=ws))
    await db.execute("INSERT INTO sender_numbers (phone_number_id, workspace, mps) VALUES ($1, $2, 80)", number, ws)
    campaign = await create_campaign(db, f"camp_{uniq}", segment=f"seg_{uniq}", template="daily_campaign_invite",
                                     variables=INVITE_VARS, default_language="hi", phone_number_id=number)

    plan = await send_plan(db, campaign.name, default_number=None, now=_now())
    assert plan.to_send == 10_000 and plan.mps == 80
    assert plan.eta.finish_at is not None
    planned_s = (plan.eta.finish_at - plan.eta.start_at).total_seconds()
    assert planned_s == pytest.approx(10_000 / sending_rate(80))  # 78.8/s: just under the ceiling

    settings = settings_for(db_url, sandbox_80, whatsapp_phone_number_id=number)
    runner = CampaignRunner(db, settings, RunOptions(dispatch=DispatchConfig(), only_campaign=campaign.id))
    limit_s = planned_s * 1.05 + 1.0  # past this the 5% bound is lost anyway: stop and say how far it got
    started = trio.current_time()
    with trio.move_on_after(limit_s) as scope:
        await launch(db, campaign.name)  # as `campaign launch` does: freeze, then send with default lanes
        await runner.run()
    real_s = trio.current_time() - started
    accepted = await db.fetchval("SELECT count(*) FROM ledger WHERE campaign_id = $1 AND state = 'accepted'",
                                 campaign.id)
    if scope.cancelled_caught:
        stats = await trio.to_thread.run_sync(sandbox_80.stats)  # type: ignore[attr-defined]
        throttled = stats["rejected_by_code"]
        pytest.fail(f"planned {planned_s:.0f} s at 80/s, but after {real_s:.0f} s only {accepted} of 10,000 were "
                    f"accepted ({accepted / real_s:.1f}/s; sandbox rejections {throttled})")
    assert (await get_campaign(db, campaign.name)).state == "completed"
    assert accepted == 10_000
    assert abs(real_s - planned_s) / planned_s <= 0.05, f"planned {planned_s:.1f} s, real run {real_s:.1f} s"
