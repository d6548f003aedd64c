"""Status webhooks: parse one `statuses[]` item (pure), the state rules (pure), apply in batches.

    accepted 1 < sent 2 < delivered 3 < read 4        (every other ledger state ranks 0)
    failed wins over any rank and stays; nothing moves a row backwards; duplicates are no-ops.

The same rules live in SQL (`status_next_state` in migrations/0004_webhooks.sql): the batch
statements here and the ledger trigger use it, `next_state`/`final_state` mirror it for tests.
Timestamps take the earliest value seen and `read` implies delivered (delivered_at ≤ read_at), so
the final row never depends on the order, the batching or the repetition of events.

Matching a status to a ledger row: by wamid; else by our `biz_opaque_callback_data`
("<campaign id>:<ledger id>") when that row has no wamid yet (an `unknown` send, or one whose
send response has not been stored), which also writes the wamid. An event matching nothing is
kept in `status_pending` and applied by the ledger trigger when its wamid is written.

Batches: `apply_new_statuses` is one statement per chunk (`INSERT … ON CONFLICT` + `UPDATE … FROM
unnest(…)`), never one round trip per status. It locks target rows with SKIP LOCKED: a row being
written by a sender right now is left to `apply_rechecks`, which runs after every wamid writer in
flight has committed (see the migration's note on the race) and only then waits for row locks,
with a lock timeout. So the receiver never holds up a send response while waiting for one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broadcaster.db import Connection, Database
from broadcaster.ledger import parse_callback_data

__all__ = [
    "KNOWN_STATUSES",
    "RANKS",
    "WAMID_GATE_LOCK",
    "ApplyResult",
    "ReplyStatus",
    "StatusEvent",
    "UnrecognisedStatus",
    "apply_new_statuses",
    "apply_rechecks",
    "apply_reply_statuses",
    "dedupe",
    "final_state",
    "next_state",
    "parse_status",
]

RANKS: Mapping[str, int] = {"accepted": 1, "sent": 2, "delivered": 3, "read": 4}
KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed", "played"})  # API doc §4.4
WAMID_GATE_LOCK = 0x73746174  # advisory lock key shared with migrations/0004_webhooks.sql
OPT_OUT_CODE = 131050  # "user stopped marketing messages": the contact is opted out

MAX_WAMID = 512  # characters; a longer id is not a wamid (and would not fit a btree index entry)
MAX_TEXT = 2000  # characters kept of error titles/details and other free text
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_MAX_EPOCH = 32503680000  # 3000-01-01: a later `timestamp` is garbage, the receive time is used
CHUNK = 5000  # events per apply statement


class UnrecognisedStatus(ValueError):
    """A `statuses[]` item that cannot be applied (no id, unknown status …); it is dead-lettered."""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One status event as stored in `status_events`."""

    wamid: str
    status: str  # one of KNOWN_STATUSES
    ts: datetime
    webhook_event_id: int
    recipient_id: str | None = None
    callback_data: str | None = None
    callback_campaign_id: int | None = None
    callback_ledger_id: int | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_details: str | None = None


# ----------------------------------------------------------------------------- pure: parsing


def clean_text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A string safe for a Postgres text column (no NUL, at most `limit` chars), or None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text[:limit]


def parse_timestamp(value: object, fallback: datetime) -> datetime:
    """A payload `timestamp` (a string of epoch seconds, sometimes a number) as aware UTC."""
    try:
        seconds = float(value) if isinstance(value, int | float) else float(str(value).strip())
    except (TypeError, ValueError):
        return fallback
    if not math.isfinite(seconds) or not 0 < seconds < _MAX_EPOCH:
        return fallback
    return datetime.fromtimestamp(int(seconds), UTC)


def _int_or_none(value: object, limit: int) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = int(value) if isinstance(value, int | str) else None
    except ValueError:
        return None
    return number if number is not None and -limit <= number <= limit else None


def _first_error(errors: object) -> Mapping[str, Any] | None:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return errors[0]
    return None


