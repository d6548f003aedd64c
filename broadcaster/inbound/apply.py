"""The apply worker: turns stored webhook bodies into ledger updates, changes and dead letters.

    wake() (after each group commit) ─▶ pass: claim stored bodies (SKIP LOCKED, oldest first)
        ─▶ parse ─▶ one transaction: status events logged + applied, dead letters and changes
           stored, bodies marked processed ─▶ recheck unmatched events ─▶ hand changes to hooks

Guarantees:
- a body is marked processed in the same transaction that stores what came out of it, so a crash
  loses nothing and applies nothing twice (a restart picks up unprocessed bodies first);
- several workers (processes) can share the table: bodies are claimed with SKIP LOCKED;
- a body that keeps failing on its own (a bug, not an outage) is dead-lettered after
  POISON_ATTEMPTS tries so it cannot block the rest; its raw bytes stay in `webhook_events`;
- while the database is unreachable the worker retries with capped exponential backoff;
- hooks run after the commit, at least once per change, up to HOOK_ATTEMPTS times when they
  raise: `broadcaster.inbox.handler.handle_messages(db, value)` for inbound messages and
  `broadcaster.health.handle_change(db, field, value)` for template/quality/account changes,
  each resolved on first use and skipped silently when its module does not exist. Changes no
  hook took stay in `webhook_changes` (handled_at NULL); one whose hook failed HOOK_ATTEMPTS
  times also gets a dead letter, so it shows in the dead-letter count.

Cancellation: a pass cancelled mid-transaction is rolled back; its bodies stay unprocessed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import orjson
import trio

from broadcaster import metrics
from broadcaster.db import Database, DatabaseUnavailable
from broadcaster.errors import DatabaseError
from broadcaster.inbound.envelope import (
    MESSAGES_FIELD,
    RECOGNISED_FIELDS,
    Change,
    DeadLetter,
    Parsed,
    jsonable,
    parse_webhook,
)
from broadcaster.inbound.statuses import (
    ApplyResult,
    StatusEvent,
    apply_new_statuses,
    apply_rechecks,
    apply_reply_statuses,
    clean_text,
)

__all__ = ["ApplyStatistics", "ApplyWorker", "Hooks"]

logger = logging.getLogger(__name__)

BATCH_BODIES = 500  # stored bodies per apply transaction, at most
BATCH_BYTES = 2 * 1024 * 1024  # bytes of bodies per apply transaction (≈ 6,000 statuses), at least one body
POISON_ATTEMPTS = 3  # failures of a single body (not an outage) before it is dead-lettered
HOOK_ATTEMPTS = 5  # calls of a hook on one change before it is left for a human
HOOK_BATCH = 100  # changes fetched per round
LINGER_S = 0.01  # a pass follows the previous one's start by at least this much …
LINGER_BODIES = 64  # … unless this many bodies have arrived since: small batches cost a transaction each
RETRY_BASE_S = 0.2  # first backoff after a database failure; doubles up to RETRY_MAX_S
RETRY_MAX_S = 30.0
TXN_DEADLINE_S = 30.0  # a transaction started is finished even when cancelled, within this bound

# The oldest unprocessed bodies, up to $1 of them and about $2 bytes. Rows locked past the byte
# budget stay unprocessed and go in the next batch.
CLAIM_SQL = """
SELECT id, received_at, body, locked_n FROM (
    SELECT id, received_at, body, count(*) OVER () AS locked_n,
           sum(octet_length(body)) OVER (ORDER BY id) - octet_length(body) AS before
    FROM (SELECT id, received_at, body FROM webhook_events
          WHERE processed_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) AS locked
) AS sized
WHERE before < $2
ORDER BY id
"""
# The bodies are already durable: if the server crashed right after an apply transaction, the
# transaction (bodies marked processed included) would be lost whole and redone from the bodies.
# So it does not wait for its WAL flush. A later synchronous commit (a send response, an answered
# POST) flushes the WAL up to itself, so nothing that depends on an apply outlives it.
ASYNC_COMMIT_SQL = "SET LOCAL synchronous_commit = off"
MARK_PROCESSED_SQL = "UPDATE webhook_events SET processed_at = now() WHERE id = ANY($1::bigint[])"
INSERT_DEAD_SQL = """
INSERT INTO webhook_dead_letters (webhook_event_id, field, location, reason, payload)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
"""
INSERT_CHANGES_SQL = """
INSERT INTO webhook_changes (webhook_event_id, field, value)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[])
"""
FETCH_CHANGES_SQL = """
SELECT id, field, value FROM webhook_changes
WHERE handled_at IS NULL AND attempts < $2 AND field = ANY($1::text[])
ORDER BY id LIMIT $3
"""
CHANGES_HANDLED_SQL = "UPDATE webhook_changes SET handled_at = now() WHERE id = ANY($1::bigint[])"
CHANGES_FAILED_SQL = """
WITH failed AS (
    UPDATE webhook_changes c SET attempts = c.attempts + 1, last_error = f.error
    FROM unnest($1::bigint[], $2::text[]) AS f(id, error) WHERE c.id = f.id
    RETURNING c.id, c.webhook_event_id, c.field, c.value, c.attempts, c.last_error
)
INSERT INTO webhook_dead_letters (webhook_event_id, field, location, reason, payload)
SELECT webhook_event_id, field, 'webhook_changes ' || id,
       'its hook failed ' || attempts || ' times, left unhandled: ' || last_error, value
