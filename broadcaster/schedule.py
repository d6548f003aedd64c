"""Campaign schedules: a one-off launch time or a recurring cron broadcast, fired by `tick`.

    campaign create NAME … --at "2026-12-04 10:00" [--tz Asia/Kolkata]
        draft → scheduled; schedules(kind 'once', next_run_at 2026-12-04 04:30 UTC)
    campaign create NAME … --every "0 10 * * *" [--tz Asia/Kolkata]
        draft → recurring: NAME is the series definition and is never sent itself; each firing
        creates NAME-YYYYMMDD-HHMM from it and launches that, so the segment is resolved afresh
        (contacts added since the last run are included)

Firing only launches (freezes the audience, state → running); `broadcaster worker` processes send.
Also here: follow-up runs (`create_retry`: exactly the recipients that failed with given codes)
and `overview` (every campaign with its progress and schedule, for `campaign list`).

Guarantees:
- Wall times are read in an IANA zone (`--tz`, else the workspace's `timezone`, default
  Asia/Kolkata) and stored as timestamptz; nothing here reads the process TZ (all datetimes are
  aware, `now` is passed in), so 10:00 IST fires at 04:30 UTC on any server.
- `tick(db, now)` fires each due slot at most once, however many tickers run at the same time: a
  firing holds the schedule's row lock (other tickers pass it by: SKIP LOCKED) and moves
  next_run_at past `now` in the same transaction. If a ticker dies mid-firing, its lock goes with
  its connection and the next tick fires the slot again, reusing the run it had created
  (schedule_runs) — `launch` itself is idempotent.
- A slot missed while nothing ticked starts late, once: only the latest missed slot runs (older
  ones are skipped with a log line), unless it is older than `horizon_s`; then nothing starts, the
  schedule moves on to its next slot (a one-off becomes `missed`), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import trio

from broadcaster.campaigns import (
    Campaign,
    compile_for,
    create_campaign,
    get_campaign,
    get_campaign_by_id,
    is_marketing,
    launch,
    marketing_cap,
    skip_reason_sql,
)
from broadcaster.cron import Cron, parse_cron
from broadcaster.db import Connection, Database
from broadcaster.errors import BroadcasterError, DatabaseError, NotFoundError, StateError, UsageError

__all__ = [
    "DEFAULT_HORIZON_S", "DEFAULT_TIMEZONE", "Firing", "OverviewRow", "RetryRun", "Schedule", "ScheduleRequest",
    "create_retry", "format_local", "get_schedule", "list_schedules", "next_due", "overview", "parse_at",
    "prepare_request",
    "request_schedule", "run_name", "run_scheduler", "schedule_campaign", "tick", "workspace_timezone", "zone",
]

log = logging.getLogger("broadcaster.schedule")

DEFAULT_TIMEZONE = "Asia/Kolkata"
DEFAULT_HORIZON_S = 2 * 3600.0  # a missed slot older than this is skipped, not started late
LATE_AFTER_S = 120.0            # a firing this long after its slot is logged as late (cron ticks each minute)
POLL_S = 30.0                   # `scheduler run` looks for new schedules at least this often
MAX_FIRINGS_PER_TICK = 1000     # bound one pass; the next tick continues


# ----- pure: zones and times

def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; UsageError naming it when unknown."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UsageError(f"--tz {name!r}: unknown time zone; use an IANA name such as "
                         "Asia/Kolkata, Europe/London or UTC") from exc


def parse_at(text: str, tz: ZoneInfo) -> datetime:
    """`--at` → an aware UTC instant.

    Accepts '2026-12-04 10:00' (or with seconds, or a 'T') read as wall time in `tz`, or an ISO
    time with an offset ('2026-12-04T10:00+05:30', '…Z'), whose offset wins over `tz`.

    Raises:
        UsageError: not a date and time, or a wall time that does not exist in `tz` (clocks
            jumped forward over it). A time that occurs twice (clocks went back) means the first.
    """
    raw = text.strip()
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError as exc:
        raise UsageError(f"--at {text!r}: expected a date and time like '2026-12-04 10:00' or an "
                         "ISO time with offset like '2026-12-04T10:00+05:30'") from exc
    if len(raw) <= 10:  # a bare date: midnight is almost never what was meant
        raise UsageError(f"--at {text!r}: give a time too, e.g. '{raw} 10:00'")
    if parsed.tzinfo is not None:
        return parsed.astimezone(UTC)
    local = parsed.replace(tzinfo=tz)
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != parsed:
        raise UsageError(f"--at {text!r} does not exist in {tz.key}: clocks jump forward over it "
                         "that day; pick another time")
    return instant


def format_local(instant: datetime, tz: ZoneInfo) -> str:
    """'2026-12-04 10:00 IST' (seconds only when not zero)."""
    local = instant.astimezone(tz)
    fmt = "%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z"
    return local.strftime(fmt)


def run_name(series: str, slot: datetime, tz: ZoneInfo) -> str:
    """The campaign a recurring series creates for one slot: 'daily_invite-20261204-1000'."""
    return f"{series}-{slot.astimezone(tz):%Y%m%d-%H%M}"


@dataclass(frozen=True)
class ScheduleRequest:
    """A checked `--at` / `--every` request, ready to attach to a draft campaign."""

    kind: str                  # once | every
    timezone: str
    first_run_at: datetime     # aware UTC
    cron: Cron | None = None

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def describe(self) -> str:
        tz = self.tz
        when = f"{format_local(self.first_run_at, tz)} ({self.first_run_at:%Y-%m-%d %H:%M} UTC)"
        if self.kind == "once":
            return f"at {when}"
        return f"every '{self.cron}' in {self.timezone}, first run {when}"

    def upcoming(self, count: int = 3) -> list[str]:
        """The first `count` runs as 'local (UTC)' strings (one for a one-off)."""
        tz = self.tz
        times = [self.first_run_at]
        if self.cron is not None:
            times += self.cron.upcoming(self.first_run_at, tz, count - 1)
        return [f"{format_local(t, tz)} ({t:%Y-%m-%d %H:%M} UTC)" for t in times]


def request_schedule(*, at: str | None, every: str | None, tz_name: str, now: datetime) -> ScheduleRequest:
    """Check `--at` / `--every` against the zone; the first slot must lie after `now`.

    Raises:
        UsageError: both or neither given, a bad zone, time or cron, or `--at` in the past.
    """
    if (at is None) == (every is None):
        raise UsageError("give either --at (one launch) or --every (a recurring broadcast), not both")
    tz = zone(tz_name)
    if at is not None:
        instant = parse_at(at, tz)
        if instant <= now:
            raise UsageError(f"--at {at!r} is {format_local(instant, tz)}, which has passed "
                             f"(now {format_local(now, tz)}); launch it now or pick a later time")
        return ScheduleRequest("once", tz.key, instant)
    assert every is not None
    cron = parse_cron(every)
    return ScheduleRequest("every", tz.key, cron.next_after(now, tz), cron)


# ----- the schedules table

@dataclass(frozen=True)
class Schedule:
    id: int
    campaign_id: int
    campaign: str               # the scheduled campaign (once) or the series definition (every)
    kind: str
    cron: str | None
    timezone: str
    next_run_at: datetime | None
    state: str
    runs: int
    last_slot_at: datetime | None
    last_fired_at: datetime | None
    last_run_id: int | None
    last_error: str | None
    created_at: datetime

    def describe(self) -> str:
        """One line for `campaign list`: 'at 2026-12-04 10:00 IST', 'every '0 10 * * *' …, next …'."""
        tz = zone(self.timezone)
        nxt = format_local(self.next_run_at, tz) if self.next_run_at else None
        if self.kind == "once":
            slot = self.next_run_at or self.last_slot_at
            text = f"at {format_local(slot, tz)}" if slot else "once"
            return text if self.state == "active" else f"{text} ({self.state})"
        text = f"every '{self.cron}' {self.timezone}"
        if self.state != "active":
            return f"{text} ({self.state})"
        return f"{text}, next {nxt}" if nxt else text


_SCHEDULE_COLUMNS = ("s.id, s.campaign_id, c.name AS campaign, s.kind, s.cron, s.timezone, s.next_run_at,"
                     " s.state, s.runs, s.last_slot_at, s.last_fired_at, s.last_run_id, s.last_error,"
                     " s.created_at")


async def workspace_timezone(db: Database | Connection, workspace: str) -> str:
    """The workspace's configured zone (workspaces.timezone), else Asia/Kolkata."""
    value = await db.fetchval("SELECT timezone FROM workspaces WHERE name = $1", workspace)
    return value or DEFAULT_TIMEZONE