def parse_status(item: object, *, webhook_event_id: int, received_at: datetime,
                 value_errors: object = None) -> StatusEvent:
    """One `value.statuses[]` item → StatusEvent.

    A `failed` status takes its error from `value.errors[0]` first, then its own `errors[0]`
    (pywa's order, API doc §4.4). A missing or unreadable `timestamp` becomes `received_at`.

    Raises:
        UnrecognisedStatus: not an object, no usable `id`, or a `status` outside KNOWN_STATUSES.
    """
    if not isinstance(item, dict):
        raise UnrecognisedStatus(f"status is a {type(item).__name__}, not an object")
    wamid = item.get("id")
    if not isinstance(wamid, str) or not wamid.strip():
        raise UnrecognisedStatus("status has no 'id' (the wamid)")
    if len(wamid) > MAX_WAMID or "\x00" in wamid:
        raise UnrecognisedStatus(f"status 'id' is not a wamid ({len(wamid)} characters)")
    status = item.get("status")
    if not isinstance(status, str) or status not in KNOWN_STATUSES:
        raise UnrecognisedStatus(f"status {status!r} of {wamid} is not one of {sorted(KNOWN_STATUSES)}")
    ts = parse_timestamp(item.get("timestamp"), received_at)
    callback = item.get("biz_opaque_callback_data")
    callback_text = clean_text(callback, 512) if isinstance(callback, str) else None
    parsed = parse_callback_data(callback_text)
    campaign_id = ledger_id = None
    if parsed is not None and parsed[0] <= _INT32 and parsed[1] <= _INT64:
        campaign_id, ledger_id = parsed
    code = title = details = None
    if status == "failed":
        error = _first_error(value_errors) or _first_error(item.get("errors"))
        if error is not None:
            code = _int_or_none(error.get("code"), _INT32)
            title = clean_text(error.get("title") or error.get("message"))
            data = error.get("error_data")
            if isinstance(data, dict):
                details = clean_text(data.get("details"))
    recipient = item.get("recipient_id")
    return StatusEvent(
        wamid=wamid, status=status, ts=ts, webhook_event_id=webhook_event_id,
        recipient_id=clean_text(recipient, 64) if isinstance(recipient, str | int) else None,
        callback_data=callback_text, callback_campaign_id=campaign_id, callback_ledger_id=ledger_id,
        error_code=code, error_title=title, error_details=details)


