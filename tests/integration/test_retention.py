"""`db prune`: old webhook data goes, anything still needed or young stays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broadcaster.db import Database
from broadcaster.errors import UsageError
from broadcaster.retention import parse_age, prune


async def _body(db: Database, age_days: int, *, processed: bool = True) -> int:
    return await db.fetchval(
        "INSERT INTO webhook_events (body, received_at, processed_at) VALUES ('{}', now() - make_interval(days => $1),"
        " CASE WHEN $2 THEN now() - make_interval(days => $1) END) RETURNING id", age_days, processed)


async def test_prune_deletes_old_processed_data_and_keeps_what_is_young_or_still_needed(
        db: Database, uniq: str) -> None:
    old, young, unprocessed = await _body(db, 40), await _body(db, 3), await _body(db, 40, processed=False)
    old_with_open_change, old_with_dead = await _body(db, 40), await _body(db, 40)
    await db.execute("INSERT INTO webhook_changes (webhook_event_id, field, value, handled_at) VALUES"
                     " ($1, 'messages', '{}', now() - interval '40 days'),"
                     " ($2, 'messages', '{}', NULL)", old, old_with_open_change)
    await db.execute("INSERT INTO webhook_dead_letters (webhook_event_id, location, reason, created_at) VALUES"
                     " ($1, 'body', 'x', now() - interval '1 day')", old_with_dead)
    await db.execute(
        "INSERT INTO status_events (wamid, status, ts, webhook_event_id, received_at) VALUES"
        " ($1, 'sent', now(), 0, now() - interval '40 days'), ($2, 'sent', now(), 0, now() - interval '40 days'),"
        " ($3, 'sent', now(), 0, now())", f"wamid.old.{uniq}", f"wamid.pending.{uniq}", f"wamid.young.{uniq}")
    pending_id = await db.fetchval("SELECT id FROM status_events WHERE wamid = $1", f"wamid.pending.{uniq}")
    await db.execute("INSERT INTO status_pending (event_id, wamid, status, ts, created_at)"
                     " VALUES ($1, $2, 'sent', now(), now() - interval '10 days')", pending_id, f"wamid.pending.{uniq}")

    result = await prune(db, timedelta(days=30), batch=2)  # batches smaller than the work: loops

    bodies = {r["id"] for r in await db.fetch("SELECT id FROM webhook_events WHERE id = ANY($1::bigint[])",
                                              [old, young, unprocessed, old_with_open_change, old_with_dead])}
    assert bodies == {young, unprocessed, old_with_open_change, old_with_dead}
    events = {r["wamid"] for r in await db.fetch("SELECT wamid FROM status_events WHERE wamid LIKE $1", f"%.{uniq}")}
    assert events == {f"wamid.pending.{uniq}", f"wamid.young.{uniq}"}  # an unmatched one is still waiting
    assert result.deleted["processed webhook bodies"] >= 1 and result.deleted["handled changes"] >= 1
    assert result.deleted["status-event log"] >= 1

    # a week later the unmatched status itself is past the cut-off too
    await prune(db, timedelta(days=8))
    assert await db.fetchval("SELECT count(*) FROM status_pending WHERE wamid = $1", f"wamid.pending.{uniq}") == 0


async def test_prune_refuses_less_than_the_redelivery_window(db: Database) -> None:
    with pytest.raises(UsageError, match="at least 7 days"):
        await prune(db, timedelta(days=6))


@pytest.mark.parametrize(("text", "age"), [("30d", timedelta(days=30)), ("72h", timedelta(hours=72)),
                                           ("2w", timedelta(weeks=2)), (" 8D ", timedelta(days=8))])
def test_parse_age(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.parametrize("text", ["", "30", "d", "-3d", "1.5d", "30 days", "३०d"])
def test_parse_age_refuses_what_is_not_an_age(text: str) -> None:
    with pytest.raises(UsageError, match="expected a number of hours, days or weeks"):
        parse_age(text)


@pytest.mark.parametrize("text", ["99999999999d", "3651d", "9999999w"])
def test_parse_age_refuses_an_age_beyond_ten_years(text: str) -> None:
    with pytest.raises(UsageError, match="at most 3650 days"):
        parse_age(text)
