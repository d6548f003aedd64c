"""Retention: delete webhook data that has done its job, older than a cut-off.

What goes (each older than the cut-off):
- raw webhook bodies already processed, once nothing refers to them any more;
- handled non-status changes (inbound messages live on in the inbox tables);
- dead letters;
- the status-event log (its only use after application is deduplicating redeliveries, and Meta
  stops redelivering after 7 days);
- status events that never found their message (statuses for wamids we did not send).

What stays: the ledger, the inbox (messages, conversations, replies), consent events, campaigns.
A change no hook handled yet and a body not yet processed are never deleted, whatever their age.

Guarantees: never deletes anything younger than MIN_RETENTION (Meta redelivers for up to 7 days);
each table is pruned in batches of BATCH rows (found through the time-column BRIN indexes of
migration 0017), one short transaction per batch, so a prune on a
busy database never holds long locks; running it twice at once only makes the second find less.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import trio

from broadcaster.db import Database
from broadcaster.errors import UsageError

__all__ = ["MIN_RETENTION", "PruneResult", "parse_age", "prune"]

MIN_RETENTION = timedelta(days=7)
MAX_RETENTION = timedelta(days=3650)
BATCH = 5_000

# (label, statement deleting up to $2 rows older than $1). Order matters: changes and dead letters
# go before the bodies they refer to.
_STEPS: tuple[tuple[str, str], ...] = (
    ("status events never matched", """
        DELETE FROM status_pending WHERE event_id IN (
            SELECT event_id FROM status_pending WHERE created_at < $1 LIMIT $2)"""),
    ("handled changes", """
        DELETE FROM webhook_changes WHERE id IN (
            SELECT id FROM webhook_changes WHERE handled_at IS NOT NULL AND handled_at < $1 LIMIT $2)"""),
    ("dead letters", """
        DELETE FROM webhook_dead_letters WHERE id IN (
            SELECT id FROM webhook_dead_letters WHERE created_at < $1 LIMIT $2)"""),
    ("processed webhook bodies", """
        DELETE FROM webhook_events WHERE id IN (
            SELECT e.id FROM webhook_events e
            WHERE e.processed_at IS NOT NULL AND e.received_at < $1
              AND NOT EXISTS (SELECT 1 FROM webhook_changes c WHERE c.webhook_event_id = e.id)
              AND NOT EXISTS (SELECT 1 FROM webhook_dead_letters d WHERE d.webhook_event_id = e.id)
            LIMIT $2)"""),
    ("status-event log", """
        DELETE FROM status_events WHERE id IN (
            SELECT s.id FROM status_events s
            WHERE s.received_at < $1
              AND NOT EXISTS (SELECT 1 FROM status_pending p WHERE p.event_id = s.id)
            LIMIT $2)"""),
)


@dataclass
class PruneResult:
    older_than: timedelta
    deleted: dict[str, int] = field(default_factory=dict)  # label → rows

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def parse_age(text: str) -> timedelta:
    """'30d', '72h', '2w' → timedelta.

    Raises:
        UsageError: not a number followed by h, d or w.
    """
    units = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    if unit not in units or not value.isascii() or not value.isdigit():
        raise UsageError(f"--older-than {text!r}: expected a number of hours, days or weeks, like 30d, 72h or 2w")
    age = int(value) * units[unit] if len(value) <= 6 else None
    if age is None or age > MAX_RETENTION:
        raise UsageError(f"--older-than {text!r}: at most {MAX_RETENTION.days} days")
    return age


async def prune(db: Database, older_than: timedelta, *, batch: int = BATCH) -> PruneResult:
    """Delete what the module docstring lists, older than `older_than`; returns rows per kind.

    Raises:
        UsageError: `older_than` is under MIN_RETENTION.
    """
    if older_than < MIN_RETENTION:
        raise UsageError(f"--older-than must be at least {MIN_RETENTION.days} days: WhatsApp redelivers "
                         "webhooks for up to 7 days, and a pruned duplicate would be applied again")
    cutoff = await db.fetchval("SELECT now() - $1::interval", older_than)
    result = PruneResult(older_than)
    for label, sql in _STEPS:
        total = 0
        while True:
            status = await db.execute(sql, cutoff, batch)
            n = int(status.split()[-1])
            total += n
            if n < batch:
                break
            await trio.lowlevel.checkpoint()
        result.deleted[label] = total
    return result
