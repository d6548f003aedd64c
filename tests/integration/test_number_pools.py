"""Daily tier budgets and sender-number pools against the sandbox over HTTP."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import trio

from broadcaster import campaigns as camp
from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.db import Database, open_db
from broadcaster.dispatch import DispatchConfig
from broadcaster.ledger import LedgerStore
from broadcaster.numbers import add_number, tier_usage
from broadcaster.plan import send_plan
from tests.integration.factories import campaign_for, run_campaign, settings_for


def new_number() -> str:
    return f"6{random.randint(10**13, 10**14 - 1)}"


async def test_tier_used_up_pauses_with_reason_and_resume_time_never_fails(
        db: Database, db_url: str, sandbox, uniq: str, phone_factory) -> None:
    number = new_number()
    phones = [phone_factory() for _ in range(150)]
    campaign = await campaign_for(db, uniq, phones)
    await add_number(db, number, workspace=f"ws_{uniq}", mps=1000, tier=100, portfolio=f"pf_{uniq}")
    await db.execute("UPDATE campaigns SET phone_number_id = $2 WHERE id = $1", campaign.id, number)
    await run_campaign(db, settings_for(db_url, sandbox), campaign)

    c = await camp.get_campaign(db, campaign.name)
    assert (c.state, c.pause_reason) == ("paused", "tier_exhausted")
    assert c.pause_detail["tier"] == 100 and c.pause_detail["reached_24h"] == 100
    assert c.pause_detail["resume_at"] is not None
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["accepted"] == 100 and counts["pending"] == 50 and counts["failed"] == 0, counts.by_state


async def test_two_workers_claiming_at_once_never_overshoot_the_tier(
        db: Database, db_url: str, sandbox, uniq: str, phone_factory) -> None:
    """Two workers with their own connections claim small batches of one campaign at the same
    time: each claim counts the tier under the portfolio's lock, so 250 is never passed."""
    number = new_number()
    phones = [phone_factory() for _ in range(600)]
    campaign = await campaign_for(db, uniq, phones)
    await add_number(db, number, workspace=f"ws_{uniq}", mps=1000, tier=250, portfolio=f"pf_{uniq}")
    await db.execute("UPDATE campaigns SET phone_number_id = $2 WHERE id = $1", campaign.id, number)
    await camp.launch(db, campaign.name)

    accepted: dict[str, int] = {}

    async def worker(name: str) -> None:
        async with open_db(db_url, max_size=4) as own:
            runner = CampaignRunner(own, settings_for(db_url, sandbox), RunOptions(
                dispatch=DispatchConfig(lanes=8, batch_size=20), mps_override=5000, only_campaign=campaign.id))
            runner.dispatcher.owner = name  # two hosts, as far as leases are concerned
            await runner.run()
            accepted[name] = runner.dispatcher.stats.outcomes.get("accepted", 0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "host-a:1")
        nursery.start_soon(worker, "host-b:1")

    c = await camp.get_campaign(db, campaign.name)
    assert (c.state, c.pause_reason, c.pause_detail["reached_24h"]) == ("paused", "tier_exhausted", 250)
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["accepted"] == 250 and counts["pending"] == 350, counts.by_state
    assert sum(accepted.values()) == 250 and min(accepted.values()) > 0, accepted
    seen = await trio.to_thread.run_sync(sandbox.recipients)
    assert sum(1 for p in phones if seen.get(p)) == 250, "the provider saw exactly the tier's worth"


async def test_two_number_pool_spills_over_500_then_700_nobody_twice(
        db: Database, db_url: str, sandbox, uniq: str, phone_factory) -> None:
    first, second = new_number(), new_number()
    phones = [phone_factory() for _ in range(1200)]
    campaign = await campaign_for(db, uniq, phones)
    # two business portfolios: two daily budgets
    await add_number(db, first, workspace=f"ws_{uniq}", mps=1000, tier=500, portfolio=f"pf_{uniq}_a")
    await add_number(db, second, workspace=f"ws_{uniq}", mps=1000, tier=10_000, portfolio=f"pf_{uniq}_b")
    await db.execute("UPDATE campaigns SET phone_number_id = $2, number_pool = $3 WHERE id = $1",
                     campaign.id, first, [first, second])
    await run_campaign(db, settings_for(db_url, sandbox), campaign)

    by_number = {r["phone_number_id"]: r["n"] for r in await db.fetch(
        "SELECT phone_number_id, count(*)::int AS n FROM ledger WHERE campaign_id = $1 GROUP BY 1", campaign.id)}
    assert by_number == {first: 500, second: 700}
    assert (await camp.get_campaign(db, campaign.name)).state == "completed"
    stats = await trio.to_thread.run_sync(sandbox.stats)
    assert stats["accepted_by_number"][first] == 500
    assert stats["accepted_by_number"][second] == 700
    seen = await trio.to_thread.run_sync(sandbox.recipients)
    assert all(seen.get(p) == 1 for p in phones), "no recipient gets it from both numbers"


