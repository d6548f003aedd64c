"""Slack escalations: the message (pure), one POST with short retries, and the queue worker.

An escalation is queued in Postgres inside the transaction that decided it (`inbox_escalations`,
`dedup_key` UNIQUE = one Slack post per conversation escalation) and posted later by
`run_slack_sender`, so Slack never blocks the webhook answer.

Retries, two levels:
- inside one claim, `post_escalation` retries a transient failure (connection error, timeout,
  HTTP 429 or 5xx) with tenacity: `attempts` tries, exponential backoff with jitter
  (`wait_initial_s` doubling to `wait_max_s`: 0.5, 1, 2, … s by default). A 4xx other than 429
  (invalid_payload, no_service, channel_not_found) is final at once;
- a claim that still failed goes back to `pending` for `requeue_s · 2^(claims-1)` seconds (60 s,
  2 min, 4 min, …) until `max_claims`, then `failed` with the last error.

What it is not: exactly-once. Slack incoming webhooks have no idempotency key; a POST that timed
out after Slack received it, or a worker killed between the POST and recording it, is posted again.
Everything else (duplicate webhooks, repeated escalation of one conversation, several workers)
yields one post.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import trio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from broadcaster.db import Database
from broadcaster.errors import BroadcasterError
from broadcaster.logs import mask_phone

__all__ = [
    "SlackConfig", "SlackRejected", "SlackUnavailable", "claim_escalations", "escalation_message",
    "post_escalation", "send_due_escalations",
]

logger = logging.getLogger(__name__)

TEXT_PREVIEW_CHARS = 600  # of the contact's message quoted in Slack


@dataclass(frozen=True)
class SlackConfig:
    webhook_url: str                 # SLACK_WEBHOOK_URL (a secret: never logged)
    attempts: int = 4                # POSTs per claim (tenacity stop_after_attempt)
    wait_initial_s: float = 0.5      # first backoff between POSTs of one claim; doubles
    wait_max_s: float = 8.0          # backoff ceiling inside one claim
    timeout_s: float = 10.0          # per POST
    max_claims: int = 6              # claims before an escalation is `failed`
    requeue_s: float = 60.0          # delay before the next claim; doubles per claim
    lease_s: float = 120.0           # a `sending` row older than this was abandoned (crash): retried
    batch: int = 20                  # escalations claimed per round

    def __post_init__(self) -> None:
        if not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("SLACK_WEBHOOK_URL must be an http(s) URL")
        for name in ("attempts", "max_claims", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SlackConfig.{name} must be at least 1")

    def __repr__(self) -> str:
        return f"SlackConfig(attempts={self.attempts}, max_claims={self.max_claims})"


class SlackUnavailable(BroadcasterError):
    """Slack did not take the post this time (connection, timeout, 429, 5xx): retry later."""


class SlackRejected(BroadcasterError):
    """Slack refused the post (4xx): retrying the same payload cannot succeed."""


def slack_escape(text: str) -> str:
    """Text shown as itself in Slack mrkdwn: `&`, `<` and `>` escaped (Slack's three control characters)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escalation_message(*, conversation_id: int, workspace: str, team: str | None, contact_name: str | None,
                       wa_id: str, genre: str | None, language: str | None, text: str | None,
                       reason: str, campaign: str | None = None) -> dict[str, Any]:
    """The Slack incoming-webhook body for one escalation (text fallback + Block Kit).

    The phone number is masked (last 4 digits); the reply command names the conversation id.
    Everything a creator wrote (name, text) and every value is escaped for Slack, so a message
    cannot ping the channel (`<!channel>`) or disguise a link (`<https://…|text>`).
    """
    who = f"{slack_escape(contact_name or 'Unknown creator')} ({mask_phone(wa_id)})"
    quoted = (text or "(no text)").strip()
    if len(quoted) > TEXT_PREVIEW_CHARS:
        quoted = quoted[:TEXT_PREVIEW_CHARS - 1] + "…"
    quoted = slack_escape(quoted)
    reply = f'broadcaster inbox reply {conversation_id} "…"'
    team = slack_escape(team or "unrouted")
    fields = [("Contact", who), ("Workspace", slack_escape(workspace)), ("Team", team),
              ("Genre", slack_escape(genre or "unknown")), ("Language", slack_escape(language or "unknown")),
              ("Why", slack_escape(reason))]
    if campaign:
        fields.append(("Replying to campaign", slack_escape(campaign)))
    summary = f"Escalation: conversation {conversation_id} from {who}, team {team}"
    return {
        "text": f"{summary}: {quoted}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"Conversation {conversation_id} needs a human"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}:* {v}"} for k, v in fields]},
            {"type": "section", "text": {"type": "mrkdwn", "text": "> " + quoted.replace("\n", "\n> ")}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Reply with `{reply}`"}]},
        ],
    }


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, SlackUnavailable)