async def prepare_request(db: Database, *, segment: str, at: str | None, every: str | None, tz: str | None,
                          now: datetime | None = None) -> ScheduleRequest:
    """`campaign create … --at/--every [--tz]`, checked before the campaign is created: the zone
    defaults to the segment's workspace zone."""
    from broadcaster.segment_store import get_segment

    tz_name = tz
    if tz_name is None:
        tz_name = await workspace_timezone(db, (await get_segment(db, segment)).workspace)
    return request_schedule(at=at, every=every, tz_name=tz_name, now=now or utc_now())


async def schedule_campaign(db: Database, name: str, request: ScheduleRequest) -> Schedule:
    """Attach a schedule to the draft campaign `name`: draft → scheduled (once) or recurring (every).

    Raises:
        StateError: the campaign is not a draft (already scheduled, launched, …).
    """
    campaign = await get_campaign(db, name)
    new_state = "scheduled" if request.kind == "once" else "recurring"
    async with db.transaction() as conn:
        moved = await conn.fetchrow(
            "UPDATE campaigns SET state = $2, scheduled_at = $3, updated_at = now()"
            " WHERE id = $1 AND state = 'draft' RETURNING id",
            campaign.id, new_state, request.first_run_at if request.kind == "once" else None)
        if moved is None:
            raise StateError(f"campaign '{name}' is {campaign.state}, not draft: only a draft can be scheduled")
        await conn.execute(
            "INSERT INTO schedules (campaign_id, kind, cron, timezone, next_run_at) VALUES ($1, $2, $3, $4, $5)",
            campaign.id, request.kind, request.cron.expr if request.cron else None, request.timezone,
            request.first_run_at)
    return await get_schedule(db, name)


