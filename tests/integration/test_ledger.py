"""Ledger batch calls against Postgres: claim, record, expire, and their races with webhooks."""

from __future__ import annotations

from broadcaster import campaigns as camp
from broadcaster.db import Database
from broadcaster.ledger import LedgerStore, Outcome
from tests.integration.factories import campaign_for


async def test_two_claimers_never_get_the_same_row(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(50)])
    await camp.launch(db, campaign.name)
    ledger = LedgerStore(db)
    a = await ledger.claim_batch([campaign.id], 30, lease_s=60, owner="a")
    b = await ledger.claim_batch([campaign.id], 30, lease_s=60, owner="b")
    assert len(a) == 30 and len(b) == 20
    assert not {r.id for r in a} & {r.id for r in b}


async def test_expired_lease_becomes_unknown_not_pending(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory() for _ in range(5)])
    await camp.launch(db, campaign.name)
    ledger = LedgerStore(db)
    rows = await ledger.claim_batch([campaign.id], 5, lease_s=0.01, owner="dead")
    await db.execute("SELECT pg_sleep(0.05)")
    assert await ledger.expire_leases([campaign.id]) == 5
    assert (await ledger.counts(campaign.id))["unknown"] == 5
    # the dead worker's late answer still lands (it is the truth), marked as such
    await ledger.record_results([Outcome(rows[0].id, "accepted", wamid="wamid.late", attempt_inc=1)],
                                owner="dead")
    row = await db.fetchrow("SELECT state, unknown_resolution FROM ledger WHERE id = $1", rows[0].id)
    assert (row["state"], row["unknown_resolution"]) == ("accepted", "late_answer")
    assert await ledger.claim_batch([campaign.id], 10, lease_s=60, owner="other") == [], \
        "unknown rows are not claimable before the grace period"


async def test_answer_after_status_webhook_keeps_state_and_fills_accepted_at(
        db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory()])
    await camp.launch(db, campaign.name)
    ledger = LedgerStore(db)
    [row] = await ledger.claim_batch([campaign.id], 1, lease_s=60, owner="w")
    # what the webhook receiver does when `delivered` arrives before the send response is stored
    await db.execute("UPDATE ledger SET state = 'delivered', wamid = 'wamid.x', delivered_at = now(),"
                     " lease_owner = NULL, lease_until = NULL WHERE id = $1", row.id)
    await ledger.record_results([Outcome(row.id, "accepted", wamid="wamid.x", attempt_inc=1, number="n1")],
                                owner="w")
    got = await db.fetchrow("SELECT state, accepted_at, attempts, phone_number_id FROM ledger WHERE id = $1", row.id)
    assert got["state"] == "delivered"
    assert got["accepted_at"] is not None and got["attempts"] == 1 and got["phone_number_id"] == "n1"


async def test_other_owner_cannot_record_over_a_claim(db: Database, uniq: str, phone_factory) -> None:
    campaign = await campaign_for(db, uniq, [phone_factory()])
    await camp.launch(db, campaign.name)
    ledger = LedgerStore(db)
    [row] = await ledger.claim_batch([campaign.id], 1, lease_s=60, owner="w1")
    changed = await ledger.record_results([Outcome(row.id, "failed", code=131026, attempt_inc=1)], owner="w2")
    assert changed == 0
    assert (await ledger.counts(campaign.id))["claimed"] == 1