async def test_numbers_of_one_portfolio_share_its_daily_budget(
        db: Database, db_url: str, sandbox, uniq: str, phone_factory) -> None:
    """Meta's limit is per business portfolio (API doc §3.3): a pool inside one portfolio cannot
    spill over; 300 reached from either number count against the same 300."""
    first, second = new_number(), new_number()
    phones = [phone_factory() for _ in range(400)]
    campaign = await campaign_for(db, uniq, phones)
    for n in (first, second):
        await add_number(db, n, workspace=f"ws_{uniq}", mps=1000, tier=300, portfolio=f"pf_{uniq}")
    await db.execute("UPDATE campaigns SET phone_number_id = $2, number_pool = $3 WHERE id = $1",
                     campaign.id, first, [first, second])
    await run_campaign(db, settings_for(db_url, sandbox), campaign)

    c = await camp.get_campaign(db, campaign.name)
    assert (c.state, c.pause_reason, c.pause_detail["reached_24h"]) == ("paused", "tier_exhausted", 300)
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["accepted"] == 300 and counts["pending"] == 100 and counts["failed"] == 0, counts.by_state
    # another portfolio's number still has its own budget
    other = new_number()
    await add_number(db, other, workspace=f"ws_{uniq}", mps=1000, tier=300, portfolio=f"pf_{uniq}_other")
    usage = await tier_usage(db, other, 300, default_number=None)
    assert (usage.reached, usage.remaining) == (0, 300)
    shared = await tier_usage(db, second, 300, default_number=None)
    assert (shared.reached, shared.remaining) == (300, 0)


async def test_numbers_set_mps_keeps_a_quality_lowered_rate(db: Database, uniq: str) -> None:
    from broadcaster.numbers import get_number, set_number

    number = new_number()
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", f"ws_{uniq}")
    await add_number(db, number, workspace=f"ws_{uniq}", mps=80)
    assert (await set_number(db, number, mps=200)).mps == 200
    # WhatsApp rated it RED: the ceiling is kept aside and the rate halved (health.py)
    await db.execute("UPDATE sender_numbers SET quality = 'RED', mps_ceiling = 200, mps = 100"
                     " WHERE phone_number_id = $1", number)
    changed = await set_number(db, number, mps=300)
    assert changed.mps == 150
    assert await db.fetchval("SELECT mps_ceiling FROM sender_numbers WHERE phone_number_id = $1", number) == 300
    assert (await get_number(db, number)).quality == "RED"


async def test_a_campaign_without_a_number_sends_from_its_workspaces_own_numbers(
        db: Database, db_url: str, sandbox, uniq: str, phone_factory) -> None:
    """Each workspace sends from its own numbers: with two registered (the first on a used-up tier)
    and no WHATSAPP_PHONE_NUMBER_ID, a campaign without --number uses them as a pool in the order
    they were added; the plan names the first."""
    first, second = new_number(), new_number()
    phones = [phone_factory() for _ in range(60)]
    campaign = await campaign_for(db, uniq, phones)
    await add_number(db, first, workspace=f"ws_{uniq}", mps=1000, tier=40, portfolio=f"pf_{uniq}_a")
    await add_number(db, second, workspace=f"ws_{uniq}", mps=1000, portfolio=f"pf_{uniq}_b")
    plan = await send_plan(db, campaign.name, default_number=None, now=datetime.now(UTC))
    assert plan.preflight_ok and plan.number == first and plan.tier == 40, plan.problems
    await run_campaign(db, settings_for(db_url, sandbox, whatsapp_phone_number_id=None), campaign)

    by_number = {r["phone_number_id"]: r["n"] for r in await db.fetch(
        "SELECT phone_number_id, count(*)::int AS n FROM ledger WHERE campaign_id = $1 AND state = 'accepted'"
        " GROUP BY 1", campaign.id)}
    assert by_number == {first: 40, second: 20}, (first, second)
    assert (await camp.get_campaign(db, campaign.name)).state == "completed"
