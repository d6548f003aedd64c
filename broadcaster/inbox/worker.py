"""The inbox worker: sends queued rule answers and Slack escalations, outside the webhook path.

    handler (webhook, one transaction per message) ──queues rows──▶ Postgres ──▶ run_inbox_worker
                                                  └──nudge()──────────────────────▶ (wakes at once)

`run_inbox_worker` runs two loops (bot replies, Slack). Each sends everything due, then waits for
a nudge from `nudge()` (the handler calls it after committing, in this process) or for
`sweep_s` seconds (rows queued by another process, retries that fell due). A wait is a wait for an
event with a deadline, never a sleep in place of one.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable

import httpx
import trio

from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.errors import BroadcasterError
from broadcaster.inbox.reply import CloudApiSender, TextSender, send_due_bot_replies
from broadcaster.inbox.slack import SlackConfig, send_due_escalations
from broadcaster.metrics import set_queue_lengths

__all__ = ["SWEEP_S", "Wakeup", "nudge", "refresh_queue_gauges", "run_inbox_worker"]

logger = logging.getLogger(__name__)

SWEEP_S = 5.0  # seconds between sweeps for rows queued by other processes or retries now due
ERROR_BACKOFF_S = 5.0  # after a failed round (database down): wait this long before the next

_wakeups: weakref.WeakSet[Wakeup] = weakref.WeakSet()


class Wakeup:
    """A level-triggered nudge for one loop: `set()` any number of times, `wait()` consumes it."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a nudge; True if nudged. The nudge is consumed."""
        with trio.move_on_after(timeout_s):
            await self._event.wait()
        nudged = self._event.is_set()
        self._event = trio.Event()
        return nudged


def nudge() -> None:
    """Wake every running inbox worker loop in this process (call after committing new rows)."""
    for wakeup in list(_wakeups):
        try:
            wakeup.set()
        except RuntimeError:  # a loop from another trio run (tests): it will sweep
            pass


async def _loop(name: str, round_: Callable[[], Awaitable[int]], sweep_s: float,
                task_status: trio.TaskStatus[None]) -> None:
    wakeup = Wakeup()
    _wakeups.add(wakeup)
    task_status.started()
    try:
        while True:
            try:
                done = await round_()
                if done:
                    logger.info("inbox worker %s: %d sent", name, done)
                wait = sweep_s
            except BroadcasterError as exc:  # the database or a config problem: log, back off, retry
                logger.error("inbox worker %s: round failed: %s", name, exc)
                wait = ERROR_BACKOFF_S
            await wakeup.wait(wait)
    finally:
        _wakeups.discard(wakeup)


async def refresh_queue_gauges(db: Database) -> int:
    """Set the per-team queue-length gauge from Postgres (one GROUP BY); returns 0 (nothing sent)."""
    rows = await db.fetch(
        """SELECT coalesce(t.name, 'unrouted') AS team, count(c.id) AS n
             FROM inbox_conversations c LEFT JOIN inbox_teams t ON t.id = c.team_id
            WHERE c.status = 'queued' GROUP BY 1""")
    set_queue_lengths({r["team"]: r["n"] for r in rows})
    return 0


async def run_inbox_worker(db: Database, settings: Settings, *, sender: TextSender | None = None,
                           slack: SlackConfig | None = None, sweep_s: float = SWEEP_S,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Send queued rule answers and Slack escalations until cancelled. Never returns otherwise.

    Also refreshes the `broadcaster_inbox_queue_length` gauge every `sweep_s`.

    `slack` defaults to SLACK_WEBHOOK_URL; without it escalations stay queued (warned once) and
    are posted when a worker with a URL runs. Reports started once both loops run.

    Cancellation: an in-flight POST is abandoned; its row is settled by the lease rules (a Slack
    post is retried, a WhatsApp reply becomes `unknown`).
    """
    if slack is None and settings.slack_webhook_url:
        slack = SlackConfig(settings.slack_webhook_url)
    own_sender = sender is None
    text_sender: TextSender = sender if sender is not None else CloudApiSender.from_settings(settings)
    try:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            await nursery.start(_loop, "replies", lambda: send_due_bot_replies(
                db, text_sender, default_phone_number_id=settings.whatsapp_phone_number_id), sweep_s)
            await nursery.start(_loop, "queue-gauges", lambda: refresh_queue_gauges(db), sweep_s)
            if slack is not None:
                await nursery.start(_loop, "slack", lambda: send_due_escalations(db, client, slack), sweep_s)
            else:
                logger.warning("SLACK_WEBHOOK_URL is not set: escalations stay queued in inbox_escalations")
            task_status.started()
    finally:
        if own_sender and isinstance(text_sender, CloudApiSender):
            await text_sender.aclose()
