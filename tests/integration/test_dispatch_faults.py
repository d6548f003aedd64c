"""The engine's promise under provider faults, pauses and resumes: every recipient once, or an
explained outcome. Each test runs its own sandbox so its fault settings touch nobody else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from broadcaster import campaigns as camp
from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.ledger import LedgerStore
from broadcaster.sandbox import SandboxConfig, SandboxThread
from tests.integration.factories import campaign_for, run_campaign, settings_for


@pytest.fixture
def own_sandbox(template_docs: list[dict]) -> Iterator[SandboxThread]:
    with SandboxThread(SandboxConfig(templates=template_docs, mps=0, seed=7)) as thread:
        yield thread


def recipients_at(sandbox: SandboxThread, phones: list[str]) -> dict[str, int]:
    seen = sandbox.recipients()
    return {p: seen.get(p, 0) for p in phones}


async def test_connection_dropped_after_accept_is_unknown_and_not_resent(
        db: Database, db_url: str, own_sandbox: SandboxThread, uniq: str, phone_factory) -> None:
    """The sandbox accepts, then resets the connection: the row is `unknown`, sent exactly once."""
    phones = [phone_factory() for _ in range(60)]
    campaign = await campaign_for(db, uniq, phones)
    await trio.to_thread.run_sync(lambda: own_sandbox.set_faults(reset_rate=0.25))
    runner = CampaignRunner(db, settings_for(db_url, own_sandbox), RunOptions(
        dispatch=DispatchConfig(lanes=8), mps_override=5000))
    await camp.launch(db, campaign.name)
    runner.options.only_campaign = campaign.id
    with trio.move_on_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            while (await LedgerStore(db).counts(campaign.id))["pending"] + \
                    (await LedgerStore(db).counts(campaign.id))["claimed"] > 0:
                await trio.sleep(0.05)
            runner.stop()
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["unknown"] > 0, counts.by_state
    assert counts["unknown"] + counts["accepted"] == 60, counts.by_state
    seen = await trio.to_thread.run_sync(recipients_at, own_sandbox, phones)
    assert set(seen.values()) == {1}, "every recipient reached the provider exactly once"
    assert (await camp.get_campaign(db, campaign.name)).state == "running", \
        "not completed while outcomes are unknown"


async def test_template_paused_mid_campaign_trips_breaker_then_resume_completes(
        db: Database, db_url: str, own_sandbox: SandboxThread, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(200)]
    campaign = await campaign_for(db, uniq, phones)
    await trio.to_thread.run_sync(
        lambda: own_sandbox.set_faults(template_status={"daily_campaign_invite/hi": "PAUSED"}))
    await run_campaign(db, settings_for(db_url, own_sandbox), campaign,
                       dispatch=DispatchConfig(lanes=4, batch_size=50))
    paused = await camp.get_campaign(db, campaign.name)
    assert (paused.state, paused.pause_reason) == ("paused", "circuit_breaker:132015")
    stats = await trio.to_thread.run_sync(own_sandbox.stats)
    assert stats["rejected_by_code"].get("132015", 0) <= 8, "paused within a few failures"
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["failed"] == 0 and counts["pending"] == 200, "the audience is not burnt"

    await trio.to_thread.run_sync(lambda: own_sandbox.set_faults())
    await camp.resume(db, campaign.name)
    runner = CampaignRunner(db, settings_for(db_url, own_sandbox), RunOptions(
        dispatch=DispatchConfig(lanes=8), mps_override=5000, only_campaign=campaign.id))
    await runner.run()
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["accepted"] == 200, counts.by_state
    assert set((await trio.to_thread.run_sync(recipients_at, own_sandbox, phones)).values()) == {1}
    assert (await camp.get_campaign(db, campaign.name)).state == "completed"


async def test_pause_at_half_then_resume_sends_nobody_twice(
        db: Database, db_url: str, own_sandbox: SandboxThread, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(400)]
    campaign = await campaign_for(db, uniq, phones)
    settings = settings_for(db_url, own_sandbox)
    await camp.launch(db, campaign.name)
    runner = CampaignRunner(db, settings, RunOptions(dispatch=DispatchConfig(lanes=4, batch_size=20),
                                                     mps_override=200, only_campaign=campaign.id))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        while (await LedgerStore(db).counts(campaign.id))["accepted"] < 200:
            await trio.sleep(0.02)
        await camp.pause(db, campaign.name)
    mid = await LedgerStore(db).counts(campaign.id)
    assert 200 <= mid["accepted"] < 400, mid.by_state
    assert mid["claimed"] == 0, "a paused campaign leaves no row claimed"
    assert (await camp.get_campaign(db, campaign.name)).state == "paused"

    await camp.resume(db, campaign.name)
    runner2 = CampaignRunner(db, settings, RunOptions(dispatch=DispatchConfig(lanes=8), mps_override=5000,
                                                      only_campaign=campaign.id))
    await runner2.run()
    assert (await LedgerStore(db).counts(campaign.id))["accepted"] == 400
    assert set((await trio.to_thread.run_sync(recipients_at, own_sandbox, phones)).values()) == {1}


async def test_transient_storm_every_recipient_accepted_once_attempts_bounded(
        db: Database, db_url: str, own_sandbox: SandboxThread, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(150)]
    campaign = await campaign_for(db, uniq, phones)
    await trio.to_thread.run_sync(lambda: own_sandbox.set_faults(
        error_rate={"131000": 0.1, "131016": 0.05}, throttle_next=20))
    await run_campaign(db, settings_for(db_url, own_sandbox), campaign,
                       dispatch=DispatchConfig(lanes=8, backoff_base_s=0.05, throttle_defer_s=0.05,
                                               max_attempts=8))
    counts = await LedgerStore(db).counts(campaign.id)
    assert counts["accepted"] == 150, counts.by_state
    assert set((await trio.to_thread.run_sync(recipients_at, own_sandbox, phones)).values()) == {1}
    worst = await db.fetchval("SELECT max(attempts) FROM ledger WHERE campaign_id = $1", campaign.id)
    assert worst <= 8