def dedupe(events: Iterable[StatusEvent]) -> list[StatusEvent]:
    """The first event per (wamid, status), in order: one statement may not insert a key twice."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ev in events:
        key = (ev.wamid, ev.status)
        if key not in seen:
            seen.add(key)
            out.append(ev)
    return out


# ----------------------------------------------------------------------------- pure: state rules


def next_state(current: str, best: str | None, failed: bool) -> str:
    """The ledger state after events whose best non-failed status is `best`, `failed` among them.

    Mirrors SQL `status_next_state`: failed wins and stays; otherwise the higher rank.
    """
    if current == "failed" or failed:
        return "failed"
    if best is not None and RANKS.get(best, 0) > RANKS.get(current, 0):
        return best
    return current


def final_state(current: str, statuses: Iterable[str]) -> str:
    """The state after applying `statuses` (any order, any repetition) to a row in `current`."""
    best: str | None = None
    failed = False
    for status in statuses:
        if status == "failed":
            failed = True
        elif RANKS.get(status, 0) > RANKS.get(best or "", 0):
            best = status
    return next_state(current, best, failed)


# ----------------------------------------------------------------------------- applying (SQL)

# Shared tail: aggregate the events that found a row, move each row forward once, opt out 131050.
# `$E` is the CTE holding the applied events (ledger_id, wamid, status, ts, error_code, error_title).
_APPLY_TAIL = """
agg AS (
    SELECT ledger_id,
           min(wamid) AS wamid,
           max(status_rank(status)) FILTER (WHERE status <> 'failed') AS best_rank,
           bool_or(status = 'failed') AS failed,
           min(ts) FILTER (WHERE status = 'sent') AS sent_ts,
           min(ts) FILTER (WHERE status = 'delivered') AS delivered_ts,
           min(ts) FILTER (WHERE status = 'read') AS read_ts,
           min(ts) FILTER (WHERE status = 'failed') AS failed_ts,
           (array_agg(error_code ORDER BY ts) FILTER (WHERE status = 'failed'))[1] AS code,
           (array_agg(error_title ORDER BY ts) FILTER (WHERE status = 'failed'))[1] AS title
    FROM $E WHERE ledger_id IS NOT NULL
    GROUP BY ledger_id
),
upd AS (
    UPDATE ledger l SET
        state = status_next_state(l.state, a.best_rank, a.failed),
        wamid = COALESCE(l.wamid, a.wamid),
        sent_at = LEAST(l.sent_at, a.sent_ts),
        delivered_at = LEAST(l.delivered_at, a.delivered_ts, a.read_ts),
        read_at = LEAST(l.read_at, a.read_ts),
        failed_at = CASE WHEN a.failed THEN LEAST(l.failed_at, a.failed_ts) ELSE l.failed_at END,
        error_code = CASE WHEN a.failed AND l.state <> 'failed' THEN a.code ELSE l.error_code END,
        error_title = CASE WHEN a.failed AND l.state <> 'failed' THEN a.title ELSE l.error_title END,
        -- settled by this status: an `unknown` row, or one queued for a resend after being unknown
        unknown_resolution = CASE WHEN (l.state = 'unknown'
                                        OR (l.state = 'pending' AND l.unknown_resolution = 'resent'))
                                       AND status_next_state(l.state, a.best_rank, a.failed) <> l.state
                                  THEN 'webhook' ELSE l.unknown_resolution END,
        -- a row moved on by a status is never claimed or re-sent: drop its lease and retry time
        lease_until = CASE WHEN l.state IN ('pending', 'claimed', 'unknown') AND
                                status_next_state(l.state, a.best_rank, a.failed) <> l.state
                           THEN NULL ELSE l.lease_until END,
        lease_owner = CASE WHEN l.state IN ('pending', 'claimed', 'unknown') AND
                                status_next_state(l.state, a.best_rank, a.failed) <> l.state
                           THEN NULL ELSE l.lease_owner END,
        retry_at = CASE WHEN l.state = 'pending' AND
                             status_next_state(l.state, a.best_rank, a.failed) <> l.state
                        THEN NULL ELSE l.retry_at END,
        updated_at = now()
    FROM agg a
    WHERE l.id = a.ledger_id
    RETURNING l.id, l.contact_id, l.campaign_id, l.accepted_at, a.delivered_ts, a.read_ts,
              a.failed AND a.code = 131050 AS opted_out, a.failed_ts, l.wa_id, l.phone_number_id, l.state
),
-- a row sent but never answered (unknown, or answered later) counts against its number's daily
-- tier now; an accepted answer already counted it (record_results)
reach AS (
    INSERT INTO portfolio_reach AS pr (portfolio, wa_id, last_at)
    SELECT DISTINCT ON (portfolio_of(u.phone_number_id), u.wa_id) portfolio_of(u.phone_number_id), u.wa_id, now()
    FROM upd u
    WHERE u.accepted_at IS NULL AND u.phone_number_id IS NOT NULL AND u.state IN ('sent', 'delivered', 'read')
    ORDER BY portfolio_of(u.phone_number_id), u.wa_id
    ON CONFLICT (portfolio, wa_id) DO UPDATE SET last_at = GREATEST(pr.last_at, EXCLUDED.last_at)
),
opted AS (
    UPDATE contacts c SET marketing_opt_in = false, consent_source = 'error_131050',
                          consent_at = u.failed_ts, updated_at = now()
    FROM upd u
    -- an explicit consent given after the failure (a reply, an agent) is not undone by it
    WHERE c.id = u.contact_id AND u.opted_out AND c.marketing_opt_in
      AND (c.consent_source = 'import' OR c.consent_at <= u.failed_ts)
    RETURNING c.workspace, c.wa_id, u.campaign_id, u.failed_ts
),
consent AS (
    INSERT INTO consent_events (workspace, wa_id, opted_in, source, detail, at)
    SELECT workspace, wa_id, false, 'error_131050', 'campaign ' || campaign_id, failed_ts FROM opted
    RETURNING 1
)
SELECT (SELECT count(*) FROM $E) AS events,
       (SELECT count(*) FROM $E WHERE ledger_id IS NULL) AS unmatched,
       (SELECT count(*) FROM upd) AS rows,
       (SELECT count(*) FROM consent) AS opted_out,
       (SELECT array_agg(EXTRACT(epoch FROM u.delivered_ts - u.accepted_at)) FROM upd u
         WHERE u.delivered_ts IS NOT NULL AND u.accepted_at IS NOT NULL) AS delivered_s,
       (SELECT array_agg(EXTRACT(epoch FROM u.read_ts - u.accepted_at)) FROM upd u
         WHERE u.read_ts IS NOT NULL AND u.accepted_at IS NOT NULL) AS read_s