async def get_schedule(db: Database | Connection, name: str) -> Schedule:
    row = await db.fetchrow(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules s JOIN campaigns c ON c.id = s.campaign_id"
                            " WHERE c.name = $1", name)
    if row is None:
        raise NotFoundError(f"campaign '{name}' has no schedule: see `broadcaster campaign list`")
    return Schedule(**dict(row))


async def pause_series(db: Database, name: str) -> Schedule:
    """Stop a recurring series from firing (a holiday, a template under review); runs already
    launched are not touched. `resume_series` continues it.

    Raises:
        StateError: the series is not active (already paused, cancelled, …).
    """
    sched = await get_schedule(db, name)
    moved = await db.fetchval("UPDATE schedules SET state = 'paused', updated_at = now()"
                              " WHERE id = $1 AND kind = 'every' AND state = 'active' RETURNING id", sched.id)
    if moved is None:
        raise StateError(f"series '{name}' is {sched.state}, not active: nothing to pause")
    log.info("schedule_paused campaign=%s", name)
    return await get_schedule(db, name)


async def resume_series(db: Database, name: str, *, now: datetime | None = None) -> Schedule:
    """A paused series fires again from its next slot after `now`; the slots it was paused over are
    not fired late.

    Raises:
        StateError: the series is not paused.
    """
    sched = await get_schedule(db, name)
    if sched.kind != "every" or sched.state != "paused" or sched.cron is None:
        raise StateError(f"series '{name}' is {sched.state}, not paused: nothing to resume")
    following = parse_cron(sched.cron).next_after(now or utc_now(), zone(sched.timezone))
    await db.execute("UPDATE schedules SET state = 'active', next_run_at = $2, updated_at = now()"
                     " WHERE id = $1 AND state = 'paused'", sched.id, following)
    log.info("schedule_resumed campaign=%s next=%s", name, following.isoformat())
    return await get_schedule(db, name)


async def list_schedules(db: Database) -> list[Schedule]:
    rows = await db.fetch(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules s JOIN campaigns c ON c.id = s.campaign_id"
                          " ORDER BY s.id")
    return [Schedule(**dict(r)) for r in rows]