async def _post_once(client: httpx.AsyncClient, config: SlackConfig, payload: Mapping[str, Any]) -> None:
    try:
        resp = await client.post(config.webhook_url, content=orjson.dumps(payload),
                                 headers={"content-type": "application/json"}, timeout=config.timeout_s)
    except httpx.TransportError as exc:  # connect/read/write errors and timeouts
        raise SlackUnavailable(f"Slack unreachable: {type(exc).__name__}") from exc
    if resp.status_code == 200:
        return
    detail = resp.text[:200]
    if resp.status_code == 429 or resp.status_code >= 500:
        raise SlackUnavailable(f"Slack answered HTTP {resp.status_code}: {detail}")
    raise SlackRejected(f"Slack refused the post with HTTP {resp.status_code}: {detail}")


async def post_escalation(client: httpx.AsyncClient, config: SlackConfig, payload: Mapping[str, Any]) -> int:
    """POST one message, retrying transient failures; returns the number of POSTs made.

    Raises:
        SlackUnavailable: still failing after `config.attempts` POSTs.
        SlackRejected: a 4xx answer (not retried).
    """
    retrying = AsyncRetrying(
        stop=stop_after_attempt(config.attempts),
        wait=wait_exponential_jitter(multiplier=config.wait_initial_s, max=config.wait_max_s,
                                     jitter=config.wait_initial_s),
        retry=retry_if_exception(_transient),
        sleep=trio.sleep,
        reraise=True,
    )
    posts = 0
    async for attempt in retrying:
        with attempt:
            posts += 1
            await _post_once(client, config, payload)
    return posts


# --------------------------------------------------------------------------- the queue


async def claim_escalations(db: Database, config: SlackConfig) -> list[Any]:
    """Take due escalations (pending and due, or `sending` with an expired lease) for this worker."""
    return await db.fetch(
        """UPDATE inbox_escalations e
              SET state = 'sending', attempts = e.attempts + 1,
                  lease_until = now() + make_interval(secs => $1)
            WHERE e.id IN (SELECT id FROM inbox_escalations
                            WHERE (state = 'pending' AND next_attempt_at <= now())
                               OR (state = 'sending' AND lease_until < now())
                            ORDER BY next_attempt_at, id
                            LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING e.id, e.conversation_id, e.payload, e.attempts""",
        config.lease_s, config.batch)


async def _record(db: Database, esc_id: int, state: str, error: str | None, delay_s: float = 0.0) -> None:
    with trio.CancelScope(shield=True):  # an outcome, once known, is written even when cancelled
        await db.execute(
            """UPDATE inbox_escalations
                  SET state = $2, last_error = $3, lease_until = NULL,
                      sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END,
                      next_attempt_at = now() + make_interval(secs => $4)
                WHERE id = $1""", esc_id, state, error, delay_s)


async def send_due_escalations(db: Database, client: httpx.AsyncClient, config: SlackConfig) -> int:
    """Claim and post every due escalation, one after another; returns how many were sent.

    Cancellation: a POST cancelled midway leaves its row `sending`; it is retried after its lease.
    """
    sent = 0
    while True:
        rows = await claim_escalations(db, config)
        if not rows:
            return sent
        for row in rows:
            payload = orjson.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
            try:
                posts = await post_escalation(client, config, payload)
            except SlackRejected as exc:
                logger.error("escalation %d (conversation %d) refused by Slack: %s", row["id"],
                             row["conversation_id"], exc)
                await _record(db, row["id"], "failed", str(exc))
            except SlackUnavailable as exc:
                if row["attempts"] >= config.max_claims:
                    logger.error("escalation %d (conversation %d) failed after %d claims: %s", row["id"],
                                 row["conversation_id"], row["attempts"], exc)
                    await _record(db, row["id"], "failed", str(exc))
                else:
                    delay = config.requeue_s * 2 ** (row["attempts"] - 1)
                    logger.warning("escalation %d (conversation %d) not posted, retry in %.0f s: %s",
                                   row["id"], row["conversation_id"], delay, exc)
                    await _record(db, row["id"], "pending", str(exc), delay)
            else:
                sent += 1
                logger.info("escalation %d (conversation %d) posted to Slack (%d POSTs)", row["id"],
                            row["conversation_id"], posts)
                await _record(db, row["id"], "sent", None)