"""

# Match by wamid; else by callback data when that row has no wamid yet (never re-point a row).
# Per-event index lookups (scalar subqueries), not joins: a join over a batch of a few thousand
# events may be planned as a hash join over a sequential scan of the whole ledger.
_MATCH = """
matched AS (
    SELECT ev.*, COALESCE(
        (SELECT l.id FROM ledger l WHERE l.wamid = ev.wamid),
        (SELECT l.id FROM ledger l WHERE l.id = ev.callback_ledger_id
                                     AND l.campaign_id = ev.callback_campaign_id AND l.wamid IS NULL)
    ) AS target
    FROM ev
),
locked AS (
    SELECT l.id FROM ledger l
    WHERE l.id = ANY (ARRAY(SELECT target FROM matched WHERE target IS NOT NULL))
    ORDER BY l.id
    FOR UPDATE OF l $LOCK
),
"""

# New events: log them (duplicates dropped by the unique key), apply those that were new and found
# their row, keep the others in status_pending.
APPLY_NEW_SQL = ("WITH ev AS (\n    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],"
                 " $4::text[], $5::text[], $6::int[], $7::bigint[], $8::int[], $9::text[], $10::text[],"
                 " $11::bigint[])\n        AS e(wamid, status, ts, recipient_id, callback_data,"
                 " callback_campaign_id, callback_ledger_id, error_code, error_title, error_details,"
                 " webhook_event_id)\n),"
                 + _MATCH.replace("$LOCK", "SKIP LOCKED") + """
ins AS (
    INSERT INTO status_events (wamid, status, ts, recipient_id, callback_data, callback_campaign_id,
                               callback_ledger_id, error_code, error_title, error_details,
                               webhook_event_id)
    SELECT wamid, status, ts, recipient_id, callback_data, callback_campaign_id, callback_ledger_id,
           error_code, error_title, error_details, webhook_event_id
    FROM matched
    ORDER BY wamid, status  -- one lock order for every writer of the log
    ON CONFLICT (wamid, status) DO NOTHING
    RETURNING id, wamid, status, ts, error_code, error_title, callback_campaign_id, callback_ledger_id
),
fresh AS (
    SELECT i.*, k.id AS ledger_id
    FROM ins i
    JOIN matched m ON m.wamid = i.wamid AND m.status = i.status
    LEFT JOIN locked k ON k.id = m.target
),
pend AS (
    INSERT INTO status_pending (event_id, wamid, status, ts, error_code, error_title,
                                callback_campaign_id, callback_ledger_id)
    SELECT id, wamid, status, ts, error_code, error_title, callback_campaign_id, callback_ledger_id
    FROM fresh WHERE ledger_id IS NULL
    RETURNING 1
),""" + _APPLY_TAIL.replace("$E", "fresh"))

# Pending events marked for a recheck: match them again, waiting for row locks (the caller holds
# the gate exclusively, so no wamid writer is in flight). Matched ones are applied and deleted.
APPLY_RECHECK_SQL = ("""WITH ev AS (
    SELECT p.event_id AS id, p.wamid, p.status, p.ts, p.error_code, p.error_title,
           p.callback_campaign_id, p.callback_ledger_id
    FROM status_pending p
    WHERE p.recheck
    ORDER BY p.event_id LIMIT $1
    FOR UPDATE OF p
),""" + _MATCH.replace("$LOCK", "") + """
done AS (
    DELETE FROM status_pending p
    USING matched m JOIN locked k ON k.id = m.target
    WHERE p.event_id = m.id
    RETURNING k.id AS ledger_id, p.wamid, p.status, p.ts, p.error_code, p.error_title
),
kept AS (
    UPDATE status_pending p SET recheck = false
    FROM matched m LEFT JOIN locked k ON k.id = m.target
    WHERE p.event_id = m.id AND k.id IS NULL
    RETURNING 1
),""" + _APPLY_TAIL.replace("$E", "done").replace(
    "(SELECT count(*) FROM done WHERE ledger_id IS NULL) AS unmatched",
    "(SELECT count(*) FROM kept) AS unmatched"))

RECHECK_LOCK_TIMEOUT_S = 5.0  # the gate waits for wamid writers in flight; give up (and retry) after


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply call did.

    events: events newly logged (apply_new) or, for a recheck, matched and applied; duplicates
        are not counted.
    unmatched: events no ledger row took (kept; applied when their wamid is written).
    rows: ledger rows updated. opted_out: contacts opted out by 131050.
    delivered_s / read_s: accepted → delivered / read latencies (seconds) of the rows updated.
    """

    events: int = 0
    unmatched: int = 0
    rows: int = 0
    opted_out: int = 0
    delivered_s: tuple[float, ...] = ()
    read_s: tuple[float, ...] = ()

    def __add__(self, other: ApplyResult) -> ApplyResult:
        return ApplyResult(self.events + other.events, self.unmatched + other.unmatched,
                           self.rows + other.rows, self.opted_out + other.opted_out,
                           self.delivered_s + other.delivered_s, self.read_s + other.read_s)


