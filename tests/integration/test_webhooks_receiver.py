"""The webhook receiver over real HTTP on 127.0.0.1 against the real ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import trio

from broadcaster.db import Database
from broadcaster.errors import DatabaseError
from broadcaster.inbound import Hooks, StatusEvent, apply_new_statuses, apply_rechecks
from broadcaster.inbound.statuses import WAMID_GATE_LOCK
from broadcaster.ledger import LedgerStore, Outcome
from tests.integration.webhook_support import (
    VERIFY_TOKEN,
    change,
    envelope,
    ledger_rows,
    make_ledger,
    running_receiver,
    signed,
    status,
)

T0 = 1_750_030_000


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def stored_count(db: Database) -> int:
    return await db.fetchval("SELECT count(*) FROM webhook_events")


# ----------------------------------------------------------------------------- HTTP surface


async def test_handshake_right_token_echoes_challenge_wrong_token_is_403(db: Database) -> None:
    async with running_receiver(db) as rx:
        ok = await rx.client.get(f"{rx.url}/webhook", params={
            "hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": VERIFY_TOKEN})
        assert (ok.status_code, ok.text) == (200, "1158201444")
        bad = await rx.client.get(f"{rx.url}/webhook", params={
            "hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "guess"})
        assert bad.status_code == 403
        assert "1158201444" not in bad.text
        stats = rx.service.statistics()
        assert (stats.verified, stats.verify_failed) == (1, 1)


async def test_forged_or_missing_signature_is_401_and_nothing_is_stored(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 1)
    doc = envelope([change([status(seeded.rows[0].wamid, "read", T0)])])
    before = await stored_count(db)
    async with running_receiver(db) as rx:
        forged = await rx.post(doc, secret="not-the-app-secret")
        assert forged.status_code == 401
        body, _ = signed(doc)
        missing = await rx.client.post(f"{rx.url}/webhook", content=body,
                                       headers={"content-type": "application/json"})
        assert missing.status_code == 401
        assert rx.service.statistics().bad_signature == 2
        await rx.applied()
    assert await stored_count(db) == before
    assert (await ledger_rows(db, seeded.campaign_id))[seeded.rows[0].id]["state"] == "accepted"


async def test_body_over_4_mb_is_413_and_nothing_is_stored(db: Database) -> None:
    before = await stored_count(db)
    async with running_receiver(db) as rx:
        big = b'{"object": "whatsapp_business_account", "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
        response = await rx.post(big)
        assert response.status_code == 413
    assert await stored_count(db) == before


async def test_health_and_unknown_routes(db: Database) -> None:
    async with running_receiver(db) as rx:
        health = await rx.client.get(f"{rx.url}/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert (await rx.client.get(f"{rx.url}/nope")).status_code == 404
        assert (await rx.client.put(f"{rx.url}/webhook")).status_code == 405


# ----------------------------------------------------------------------------- applying statuses


async def test_two_entries_two_changes_three_statuses_all_twelve_applied(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 4)
    rows = seeded.rows
    doc = envelope(
        [change([status(rows[0].wamid, s, T0 + k) for k, s in enumerate(("sent", "delivered", "read"))]),
         change([status(rows[1].wamid, s, T0 + k) for k, s in enumerate(("read", "sent", "delivered"))])],
        [change([status(rows[2].wamid, s, T0 + k) for k, s in enumerate(("sent", "delivered", "read"))]),
         change([status(rows[3].wamid, s, T0 + k, code=131047)
                 for k, s in enumerate(("sent", "delivered", "failed"))])],
    )
    async with running_receiver(db) as rx:
        response = await rx.post(doc)
        assert (response.status_code, response.text) == (200, "EVENT_RECEIVED")
        await rx.applied()
    got = await ledger_rows(db, seeded.campaign_id)
    assert [got[r.id]["state"] for r in rows] == ["read", "read", "read", "failed"]
    assert (got[rows[0].id]["sent_at"], got[rows[0].id]["delivered_at"], got[rows[0].id]["read_at"]) == (
        at(T0), at(T0 + 1), at(T0 + 2))
    # read at T0 implies delivered by T0: the earliest time wins, whatever the order
    assert (got[rows[1].id]["sent_at"], got[rows[1].id]["delivered_at"], got[rows[1].id]["read_at"]) == (
        at(T0 + 1), at(T0), at(T0))
    failed = got[rows[3].id]
    assert (failed["error_code"], failed["error_title"], failed["failed_at"]) == (131047, "Error 131047", at(T0 + 2))
    assert failed["delivered_at"] == at(T0 + 1)
    events = await db.fetch("SELECT error_details FROM status_events WHERE wamid = ANY($1::text[])",
                            [r.wamid for r in rows])
    assert len(events) == 12
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = ANY($1::text[])",
                             [r.wamid for r in rows]) == 0
    assert sum(e["error_details"] == "Message failed to send." for e in events) == 1


async def test_same_post_twice_changes_nothing_the_second_time(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 3)
    doc = envelope([change([status(r.wamid, "delivered", T0) for r in seeded.rows]
                           + [status(seeded.rows[0].wamid, "failed", T0 + 5, code=131050)])])
    async with running_receiver(db) as rx:
        assert (await rx.post(doc)).status_code == 200
        await rx.applied()
        first = await ledger_rows(db, seeded.campaign_id)
        contact = await db.fetchrow("SELECT * FROM contacts WHERE id = $1", seeded.rows[0].contact_id)
        assert (await rx.post(doc)).status_code == 200
        await rx.applied()
        assert rx.service.statistics().apply.new_statuses == 4
    assert await ledger_rows(db, seeded.campaign_id) == first  # updated_at included
    assert await db.fetchrow("SELECT * FROM contacts WHERE id = $1", seeded.rows[0].contact_id) == contact
    assert await db.fetchval("SELECT count(*) FROM status_events WHERE wamid = ANY($1::text[])",
                             [r.wamid for r in seeded.rows]) == 4
    assert await db.fetchval("SELECT count(*) FROM consent_events WHERE workspace = $1", seeded.workspace) == 1


async def test_delivered_before_the_send_response_is_applied_once_the_wamid_is_written(
        db: Database, uniq: str) -> None:
    """The status arrives while the row is still claimed (no wamid, no callback data): it is kept,
    then applied by the very UPDATE that stores the send response."""
    seeded = await make_ledger(db, uniq, 1, state="claimed", with_wamid=False, lease_owner="w1")
    row = seeded.rows[0]
    async with running_receiver(db) as rx:
        assert (await rx.post(envelope([change([status(row.wamid, "delivered", T0 + 3)])]))).status_code == 200
        await rx.applied()
        assert rx.service.statistics().apply.unmatched == 1
    before = (await ledger_rows(db, seeded.campaign_id))[row.id]
    assert (before["state"], before["wamid"]) == ("claimed", None)
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", row.wamid) == 1

    changed = await LedgerStore(db).record_results([Outcome(row.id, "accepted", wamid=row.wamid)], owner="w1")
    assert changed == 1
    after = (await ledger_rows(db, seeded.campaign_id))[row.id]
    assert (after["state"], after["wamid"], after["delivered_at"]) == ("delivered", row.wamid, at(T0 + 3))
    assert after["accepted_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", row.wamid) == 0


async def test_callback_data_moves_a_claimed_row_forward_and_the_late_response_does_not_undo_it(
        db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 1, state="claimed", with_wamid=False, lease_owner="w1")
    row = seeded.rows[0]
    callback = f"{seeded.campaign_id}:{row.id}"
    async with running_receiver(db) as rx:
        await rx.post(envelope([change([status(row.wamid, "sent", T0, callback=callback),
                                        status(row.wamid, "read", T0 + 9, callback=callback)])]))
        await rx.applied()
    moved = (await ledger_rows(db, seeded.campaign_id))[row.id]
    assert (moved["state"], moved["wamid"], moved["lease_owner"]) == ("read", row.wamid, None)
    assert moved["delivered_at"] == moved["read_at"] == at(T0 + 9)  # read implies delivered
    # the late send response does not undo the webhook; it only fills in when it was accepted
    assert await LedgerStore(db).record_results([Outcome(row.id, "accepted", wamid=row.wamid)], owner="w1") == 1
    assert (await ledger_rows(db, seeded.campaign_id))[row.id]["state"] == "read"
    assert await db.fetchval("SELECT accepted_at FROM ledger WHERE id = $1", row.id) is not None


async def test_unknown_send_is_settled_by_callback_data(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 2, state="unknown", with_wamid=False)
    a, b = seeded.rows
    async with running_receiver(db) as rx:
        await rx.post(envelope([change([
            status(a.wamid, "sent", T0, callback=f"{seeded.campaign_id}:{a.id}"),
            # someone else's campaign id with our row id: not ours, never matched
            status(b.wamid, "sent", T0, callback=f"{seeded.campaign_id + 1000}:{b.id}")])]))
        await rx.applied()
    got = await ledger_rows(db, seeded.campaign_id)
    assert (got[a.id]["state"], got[a.id]["unknown_resolution"], got[a.id]["wamid"]) == ("sent", "webhook", a.wamid)
    assert (got[b.id]["state"], got[b.id]["unknown_resolution"]) == ("unknown", None)


async def test_failed_after_delivered_is_kept_and_late_delivered_does_not_undo_it(
        db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 2)
    a, b = seeded.rows
    async with running_receiver(db) as rx:
        await rx.post(envelope([change([status(a.wamid, "delivered", T0), status(b.wamid, "failed", T0 + 1)])]))
        await rx.applied()
        await rx.post(envelope([change([status(a.wamid, "failed", T0 + 2, code=131049),
                                        status(b.wamid, "delivered", T0), status(b.wamid, "read", T0)])]))
        await rx.applied()
    got = await ledger_rows(db, seeded.campaign_id)
    assert (got[a.id]["state"], got[a.id]["error_code"]) == ("failed", 131049)
    assert (got[b.id]["state"], got[b.id]["error_code"], got[b.id]["read_at"]) == ("failed", 131026, at(T0))


async def test_131050_opts_the_contact_out_and_131049_does_not(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 2)
    stop, capped = seeded.rows
    async with running_receiver(db) as rx:
        await rx.post(envelope([change([status(stop.wamid, "failed", T0, code=131050),
                                        status(capped.wamid, "failed", T0, code=131049)])]))
        await rx.applied()
    contacts = {r["id"]: r for r in await db.fetch(
        "SELECT id, marketing_opt_in, consent_source, consent_at FROM contacts WHERE workspace = $1",
        seeded.workspace)}
    assert (contacts[stop.contact_id]["marketing_opt_in"], contacts[stop.contact_id]["consent_source"]) == (
        False, "error_131050")
    assert contacts[capped.contact_id]["marketing_opt_in"] is True
    events = await db.fetch("SELECT wa_id, opted_in, source FROM consent_events WHERE workspace = $1",
                            seeded.workspace)
    assert [(e["wa_id"], e["opted_in"], e["source"]) for e in events] == [(stop.wa_id, False, "error_131050")]
    got = await ledger_rows(db, seeded.campaign_id)
    assert (got[capped.id]["state"], got[capped.id]["error_code"]) == ("failed", 131049)


async def test_unknown_field_is_answered_200_and_dead_lettered(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 1)
    doc = envelope([change([status(seeded.rows[0].wamid, "sent", T0)]),
                    {"field": "calls", "value": {"calls": [{"id": "c1"}]}}])
    async with running_receiver(db) as rx:
        response = await rx.post(doc)
        assert response.status_code == 200
        not_json = await rx.post(b"\xff not json \x00")
        assert not_json.status_code == 200
        await rx.applied()
    event_ids = [r["id"] for r in await db.fetch("SELECT id FROM webhook_events ORDER BY id DESC LIMIT 2")]
    dead = await db.fetch("SELECT webhook_event_id, field, location, reason, payload FROM webhook_dead_letters"
                          " WHERE webhook_event_id = ANY($1::bigint[]) ORDER BY id", event_ids)
    assert [(d["field"], d["location"], d["reason"]) for d in dead] == [
        ("calls", "entry[0].changes[1]", "unknown field 'calls'"), (None, "body", dead[1]["reason"])]
    assert dead[1]["reason"].startswith("body is not JSON")
    assert orjson.loads(dead[0]["payload"]) == {"field": "calls", "value": {"calls": [{"id": "c1"}]}}
    assert (await ledger_rows(db, seeded.campaign_id))[seeded.rows[0].id]["state"] == "sent"
    raw = await db.fetchval("SELECT body FROM webhook_events WHERE id = $1", max(event_ids))
    assert bytes(raw) == b"\xff not json \x00"  # kept byte for byte


async def test_messages_and_template_changes_go_to_the_hooks_failures_are_kept(db: Database, uniq: str) -> None:
    calls: list[tuple[str, Any]] = []

    async def messages_hook(db_: Database, value: dict[str, Any]) -> None:
        calls.append(("messages", value["messages"][0]["id"]))

    async def change_hook(db_: Database, field: str, value: dict[str, Any]) -> None:
        calls.append((field, value.get("event")))
        if value.get("event") == "BOOM":
            raise RuntimeError("health monitor bug")

    seeded = await make_ledger(db, uniq, 1)
    msg = {"from": "16505551234", "id": f"wamid.in.{uniq}", "timestamp": "1749416383", "type": "button",
           "button": {"payload": "STOP", "text": "Stop promotions"},
           "context": {"from": "15550783881", "id": seeded.rows[0].wamid}}
    doc = envelope([change([status(seeded.rows[0].wamid, "read", T0)], messages=[msg],
                           contacts=[{"profile": {"name": "Sheena"}, "wa_id": "16505551234"}]),
                    {"field": "message_template_status_update", "value": {"event": "PAUSED"}},
                    {"field": "message_template_status_update", "value": {"event": "BOOM"}}])
    async with running_receiver(db, hooks=Hooks(messages=messages_hook, change=change_hook)) as rx:
        assert (await rx.post(doc)).status_code == 200
        await rx.applied()
        stats = rx.service.statistics().apply
    assert ("messages", f"wamid.in.{uniq}") in calls and ("message_template_status_update", "PAUSED") in calls
    assert calls.count(("message_template_status_update", "BOOM")) >= 1
    assert (stats.hooks_ok, stats.hook_errors >= 1) == (2, True)
    boom = await db.fetchrow("SELECT handled_at, attempts, last_error FROM webhook_changes"
                             " WHERE value->>'event' = 'BOOM' ORDER BY id DESC LIMIT 1")
    assert boom["handled_at"] is None and boom["attempts"] >= 1
    assert "health monitor bug" in boom["last_error"]
    assert (await ledger_rows(db, seeded.campaign_id))[seeded.rows[0].id]["state"] == "read"


@pytest.mark.parametrize(("error", "reason"), [
    (DatabaseError("database error: simulated bug"), "processing failed 3 times: database error: simulated bug"),
    (TypeError("unhashable type: 'list'"), "processing failed 3 times: TypeError: unhashable type: 'list'"),
], ids=["database-error", "bug"])
async def test_a_body_that_keeps_failing_is_dead_lettered_and_the_rest_flows(
        db: Database, uniq: str, monkeypatch: pytest.MonkeyPatch, error: Exception, reason: str) -> None:
    """A database error or a bug that one body triggers: retried alone, then dead-lettered."""
    from broadcaster.inbound import apply as apply_module

    real = apply_module.apply_new_statuses
    poison = f"wamid.poison.{uniq}"

    async def flaky(conn, events):  # noqa: ANN001, ANN202
        if any(ev.wamid == poison for ev in events):
            raise error
        return await real(conn, events)

    monkeypatch.setattr(apply_module, "apply_new_statuses", flaky)
    monkeypatch.setattr(apply_module, "RETRY_BASE_S", 0.001)
    seeded = await make_ledger(db, uniq, 2)
    async with running_receiver(db) as rx:
        await rx.post(envelope([change([status(seeded.rows[0].wamid, "sent", T0)])]))
        await rx.post(envelope([change([status(poison, "sent", T0)])]))
        await rx.post(envelope([change([status(seeded.rows[1].wamid, "read", T0)])]))
        await rx.applied()
        assert rx.service.statistics().apply.poisoned == 1
    got = await ledger_rows(db, seeded.campaign_id)
    assert [got[r.id]["state"] for r in seeded.rows] == ["sent", "read"]
    stored = await db.fetchval("SELECT reason FROM webhook_dead_letters WHERE location = 'body'"
                               " ORDER BY id DESC LIMIT 1")
    assert stored == reason


async def test_recheck_waits_for_a_wamid_writer_in_flight(db: Database, uniq: str) -> None:
    """The race the gate closes: the send response's UPDATE is open (wamid written, uncommitted)
    while the status for that wamid is applied. Neither sees the other; the recheck must wait for
    the writer's commit and then apply the status."""
    seeded = await make_ledger(db, uniq, 1, state="claimed", with_wamid=False, lease_owner="w1")
    row = seeded.rows[0]
    async with running_receiver(db) as rx:
        await rx.applied()  # the worker's start-up pass is over: its next lock wait is the recheck
        async with db.transaction() as writer:
            await writer.execute("UPDATE ledger SET state = 'accepted', wamid = $2, accepted_at = now()"
                                 " WHERE id = $1", row.id, row.wamid)
            assert (await rx.post(envelope([change([status(row.wamid, "delivered", T0)])]))).status_code == 200
            # The recheck is now queued behind the open writer. That wait happens inside Postgres and
            # signals nothing to this process, so pg_locks is the only place to see it: poll it.
            with trio.fail_after(10):
                while not await db.fetchval(  # noqa: ASYNC110
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND objid = $1 AND database = (SELECT oid FROM pg_database"
                        "                                WHERE datname = current_database())",
                        WAMID_GATE_LOCK):
                    await trio.sleep(0.01)
            assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", row.wamid) == 1
            await writer.execute("COMMIT")
            await writer.execute("BEGIN")  # the context manager commits again on exit
        await rx.applied()
    got = (await ledger_rows(db, seeded.campaign_id))[row.id]
    assert (got["state"], got["delivered_at"]) == ("delivered", at(T0))
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", row.wamid) == 0


async def test_rechecks_go_through_every_marked_event_in_rounds(db: Database, uniq: str) -> None:
    seeded = await make_ledger(db, uniq, 5, state="claimed", with_wamid=False, lease_owner="w1")
    body_id = await db.fetchval("INSERT INTO webhook_events (body) VALUES ('{}') RETURNING id")
    events = [StatusEvent(r.wamid, "sent", at(T0), body_id) for r in seeded.rows]
    async with db.transaction() as conn:
        assert (await apply_new_statuses(conn, events)).unmatched == 5
    wamids = [r.wamid for r in seeded.rows]
    await db.execute("UPDATE ledger SET wamid = $2 WHERE id = $1", seeded.rows[0].id, seeded.rows[0].wamid)
    # the trigger applied the first one already; the other four take two rounds of two
    result = await apply_rechecks(db, limit=2)
    assert (result.events, result.unmatched) == (0, 4)
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = ANY($1::text[]) AND recheck",
                             wamids) == 0
    await db.execute("UPDATE ledger SET wamid = 'wamid.' || $2 || '.' || wa_id WHERE campaign_id = $1",
                     seeded.campaign_id, uniq)
    got = await ledger_rows(db, seeded.campaign_id)
    assert {got[r.id]["state"] for r in seeded.rows} == {"sent"}
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = ANY($1::text[])", wamids) == 0