async def next_due(db: Database) -> datetime | None:
    """The earliest slot of any active schedule (None when nothing is scheduled)."""
    return await db.fetchval("SELECT min(next_run_at) FROM schedules WHERE state = 'active'")


# ----- firing

@dataclass(frozen=True)
class Firing:
    """What one tick did with one due schedule.

    outcome: started | already_running (another launcher got there first) | missed (older than
    the horizon, not started) | failed (error recorded on the schedule) | cancelled (its
    campaign was cancelled; the schedule stops).
    """

    schedule_id: int
    campaign: str               # the scheduled campaign / series definition
    slot: datetime
    outcome: str
    run: str | None = None      # the campaign launched for this slot
    late_s: float = 0.0
    frozen_rows: int = 0
    skipped_slots: int = 0      # older missed slots of a recurring schedule that were not run
    error: str | None = None


_CLAIM = f"""
SELECT {_SCHEDULE_COLUMNS}, c.state AS campaign_state
FROM schedules s JOIN campaigns c ON c.id = s.campaign_id
WHERE s.state = 'active' AND s.next_run_at <= $1
ORDER BY s.next_run_at, s.id
LIMIT 1
FOR NO KEY UPDATE OF s SKIP LOCKED
"""
# NO KEY UPDATE, not UPDATE: the firing inserts rows referencing this schedule from other
# connections (schedule_runs), whose foreign-key check takes KEY SHARE on it; FOR UPDATE would
# make them wait for this very transaction.


async def tick(db: Database, now: datetime, *, horizon_s: float = DEFAULT_HORIZON_S) -> list[Firing]:
    """One pass: fire every schedule due at `now` (aware), each slot at most once across tickers.

    Returns what happened per due schedule. A DatabaseError propagates (the claimed slot's
    transaction rolls back, so the next tick fires it); any other error of a firing is recorded
    on the schedule (`last_error`) and the schedule moves on.
    """
    if now.tzinfo is None:
        raise ValueError("tick(now=…) needs an aware datetime: the process TZ is never used")
    firings: list[Firing] = []
    for _ in range(MAX_FIRINGS_PER_TICK):
        async with db.transaction() as conn:
            row = await conn.fetchrow(_CLAIM, now)
            if row is None:
                break
            data = dict(row)
            campaign_state = data.pop("campaign_state")
            firing = await _fire(db, conn, Schedule(**data), campaign_state, now, horizon_s)
        firings.append(firing)
    return firings