def _result(row: Any) -> ApplyResult:
    return ApplyResult(events=row["events"], unmatched=row["unmatched"], rows=row["rows"],
                       opted_out=row["opted_out"],
                       delivered_s=tuple(float(x) for x in row["delivered_s"] or ()),
                       read_s=tuple(float(x) for x in row["read_s"] or ()))


def _columns(events: Sequence[StatusEvent]) -> tuple[list[Any], ...]:
    cols: tuple[list[Any], ...] = tuple([] for _ in range(11))
    for ev in events:
        for col, value in zip(cols, (ev.wamid, ev.status, ev.ts, ev.recipient_id, ev.callback_data,
                                     ev.callback_campaign_id, ev.callback_ledger_id, ev.error_code,
                                     ev.error_title, ev.error_details, ev.webhook_event_id),
                              strict=True):
            col.append(value)
    return cols


async def apply_new_statuses(conn: Connection, events: Sequence[StatusEvent]) -> ApplyResult:
    """Log `events` and apply the new ones, in chunks of CHUNK events, one statement per chunk.

    Run it inside the caller's transaction. Events whose row is being written by someone else
    right now, and events that match nothing, go to `status_pending` marked `recheck`: call
    `apply_rechecks` after committing (ApplyResult.unmatched > 0 says so).
    """
    total = ApplyResult()
    unique = dedupe(events)
    for start in range(0, len(unique), CHUNK):
        row = await conn.fetchrow(APPLY_NEW_SQL, *_columns(unique[start:start + CHUNK]))
        total = total + _result(row)
    return total


APPLY_REPLY_STATUSES_SQL = """
WITH ev AS (
    SELECT DISTINCT ON (wamid) wamid, status, error_code, error_title
    FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS e(wamid, status, error_code, error_title)
    ORDER BY wamid, (status = 'failed') DESC
), upd AS (
    UPDATE inbox_replies r
    SET state = CASE WHEN ev.status = 'failed' THEN 'failed' WHEN r.state = 'unknown' THEN 'sent' ELSE r.state END,
        error_code = CASE WHEN ev.status = 'failed' THEN ev.error_code ELSE r.error_code END,
        error = CASE WHEN ev.status = 'failed' THEN coalesce(ev.error_title, 'failed') ELSE r.error END
    FROM ev
    WHERE r.wamid = ev.wamid AND r.state <> 'failed'
    RETURNING r.id, r.conversation_id, ev.status, ev.error_code, ev.error_title
), gone AS (
    DELETE FROM status_pending p USING inbox_replies r
    WHERE p.wamid = ANY($1::text[]) AND r.wamid = p.wamid
)
SELECT id, conversation_id, status, error_code, error_title FROM upd
"""


@dataclass(frozen=True, slots=True)
class ReplyStatus:
    """A status applied to one of our free-form inbox replies."""

    reply_id: int
    conversation_id: int
    status: str
    error_code: int | None
    error_title: str | None


async def apply_reply_statuses(conn: Connection, events: Sequence[StatusEvent]) -> list[ReplyStatus]:
    """Apply statuses whose wamid is an inbox reply's (they match no ledger row): `failed` (e.g.
    131047, the 24 h window closed) marks the reply failed with the code; any other status confirms
    an `unknown` reply as sent. Their `status_pending` entries are dropped. One statement."""
    if not events:
        return []
    rows = await conn.fetch(APPLY_REPLY_STATUSES_SQL, [e.wamid for e in events], [e.status for e in events],
                            [e.error_code for e in events], [e.error_title for e in events])
    return [ReplyStatus(r["id"], r["conversation_id"], r["status"], r["error_code"], r["error_title"])
            for r in rows]


async def apply_rechecks(db: Database, *, limit: int = CHUNK,
                         lock_timeout_s: float = RECHECK_LOCK_TIMEOUT_S) -> ApplyResult:
    """Match every pending event marked `recheck` once more, after all wamid writers in flight
    committed.

    Each round is its own transaction: take the gate lock EXCLUSIVE (holding nothing else), then
    one statement matches up to `limit` events and applies those that found their row. Events
    still unmatched stay pending for the ledger trigger. Returns the total over all rounds.

    Raises:
        DatabaseError: the gate or a row lock was not granted within `lock_timeout_s` (retry
            later: the events keep their `recheck` mark), or the database failed.
    """
    total = ApplyResult()
    while True:
        async with db.transaction() as conn:
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            # lost in a crash, it is redone: the events keep their mark until it commits
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", WAMID_GATE_LOCK)
            row = await conn.fetchrow(APPLY_RECHECK_SQL, limit)
        result = _result(row)
        total = total + result
        if result.events + result.unmatched < limit:  # examined fewer than asked: none left
            return total