async def test_authentic_bodies_of_unexpected_types_are_dead_letters_and_the_receiver_goes_on(
        db: Database, uniq: str) -> None:
    """Values of a type parse_webhook did not foresee (a list for `status`, a superscript digit in our
    callback data) once killed the apply worker at every start; now each is a dead letter."""
    seeded = await make_ledger(db, uniq, 3)
    odd = [{**status(f"wamid.odd1.{uniq}", "sent", T0), "status": ["sent"]},
           {**status(f"wamid.odd2.{uniq}", "sent", T0), "status": {"a": 1}}]
    async with running_receiver(db) as rx:
        for item in odd:
            assert (await rx.post(envelope([change([item])]))).status_code == 200
        cb = status(seeded.rows[0].wamid, "delivered", T0, callback="7:²")
        assert (await rx.post(envelope([change([cb])]))).status_code == 200
        assert (await rx.post(envelope([change([status(seeded.rows[1].wamid, "read", T0)])]))).status_code == 200
        await rx.applied()
        assert (await rx.post(envelope([change([status(seeded.rows[2].wamid, "read", T0)])]))).status_code == 200
        await rx.applied()
        assert rx.service.statistics().apply.poisoned == 0
    got = await ledger_rows(db, seeded.campaign_id)
    assert [got[r.id]["state"] for r in seeded.rows] == ["delivered", "read", "read"]
    reasons = await db.fetch("SELECT location, reason FROM webhook_dead_letters WHERE payload->>'id' = ANY($1)"
                             " ORDER BY id", [f"wamid.odd1.{uniq}", f"wamid.odd2.{uniq}"])
    assert [r["location"] for r in reasons] == ["entry[0].changes[0].value.statuses[0]"] * 2
    assert all("is not one of" in r["reason"] for r in reasons)


