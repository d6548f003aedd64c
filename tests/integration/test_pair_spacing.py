"""Pair spacing (issue 5, budget 2): one message per recipient per interval, across campaigns and
workers, enforced by the claim against Postgres; a recipient that must wait never holds back others
and never loses an attempt."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import trio

from broadcaster import campaigns as camp
from broadcaster.campaign_run import CampaignRunner, RunOptions
from broadcaster.campaigns import Campaign, get_campaign
from broadcaster.config import ConfigError, Settings
from broadcaster.db import Database
from broadcaster.dispatch import DispatchConfig
from broadcaster.ledger import LedgerStore, Outcome
from broadcaster.sandbox import SandboxConfig, SandboxThread
from tests.integration.factories import campaign_for, settings_for


async def two_campaigns(db: Database, uniq: str, phones: list[str]) -> tuple[Campaign, Campaign]:
    """Two running campaigns (two workspaces) over the same recipients."""
    a = await campaign_for(db, uniq + "a", phones)
    b = await campaign_for(db, uniq + "b", phones)
    await camp.launch(db, a.name)
    await camp.launch(db, b.name)
    return a, b


async def test_a_recipient_in_two_campaigns_is_claimed_once_then_after_the_interval(
        db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(3)]
    a, b = await two_campaigns(db, uniq, phones)
    ledger = LedgerStore(db)

    first = await ledger.claim_batch([a.id, b.id], 10, lease_s=60, owner="w", pair_spacing_s=1.0)
    assert sorted(r.wa_id for r in first) == sorted(phones), "one row per recipient"
    deferred = await db.fetch("SELECT state, attempts, retry_at - now() AS wait FROM ledger"
                              " WHERE campaign_id = ANY($1::int[]) AND state = 'pending'", [a.id, b.id])
    assert len(deferred) == 3
    assert all(r["attempts"] == 0 and timedelta(0) < r["wait"] <= timedelta(seconds=1) for r in deferred)
    assert await ledger.claim_batch([a.id, b.id], 10, lease_s=60, owner="w", pair_spacing_s=1.0) == []

    await ledger.record_results([Outcome(r.id, "accepted", wamid=f"wamid.{uniq}{r.id}", attempt_inc=1)
                                 for r in first], owner="w", pair_spacing_s=1.0)
    # the slot frees 1 s after the answers were recorded, not before
    assert await ledger.claim_batch([a.id, b.id], 10, lease_s=60, owner="w", pair_spacing_s=1.0) == []
    second = []
    with trio.fail_after(10):
        while len(second) < 3:
            await trio.sleep(0.1)
            second += await ledger.claim_batch([a.id, b.id], 10, lease_s=60, owner="w", pair_spacing_s=1.0)
    assert sorted(r.wa_id for r in second) == sorted(phones)
    assert {r.campaign_id for r in first} | {r.campaign_id for r in second} == {a.id, b.id}
    gaps = await db.fetch(
        "SELECT l2.claimed_at - l1.accepted_at AS gap FROM ledger l1 JOIN ledger l2 USING (wa_id)"
        " WHERE l1.id = ANY($1::bigint[]) AND l2.id = ANY($2::bigint[])",
        [r.id for r in first], [r.id for r in second])
    assert len(gaps) == 3 and all(g["gap"] >= timedelta(seconds=1) for g in gaps)


async def test_a_recipient_that_must_wait_does_not_hold_back_the_others(
        db: Database, uniq: str, phone_factory) -> None:
    busy, *free = [phone_factory() for _ in range(5)]
    other = await campaign_for(db, uniq + "o", [busy])
    await camp.launch(db, other.name)
    ledger = LedgerStore(db)
    [held] = await ledger.claim_batch([other.id], 1, lease_s=60, owner="w", pair_spacing_s=6.0)
    campaign = await campaign_for(db, uniq, [busy, *free])
    await camp.launch(db, campaign.name)

    rows = await ledger.claim_batch([campaign.id], 10, lease_s=60, owner="w", pair_spacing_s=6.0)
    assert sorted(r.wa_id for r in rows) == sorted(free)
    waiting = await db.fetchrow("SELECT state, attempts, retry_at > now() AS later FROM ledger"
                                " WHERE campaign_id = $1 AND wa_id = $2", campaign.id, busy)
    assert (waiting["state"], waiting["attempts"], waiting["later"]) == ("pending", 0, True)
    assert held.wa_id == busy


async def test_two_workers_claiming_at_once_never_share_a_recipient(
        db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(200)]
    a, b = await two_campaigns(db, uniq, phones)
    ledger = LedgerStore(db)
    got: dict[str, list] = {}

    async def claim(owner: str, campaign_id: int) -> None:
        got[owner] = await ledger.claim_batch([campaign_id], 200, lease_s=60, owner=owner, pair_spacing_s=6.0)

    async with trio.open_nursery() as nursery:  # two pooled connections, two concurrent statements
        nursery.start_soon(claim, "w1", a.id)
        nursery.start_soon(claim, "w2", b.id)
    claimed = [r.wa_id for rows in got.values() for r in rows]
    assert len(claimed) == len(set(claimed)), "a recipient was claimed by both workers"
    assert len(claimed) == 200, "every recipient is claimed by one of them"


async def test_rows_given_back_free_their_recipients_at_once(db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(4)]
    a, b = await two_campaigns(db, uniq, phones)
    ledger = LedgerStore(db)
    rows = await ledger.claim_batch([a.id], 10, lease_s=60, owner="w", pair_spacing_s=6.0)
    await ledger.release_claims([r.id for r in rows], owner="w")  # e.g. a pause before they were sent
    again = await ledger.claim_batch([b.id], 10, lease_s=60, owner="w", pair_spacing_s=6.0)
    assert sorted(r.wa_id for r in again) == sorted(phones)


async def test_spacing_zero_claims_every_row(db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(3)]
    a, b = await two_campaigns(db, uniq, phones)
    rows = await LedgerStore(db).claim_batch([a.id, b.id], 10, lease_s=60, owner="w", pair_spacing_s=0)
    assert len(rows) == 6


@pytest.fixture
def pair_limited(template_docs: list[dict]) -> Iterator[SandboxThread]:
    """A sandbox that answers 131056 to a second send to one recipient within 1 s."""
    with SandboxThread(SandboxConfig(templates=template_docs, mps=0, pair_interval_s=1.0,
                                     phone_number_id="106540352242922", token="test-token")) as sandbox:
        yield sandbox


async def test_two_campaigns_to_the_same_audience_never_trip_the_pair_limit(
        db: Database, db_url: str, pair_limited: SandboxThread, uniq: str, phone_factory) -> None:
    """Two workers send two campaigns to the same 40 recipients at once with 1.2 s spacing against
    a sandbox enforcing 1 s: no 131056 at all, everyone gets both."""
    phones = [phone_factory() for _ in range(40)]
    a, b = await two_campaigns(db, uniq, phones)
    settings = settings_for(db_url, pair_limited, pair_spacing_s=1.2)
    runners = [CampaignRunner(db, settings, RunOptions(dispatch=DispatchConfig(lanes=8),
                                                       mps_override=5000, only_campaign=c.id))
               for c in (a, b)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.run)
    stats = await trio.to_thread.run_sync(pair_limited.stats)
    per_recipient = await trio.to_thread.run_sync(pair_limited.recipients)
    assert "131056" not in stats["rejected_by_code"], stats["rejected_by_code"]
    assert all(per_recipient.get(p) == 2 for p in phones), "each recipient gets both campaigns once"
    for c in (a, b):
        assert (await get_campaign(db, c.name)).state == "completed"
        assert (await LedgerStore(db).counts(c.id))["accepted"] == 40


@pytest.mark.parametrize("value", ["-1", "abc", "4000"])
def test_a_bad_spacing_setting_is_named(value: str) -> None:
    with pytest.raises(ConfigError, match="BROADCASTER_PAIR_SPACING_S"):
        Settings.from_env({"BROADCASTER_PAIR_SPACING_S": value})


def test_spacing_defaults_to_six_seconds_and_zero_turns_it_off() -> None:
    assert Settings.from_env({}).pair_spacing_s == 6.0
    assert Settings.from_env({"BROADCASTER_PAIR_SPACING_S": "0"}).pair_spacing_s == 0.0