FROM failed WHERE attempts >= $3
RETURNING id
"""

T = TypeVar("T")
MessagesHook = Callable[[Database, dict[str, Any]], Awaitable[None]]
ChangeHook = Callable[[Database, str, dict[str, Any]], Awaitable[None]]


def _resolve(module: str, attr: str) -> Any:
    """`module.attr` if that module exists, else None. A module that exists but fails to import
    is logged and treated as absent (webhooks keep flowing; its changes wait in the table)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        logger.exception("hook module %s failed to import; its changes are kept unhandled", module)
        return None
    except Exception:
        logger.exception("hook module %s failed to import; its changes are kept unhandled", module)
        return None
    hook = getattr(mod, attr, None)
    if hook is None:
        logger.warning("hook module %s has no %s(); its changes are kept unhandled", module, attr)
    return hook


async def _shielded(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run `fn` (one transaction) to its end even if the worker is being cancelled.

    Why: a transaction cancelled while its BEGIN or COMMIT is on the wire leaves the pooled
    connection in a state the pool cannot reset. Shutdown therefore waits for the transaction in
    flight (milliseconds), bounded by TXN_DEADLINE_S.
    """
    with trio.CancelScope(shield=True, deadline=trio.current_time() + TXN_DEADLINE_S) as scope:
        return await fn(*args)
    assert scope.cancelled_caught
    raise DatabaseError(f"database transaction did not finish within {TXN_DEADLINE_S} s")


@dataclass
class Hooks:
    """Who takes recognised changes. `discover()` finds the installed ones."""

    messages: MessagesHook | None = None
    change: ChangeHook | None = None

    @classmethod
    def discover(cls) -> Hooks:
        return cls(messages=_resolve("broadcaster.inbox.handler", "handle_messages"),
                   change=_resolve("broadcaster.health", "handle_change"))

    def fields(self) -> list[str]:
        """The change fields some hook takes."""
        out = [MESSAGES_FIELD] if self.messages is not None else []
        if self.change is not None:
            out.extend(sorted(RECOGNISED_FIELDS))
        return out


def _parse_safely(body: bytes, event_id: int, received_at: datetime) -> Parsed:
    """parse_webhook, with any failure it did not foresee turned into a dead letter for the body."""
    try:
        return parse_webhook(body, webhook_event_id=event_id, received_at=received_at)
    except Exception as exc:
        logger.exception("apply: body %d could not be parsed; dead-lettered, raw body kept", event_id)
        parsed = Parsed()
        parsed.dead.append(DeadLetter("body", f"body could not be parsed: {exc!r}"))
        return parsed


@dataclass(frozen=True, slots=True)
class ApplyStatistics:
    bodies: int  # stored bodies processed
    statuses: int  # status events received (duplicates included)
    new_statuses: int  # of those, events not seen before (logged and applied or kept)
    rows: int  # ledger row updates
    unmatched: int  # events kept for a wamid not (yet) in the ledger
    dead_letters: int
    changes: int  # recognised non-status changes stored
    hooks_ok: int
    hook_errors: int
    poisoned: int  # bodies dead-lettered because processing them kept failing
    passes: int


class ApplyWorker:
    """Applies stored webhook bodies. Start `run()` in a nursery; call `wake()` after storing.

    Args:
        db: the pool (one connection per transaction; hooks use it too).
        hooks: who takes inbound messages and other changes; default `Hooks.discover()` on first use.
        batch_bodies: stored bodies claimed per transaction.
    """

    def __init__(self, db: Database, *, hooks: Hooks | None = None,
                 batch_bodies: int = BATCH_BODIES) -> None:
        self._db = db
        self._hooks = hooks
        self._batch = batch_bodies
        self._wakeup = trio.Event()
        self._enough = trio.Event()  # set once LINGER_BODIES arrived since the current pass began
        self._arrived = 0
        self._gen = 0  # bumped by wake()
        self._done_gen = -1  # the last generation fully applied
        self._progress = trio.lowlevel.ParkingLot()
        self._recheck_due = True  # after a (re)start: events may be left from a crash
        self._changes_due = True
        self._counts = dict.fromkeys(ApplyStatistics.__slots__, 0)

    # ----- public

    def wake(self, bodies: int = 1) -> None:
        """`bodies` new bodies were committed: apply them soon. Never blocks."""
        self._gen += 1
        self._arrived += bodies
        self._wakeup.set()
        if self._arrived >= LINGER_BODIES:
            self._enough.set()

    def statistics(self) -> ApplyStatistics:
        return ApplyStatistics(**self._counts)

    async def wait_applied(self) -> None:
        """Wait until every body committed before this call has been applied (tests, demos).

        Only meaningful while `run()` is running.
        """
        target = self._gen
        while self._done_gen < target:
            await self._progress.park()

    async def wait_pass(self) -> None:
        """Wait for the end of the next complete pass (e.g. to watch webhooks trickle in)."""
        await self._progress.park()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Apply whatever is stored, then again after every `wake()`; never returns unless cancelled.

        Batching: under a stream of small bodies a pass starts at most every LINGER_S (sooner once
        LINGER_BODIES are waiting), so statuses are applied within about LINGER_S of being stored
        and each transaction carries many bodies. After a quiet spell the next body is applied
        at once.
        """
        task_status.started()
        while True:
            target = self._gen
            started = trio.current_time()
            self._arrived = 0
            self._enough = trio.Event()
            await self.apply_all()
            self._done_gen = target
            self._progress.unpark_all()
            if self._gen == target:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            if self._arrived < LINGER_BODIES:
                with trio.move_on_at(started + LINGER_S):
                    await self._enough.wait()

    async def apply_all(self) -> None:
        """One pass: apply every stored body, recheck unmatched events, run the hooks."""
        while await self._apply_some():  # a full batch: there may be more
            pass
        if self._recheck_due:
            await self._retrying("recheck", self._recheck)
        if self._changes_due:
            await self._retrying("hooks", self._run_hooks)
        self._counts["passes"] += 1

    # ----- bodies

    async def _apply_some(self) -> bool:
        """Apply up to one batch; True when the batch was full (more may be waiting)."""
        limit = self._batch
        failures = 0
        delay = RETRY_BASE_S
        while True:
            claimed: list[int] = []
            try:
                return await _shielded(self._apply_batch, limit, claimed)
            except DatabaseUnavailable as exc:
                logger.warning("apply: database unavailable, retrying in %.1f s: %s", delay, exc)
            except Exception as exc:  # a database error, or a bug one body triggers: isolate it
                if not isinstance(exc, DatabaseError):
                    logger.exception("apply: batch of %d bodies failed", len(claimed))
                failures += 1
                if limit > 1:
                    logger.warning("apply: batch of %d bodies failed (%s); retrying smaller",
                                   len(claimed), exc)
                    limit = max(1, limit // 8)
                    failures = 0
                elif failures >= POISON_ATTEMPTS and claimed:
                    error = str(exc) if isinstance(exc, DatabaseError) else f"{type(exc).__name__}: {exc}"
                    await _shielded(self._poison, claimed[0], error)
                    return True
                else:
                    logger.warning("apply: body %s failed (%s), attempt %d of %d",
                                   claimed[0] if claimed else "?", exc, failures, POISON_ATTEMPTS)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _apply_batch(self, limit: int, claimed: list[int]) -> bool:
        """One transaction over up to `limit` bodies; True when more bodies may be waiting."""
        statuses: list[StatusEvent] = []
        dead: list[tuple[int, DeadLetter]] = []
        changes: list[tuple[int, Change]] = []
        async with self._db.transaction() as conn:
            await conn.execute(ASYNC_COMMIT_SQL)
            rows = await conn.fetch(CLAIM_SQL, limit, BATCH_BYTES)
            if not rows:
                return False
            claimed.extend(r["id"] for r in rows)
            for r in rows:
                parsed = _parse_safely(bytes(r["body"]), r["id"], r["received_at"])
                statuses.extend(parsed.statuses)
                dead.extend((r["id"], d) for d in parsed.dead)
                changes.extend((r["id"], c) for c in parsed.changes)
                await trio.lowlevel.checkpoint()  # a 1,000-status body must not stall the server
            result = await apply_new_statuses(conn, statuses) if statuses else ApplyResult()
            # a status no ledger row took may be for one of our free-form inbox replies
            replies = await apply_reply_statuses(conn, statuses) if result.unmatched else []
            if dead:
                await conn.execute(INSERT_DEAD_SQL, [i for i, _ in dead],
                                   [clean_text(d.field, 200) for _, d in dead],
                                   [clean_text(d.location, 200) for _, d in dead],
                                   [clean_text(d.reason) for _, d in dead],
                                   [None if d.payload is None
                                    else orjson.dumps(jsonable(d.payload)).decode() for _, d in dead])
            if changes:
                await conn.execute(INSERT_CHANGES_SQL, [i for i, _ in changes],
                                   [c.field for _, c in changes],
                                   [orjson.dumps(jsonable(c.value)).decode() for _, c in changes])
            await conn.execute(MARK_PROCESSED_SQL, claimed)
        claimed.clear()  # committed: a failure from here on must not dead-letter an applied body
        self._after_batch(len(rows), statuses, result, len(dead), len(changes))
        for r in replies:
            if r.status == "failed":
                logger.warning("inbox reply %d (conversation %d) failed at WhatsApp: code %s %s", r.reply_id,
                               r.conversation_id, r.error_code, r.error_title or "")
        return rows[0]["locked_n"] >= limit or rows[0]["locked_n"] > len(rows)

    def _after_batch(self, bodies: int, statuses: list[StatusEvent], result: ApplyResult,
                     dead: int, changes: int) -> None:
        c = self._counts
        c["bodies"] += bodies
        c["statuses"] += len(statuses)
        c["new_statuses"] += result.events
        c["rows"] += result.rows
        c["unmatched"] += result.unmatched
        c["dead_letters"] += dead
        c["changes"] += changes
        if result.unmatched:
            self._recheck_due = True
        if changes:
            self._changes_due = True
        for ev in statuses:
            metrics.record_status_event(ev.status, ev.error_code)
        for seconds in result.delivered_s:
            metrics.observe_delivery_latency("delivered", seconds)
        for seconds in result.read_s:
            metrics.observe_delivery_latency("read", seconds)
        for _ in range(dead):
            metrics.record_webhook("dead_letter")
        if dead:
            logger.warning("apply: %d dead letter(s) stored (see webhook_dead_letters)", dead)

    def _dead_lettered_changes(self, rows: list[Any]) -> None:
        if rows:
            logger.error("apply hooks: %d change(s) failed %d times and were dead-lettered "
                         "(see webhook_dead_letters; the change stays in webhook_changes)",
                         len(rows), HOOK_ATTEMPTS)
            self._counts["dead_letters"] += len(rows)
            for _ in rows:
                metrics.record_webhook("dead_letter")

    async def _poison(self, body_id: int, error: str) -> None:
        logger.error("apply: body %d failed %d times (%s); dead-lettered, raw body kept",
                     body_id, POISON_ATTEMPTS, error)
        async with self._db.transaction() as conn:
            await conn.execute(INSERT_DEAD_SQL, [body_id], [None], ["body"],
                               [clean_text(f"processing failed {POISON_ATTEMPTS} times: {error}")],
                               [None])
            await conn.execute(MARK_PROCESSED_SQL, [body_id])
        self._counts["poisoned"] += 1
        self._counts["dead_letters"] += 1
        metrics.record_webhook("dead_letter")

    # ----- rechecks and hooks

    async def _retrying(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` until it succeeds; database failures back off (capped) and retry."""
        delay = RETRY_BASE_S
        while True:
            try:
                await step()
                return
            except DatabaseError as exc:
                logger.warning("apply %s: %s; retrying in %.1f s", what, exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _recheck(self) -> None:
        self._recheck_due = False
        try:
            result = await _shielded(apply_rechecks, self._db)
        except BaseException:
            self._recheck_due = True
            raise
        self._counts["rows"] += result.rows
        for seconds in result.delivered_s:
            metrics.observe_delivery_latency("delivered", seconds)
        for seconds in result.read_s:
            metrics.observe_delivery_latency("read", seconds)

    async def _run_hooks(self) -> None:
        self._changes_due = False
        if self._hooks is None:
            self._hooks = Hooks.discover()
        fields = self._hooks.fields()
        if not fields:
            return
        try:
            while True:
                rows = await self._db.fetch(FETCH_CHANGES_SQL, fields, HOOK_ATTEMPTS, HOOK_BATCH)
                done: list[int] = []
                failed: list[tuple[int, str]] = []
                for r in rows:
                    value = orjson.loads(r["value"])
                    try:
                        if r["field"] == MESSAGES_FIELD:
                            assert self._hooks.messages is not None
                            await self._hooks.messages(self._db, value)
                        else:
                            assert self._hooks.change is not None
                            await self._hooks.change(self._db, r["field"], value)
                    except Exception as exc:  # a hook's bug must not stop status application
                        logger.exception("apply hooks: change %d (%s) failed", r["id"], r["field"])
                        failed.append((r["id"], clean_text(repr(exc), 500) or ""))
                    else:
                        done.append(r["id"])
                if done:
                    await self._db.execute(CHANGES_HANDLED_SQL, done)
                if failed:
                    exhausted = await self._db.fetch(CHANGES_FAILED_SQL, [i for i, _ in failed],
                                                     [e for _, e in failed], HOOK_ATTEMPTS)
                    self._dead_lettered_changes(exhausted)
                self._counts["hooks_ok"] += len(done)
                self._counts["hook_errors"] += len(failed)
                if len(rows) < HOOK_BATCH:
                    return
        except BaseException:
            self._changes_due = True
            raise