async def _fire(db: Database, conn: Connection, sched: Schedule, campaign_state: str, now: datetime,
                horizon_s: float) -> Firing:
    """Fire one claimed schedule (its row locked on `conn`) and record the result on `conn`."""
    tz = zone(sched.timezone)
    assert sched.next_run_at is not None
    if campaign_state == "cancelled":
        await _record(conn, sched, state="cancelled", next_run_at=None, slot=sched.next_run_at)
        log.info("schedule_cancelled campaign=%s: its campaign was cancelled", sched.campaign)
        return Firing(sched.id, sched.campaign, sched.next_run_at, "cancelled")

    cron = parse_cron(sched.cron) if sched.cron else None
    slot, skipped = sched.next_run_at, 0
    if cron is not None:
        latest = cron.last_at_or_before(now, tz) or slot
        if latest > slot:
            t = slot
            while t < latest and skipped < MAX_FIRINGS_PER_TICK:
                skipped, t = skipped + 1, cron.next_after(t, tz)
            log.warning("schedule_skipped campaign=%s from=%s before=%s: slots missed while no ticker "
                        "ran; only the latest runs", sched.campaign, slot.isoformat(), latest.isoformat())
            slot = latest
    following = cron.next_after(slot, tz) if cron is not None else None
    age_s = (now - slot).total_seconds()

    if age_s > horizon_s:
        log.warning("schedule_missed campaign=%s slot=%s age_s=%.0f horizon_s=%.0f: not started",
                    sched.campaign, slot.isoformat(), age_s, horizon_s)
        await _record(conn, sched, state="missed" if cron is None else "active",
                      next_run_at=None if cron is None else cron.next_after(now, tz), slot=slot,
                      error=f"slot {format_local(slot, tz)} missed by {age_s:.0f} s (horizon {horizon_s:.0f} s)")
        return Firing(sched.id, sched.campaign, slot, "missed", skipped_slots=skipped)

    try:
        if cron is None:
            run: Campaign = await get_campaign_by_id(db, sched.campaign_id)
        else:
            run = await _run_for_slot(db, sched, slot, tz, age_s)
        result = await launch(db, run.name)
    except DatabaseError:
        raise
    except BroadcasterError as exc:
        log.error("schedule_failed campaign=%s slot=%s: %s", sched.campaign, slot.isoformat(), exc)
        await _record(conn, sched, state="failed" if cron is None else "active",
                      next_run_at=following, slot=slot, error=str(exc))
        return Firing(sched.id, sched.campaign, slot, "failed", skipped_slots=skipped, error=str(exc))

    if cron is None:
        await conn.execute(
            "INSERT INTO schedule_runs (schedule_id, slot, campaign_id, late_s) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING", sched.id, slot, run.id, max(0.0, age_s))
    outcome = "started" if result.started_now else "already_running"
    if age_s > LATE_AFTER_S:
        log.warning("schedule_late campaign=%s run=%s slot=%s late_s=%.0f: started late, once",
                    sched.campaign, run.name, slot.isoformat(), age_s)
    else:
        log.info("schedule_fired campaign=%s run=%s slot=%s frozen=%d", sched.campaign, run.name,
                 slot.isoformat(), result.frozen_rows)
    await _record(conn, sched, state="active" if cron is not None else "done", next_run_at=following,
                  slot=slot, run_id=run.id, started=True)
    return Firing(sched.id, sched.campaign, slot, outcome, run=run.name, late_s=max(0.0, age_s),
                  frozen_rows=result.frozen_rows, skipped_slots=skipped)


async def _run_for_slot(db: Database, sched: Schedule, slot: datetime, tz: ZoneInfo, age_s: float) -> Campaign:
    """The series' campaign for `slot`: the one created by an earlier attempt, else a new one."""
    existing = await db.fetchval(
        "SELECT campaign_id FROM schedule_runs WHERE schedule_id = $1 AND slot = $2", sched.id, slot)
    if existing is not None:
        return await get_campaign_by_id(db, existing)
    definition = await get_campaign_by_id(db, sched.campaign_id)
    name = run_name(definition.name, slot, tz)
    try:
        run = await create_campaign(
            db, name, segment=definition.segment, template=definition.template_name,
            variables=definition.variables, default_language=definition.default_language,
            phone_number_id=definition.phone_number_id, unknown_policy=definition.unknown_policy,
            unknown_grace_s=definition.unknown_grace_s)
    except StateError:
        # the name exists: adopt it only if it is the draft an interrupted firing left behind
        run = await get_campaign(db, name)
        taken = await db.fetchval("SELECT 1 FROM schedule_runs WHERE campaign_id = $1", run.id)
        same = (run.segment, run.template_name, run.variables, run.default_language, run.phone_number_id) == (
            definition.segment, definition.template_name, definition.variables, definition.default_language,
            definition.phone_number_id)
        if run.state != "draft" or taken or not same:
            raise StateError(f"campaign name '{name}' for the {format_local(slot, tz)} run of "
                             f"'{definition.name}' is taken by another campaign; rename that one") from None
    await db.execute(
        "INSERT INTO schedule_runs (schedule_id, slot, campaign_id, late_s) VALUES ($1, $2, $3, $4)",
        sched.id, slot, run.id, max(0.0, age_s))
    return run


async def _record(conn: Connection, sched: Schedule, *, state: str, next_run_at: datetime | None,
                  slot: datetime, run_id: int | None = None, started: bool = False,
                  error: str | None = None) -> None:
    await conn.execute(
        "UPDATE schedules SET state = $2, next_run_at = $3, last_slot_at = $4, last_fired_at = now(),"
        " last_run_id = COALESCE($5, last_run_id), runs = runs + $6, last_error = $7, updated_at = now()"
        " WHERE id = $1",
        sched.id, state, next_run_at, slot, run_id, 1 if started else 0, error)


# ----- the long-running scheduler