async def test_a_change_whose_hook_keeps_failing_becomes_a_dead_letter(db: Database, uniq: str) -> None:
    from broadcaster.inbound.apply import HOOK_ATTEMPTS

    async def change_hook(db_: Database, field: str, value: dict[str, Any]) -> None:
        if value.get("event") == f"BOOM{uniq}":
            raise RuntimeError("index row size exceeds maximum")

    async with running_receiver(db, hooks=Hooks(change=change_hook)) as rx:
        await rx.post(envelope([{"field": "message_template_status_update", "value": {"event": f"BOOM{uniq}"}}]))
        await rx.applied()
        for i in range(HOOK_ATTEMPTS + 1):  # each new change starts a hook round that retries BOOM
            await rx.post(envelope([{"field": "message_template_status_update", "value": {"event": f"ok{i}"}}]))
            await rx.applied()
        stats = rx.service.statistics().apply
    row = await db.fetchrow("SELECT id, handled_at, attempts FROM webhook_changes WHERE value->>'event' = $1",
                            f"BOOM{uniq}")
    assert (row["handled_at"], row["attempts"]) == (None, HOOK_ATTEMPTS)
    dead = await db.fetch("SELECT reason FROM webhook_dead_letters WHERE location = $1", f"webhook_changes {row['id']}")
    assert len(dead) == 1
    assert dead[0]["reason"].startswith(f"its hook failed {HOOK_ATTEMPTS} times, left unhandled: RuntimeError")
    assert stats.dead_letters >= 1