def utc_now() -> datetime:
    return datetime.now(UTC)


async def run_scheduler(db: Database, *, horizon_s: float = DEFAULT_HORIZON_S, poll_s: float = POLL_S,
                        clock: Callable[[], datetime] = utc_now,
                        on_firing: Callable[[Firing], Any] | None = None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Tick, then wait until the next due slot (at most `poll_s`, so schedules created by other
    processes are seen), forever. Reports started after the first pass.

    Never returns unless cancelled. A database outage is logged and retried after `poll_s`;
    cancellation mid-firing rolls back that slot's transaction, so the next ticker fires it.
    """
    started = False
    while True:
        try:
            for firing in await tick(db, clock(), horizon_s=horizon_s):
                if on_firing is not None:
                    on_firing(firing)
            due = await next_due(db)
        except DatabaseError as exc:
            log.error("scheduler_tick failed, retrying in %.0f s: %s", poll_s, exc)
            due = None
        if not started:
            task_status.started()
            started = True
        wait = poll_s if due is None else (due - clock()).total_seconds()
        await trio.sleep(min(poll_s, max(0.05, wait)))


def horizon_from(value: float | None) -> float:
    if value is None:
        return DEFAULT_HORIZON_S
    if value < 0:
        raise UsageError(f"--horizon {value}: must be zero or more seconds")
    return float(value)



# ----- follow-up runs and the campaign overview

@dataclass(frozen=True)
class RetryRun:
    campaign: Campaign          # the follow-up, paused with reason 'retry_ready' until resumed
    to_send: int
    skipped: dict[str, int]     # recipients not retried: blocked, opted out, frequency cap since


# Recipient `l` of campaign $2 is already in an earlier retry of it (whatever happened there).
_IN_EARLIER_RETRY = """EXISTS (SELECT 1 FROM campaigns rc JOIN ledger r ON r.campaign_id = rc.id
                            WHERE rc.retry_of = $2 AND r.wa_id = l.wa_id)"""
_RETRY_CANDIDATES = f"""
SELECT count(*) FILTER (WHERE NOT {_IN_EARLIER_RETRY.replace("$2", "$1")}) AS fresh,
       (SELECT string_agg(name, ', ' ORDER BY id DESC) FROM campaigns WHERE retry_of = $1) AS earlier
FROM ledger l WHERE l.campaign_id = $1 AND l.state = 'failed' AND l.error_code = ANY($2::int[])
"""


async def create_retry(db: Database, name: str, codes: list[int], *, new_name: str | None = None) -> RetryRun:
    """A follow-up campaign for exactly the recipients of `name` that failed with one of `codes`.

    Same segment, template, variables and number; its audience is those recipients only (with
    their language variant), frozen at once and re-checked against suppression (blocked, and for
    MARKETING opted out / frequency cap). It is left `paused` (reason `retry_ready`): `campaign
    resume NEW` sends it, so nothing goes out before a manager looks at it.

    Recipients an earlier retry of `name` already holds are left out (whatever happened to them
    there: retry that retry instead), so running it twice never messages anyone twice.

    Raises:
        UsageError: no codes, no failed recipient has any of them (the message lists the
            campaign's failures by code), or every such recipient is in an earlier retry.
    """
    if not codes:
        raise UsageError("--codes: give at least one error code, e.g. --codes 131000,131049")
    source = await get_campaign(db, name)
    failures = {r["error_code"]: r["n"] for r in await db.fetch(
        "SELECT error_code, count(*)::bigint AS n FROM ledger WHERE campaign_id = $1 AND state = 'failed'"
        " GROUP BY 1", source.id)}
    if not any(failures.get(code) for code in codes):
        have = ", ".join(f"{code}×{n}" for code, n in sorted(failures.items(), key=lambda kv: -kv[1])) or "none"
        raise UsageError(f"campaign '{name}' has no failed recipients with code(s) "
                         f"{', '.join(map(str, codes))}; its failures: {have}")
    fresh, earlier = await db.fetchrow(_RETRY_CANDIDATES, source.id, codes)
    if not fresh:
        raise UsageError(f"every recipient of '{name}' that failed with code(s) {', '.join(map(str, codes))} is "
                         f"already in an earlier retry ({earlier}): retry that one, e.g. "
                         f"`broadcaster campaign retry-failed {earlier.split(', ')[0]} --codes …`")
    if new_name is None:
        taken = await db.fetchval("SELECT count(*) FROM campaigns WHERE name LIKE $1 || '-retry-%'", name)
        new_name = f"{name}-retry-{taken + 1}"
    follow = await create_campaign(
        db, new_name, segment=source.segment, template=source.template_name, variables=source.variables,
        default_language=source.default_language, phone_number_id=source.phone_number_id,
        unknown_policy=source.unknown_policy, unknown_grace_s=source.unknown_grace_s)
    _, category = await compile_for(db, follow)
    detail = {"retry_of": name, "codes": codes}
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE campaigns SET state = 'paused', pause_reason = 'retry_ready', pause_detail = $2,"
            " retry_of = $3, audience_frozen_at = now(), updated_at = now() WHERE id = $1 AND state = 'draft'",
            follow.id, orjson.dumps(detail).decode(), source.id)
        cap = await marketing_cap(conn, source.workspace)
        await conn.execute(
            f"""
            INSERT INTO ledger (campaign_id, contact_id, wa_id, language, state, skip_reason)
            SELECT $1, l.contact_id, l.wa_id, l.language,
                   CASE WHEN s.reason IS NULL THEN 'pending' ELSE 'skipped' END, s.reason
            FROM ledger l JOIN contacts c ON c.id = l.contact_id
            CROSS JOIN LATERAL (SELECT {skip_reason_sql(4, 5)} AS reason) s
            WHERE l.campaign_id = $2 AND l.state = 'failed' AND l.error_code = ANY($3::int[])
              AND NOT {_IN_EARLIER_RETRY}
            ON CONFLICT (campaign_id, wa_id) DO NOTHING
            """,
            follow.id, source.id, codes, is_marketing(category), cap)
    counts = {(r["state"], r["skip_reason"]): r["n"] for r in await db.fetch(
        "SELECT state, skip_reason, count(*)::bigint AS n FROM ledger WHERE campaign_id = $1 GROUP BY 1, 2",
        follow.id)}
    log.info("retry_created campaign=%s from=%s codes=%s", new_name, name, codes)
    return RetryRun(await get_campaign(db, new_name), counts.get(("pending", None), 0),
                    {str(reason): n for (state, reason), n in counts.items() if state == "skipped"})


@dataclass(frozen=True)
class OverviewRow:
    """One line of `campaign list`: state, progress from the ledger, schedule."""

    name: str
    state: str
    pause_reason: str | None
    segment: str
    template: str
    created_at: datetime
    audience: int
    settled: int                # rows in a final state
    schedule: str | None        # 'at …', "every '…' …, next …", 'run of SERIES'


async def overview(db: Database) -> list[OverviewRow]:
    """Every campaign with its progress and schedule (one query for the counts)."""
    rows = await db.fetch(
        """
        SELECT c.id, c.name, c.state, c.pause_reason, c.segment, c.template_name, c.created_at,
               COALESCE(agg.audience, 0) AS audience, COALESCE(agg.settled, 0) AS settled,
               d.name AS series
        FROM campaigns c
        LEFT JOIN (SELECT campaign_id, count(*) AS audience,
                          count(*) FILTER (WHERE state NOT IN ('pending', 'claimed', 'unknown')) AS settled
                   FROM ledger GROUP BY campaign_id) agg ON agg.campaign_id = c.id
        LEFT JOIN schedule_runs r ON r.campaign_id = c.id
        LEFT JOIN schedules rs ON rs.id = r.schedule_id
        LEFT JOIN campaigns d ON d.id = rs.campaign_id
        ORDER BY c.id
        """)
    schedules = {s.campaign_id: s for s in await list_schedules(db)}
    out = []
    for r in rows:
        sched = schedules.get(r["id"])
        text = sched.describe() if sched else (f"run of {r['series']}" if r["series"] else None)
        out.append(OverviewRow(r["name"], r["state"], r["pause_reason"], r["segment"], r["template_name"],
                               r["created_at"], int(r["audience"]), int(r["settled"]), text))
    return out
