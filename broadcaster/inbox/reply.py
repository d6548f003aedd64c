"""Free-form text replies (Cloud API §1.2), allowed only inside the 24 h customer-service window.

Two paths, one sender (`CloudApiSender`: the campaign transport's httpcore lanes):
- `send_agent_reply`: an agent answers a conversation now (the CLI). The window is checked from
  Postgres first: outside it the reply is refused with `WindowClosed` (use a template) and nothing
  is sent. A 131047 from the Cloud API means the same and raises the same error.
- `send_due_bot_replies`: the outbox of rule answers (opt-out/opt-in confirmations, FAQ links)
  queued by the inbound handler in the message's own transaction, sent by the inbox worker.

Guarantees: a rule answer is queued once per inbound message (UNIQUE source_message_id); it is
POSTed at most once per claim, and a reply whose POST outcome is unknown (timeout after the
request left, or a worker killed mid-send) becomes `unknown`, never re-sent blindly: the Cloud API
has no idempotency key. Window closed before the outbox got to it → `expired`, not sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import trio

from broadcaster.config import Settings
from broadcaster.db import Database
from broadcaster.errors import (
    ConfigError,
    InputError,
    NotFoundError,
    OutcomeUnknown,
    PermanentSendError,
    SendError,
    StateError,
    ThrottledError,
    TransientSendError,
)
from broadcaster.logs import mask_phone
from broadcaster.metrics import observe_first_response
from broadcaster.transport import CloudApiTransport, Lane, SendResult, TransportConfig

__all__ = [
    "TEXT_MAX", "AgentReply", "CloudApiSender", "TextSender", "WindowClosed", "send_agent_reply",
    "send_due_bot_replies", "text_payload", "window_error",
]

logger = logging.getLogger(__name__)

TEXT_MAX = 4096  # chars in a text body (§1.2)
RE_ENGAGEMENT = 131047  # free-form outside the window
OUTBOX_BATCH = 20  # bot replies claimed per round
OUTBOX_MAX_ATTEMPTS = 5  # transient failures before a bot reply is `failed`
OUTBOX_RETRY_S = 5.0  # first retry delay of a bot reply; doubles
OUTBOX_LEASE_S = 120.0  # a `sending` bot reply older than this was abandoned: it becomes `unknown`


class WindowClosed(StateError):
    """The 24 h customer-service window is closed: only an approved template may be sent."""


def _fmt(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def window_error(conversation_id: int, wa_id: str, expires_at: datetime | None, now: datetime) -> WindowClosed | None:
    """None inside the window; else the error that tells the agent to use a template. Pure."""
    if expires_at is not None and now < expires_at:
        return None
    if expires_at is None:
        why = f"{mask_phone(wa_id)} has not written to this number, so no customer-service window is open"
    else:
        why = f"the 24 h customer-service window with {mask_phone(wa_id)} closed at {_fmt(expires_at)}"
    return WindowClosed(f"conversation {conversation_id}: {why}; free-form replies are allowed only inside it. "
                        "Send an approved template instead (e.g. a campaign to this contact).")


def text_payload(wa_id: str, body: str, *, preview_url: bool = False) -> bytes:
    """The §1.2 text message. Raises InputError for an empty or over-long body."""
    if not body.strip():
        raise InputError("reply text is empty")
    if len(body) > TEXT_MAX:
        raise InputError(f"reply text is {len(body)} characters; WhatsApp allows {TEXT_MAX}")
    return orjson.dumps({"messaging_product": "whatsapp", "recipient_type": "individual", "to": wa_id,
                         "type": "text", "text": {"preview_url": preview_url, "body": body}})


class TextSender(Protocol):
    async def send_text(self, phone_number_id: str, payload: bytes) -> SendResult: ...


class CloudApiSender:
    """Sends through the campaign transport: one lane per business number, one request at a time.

    Use as `async with CloudApiSender.from_settings(settings) as sender:`.
    """

    def __init__(self, config: TransportConfig) -> None:
        self._config = config
        self._lanes: dict[str, tuple[Lane, trio.Lock]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudApiSender:
        return cls(TransportConfig(api_url=settings.whatsapp_api_url, token=settings.whatsapp_token))

    async def __aenter__(self) -> CloudApiSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, {}
        with trio.CancelScope(shield=True):
            for lane, _ in lanes.values():
                await lane.aclose()

    async def send_text(self, phone_number_id: str, payload: bytes) -> SendResult:
        entry = self._lanes.get(phone_number_id)
        if entry is None:
            lane = CloudApiTransport(self._config, phone_number_id).open_lane()
            entry = self._lanes[phone_number_id] = (lane, trio.Lock())
        lane, lock = entry
        async with lock:
            return await lane.send(payload)


@dataclass(frozen=True)
class AgentReply:
    reply_id: int
    conversation_id: int
    wamid: str
    agent: str | None
    first_response: bool  # this reply set the conversation's human first response time


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


async def send_agent_reply(db: Database, sender: TextSender, conversation_id: int, text: str, *,
                           agent: str | None = None, default_phone_number_id: str | None = None,
                           now: datetime | None = None) -> AgentReply:
    """Send an agent's free-form reply to a conversation, window-checked; records FRT.

    `agent` is the agent's name in the conversation's workspace (default: the assigned agent).
    Replying to a queued conversation assigns it to the replying agent.

    Raises:
        NotFoundError: no such conversation or agent.
        StateError: the conversation is resolved.
        WindowClosed: outside the 24 h window (checked here, or 131047 from the Cloud API).
        InputError: empty or over-long text.
        SendError: the Cloud API did not accept it (OutcomeUnknown: it may have arrived).
    """
    now = _now(now)
    async with db.transaction() as conn:
        conv = await conn.fetchrow(
            """SELECT c.id, c.workspace, c.status, c.agent_id, c.phone_number_id, k.wa_id,
                      w.expires_at, a.name AS agent_name
                 FROM inbox_conversations c
                 JOIN contacts k ON k.id = c.contact_id
                 LEFT JOIN inbox_service_windows w
                        ON w.phone_number_id = coalesce(c.phone_number_id, '') AND w.wa_id = k.wa_id
                 LEFT JOIN inbox_agents a ON a.id = c.agent_id
                WHERE c.id = $1 FOR NO KEY UPDATE OF c""", conversation_id)
        if conv is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist (see `broadcaster inbox list`)")
        if conv["status"] == "resolved":
            raise StateError(f"conversation {conversation_id} is resolved; the contact's next message opens "
                             "a new conversation")
        agent_id, agent_name = conv["agent_id"], conv["agent_name"]
        if agent is not None:
            row = await conn.fetchrow("SELECT id, name FROM inbox_agents WHERE workspace = $1 AND name = $2",
                                      conv["workspace"], agent)
            if row is None:
                raise NotFoundError(f"agent {agent!r} does not exist in workspace {conv['workspace']!r} "
                                    "(see `broadcaster agents list`)")
            agent_id, agent_name = row["id"], row["name"]
        closed = window_error(conversation_id, conv["wa_id"], conv["expires_at"], now)
        if closed is not None:
            raise closed
        payload = text_payload(conv["wa_id"], text)
        phone_number_id = conv["phone_number_id"] or default_phone_number_id
        if not phone_number_id:
            raise ConfigError("no business number to reply from: set WHATSAPP_PHONE_NUMBER_ID")
        reply_id = await conn.fetchval(
            """INSERT INTO inbox_replies (conversation_id, author, agent_id, phone_number_id, wa_id, body,
                                          state, attempts, lease_until, created_at)
               VALUES ($1, 'agent', $2, $3, $4, $5, 'sending', 1, $6, $6) RETURNING id""",
            conversation_id, agent_id, phone_number_id, conv["wa_id"], text, now)
    try:
        result = await sender.send_text(phone_number_id, payload)
    except SendError as exc:
        state = "unknown" if isinstance(exc, OutcomeUnknown) else "failed"
        with trio.CancelScope(shield=True):
            await db.execute("UPDATE inbox_replies SET state = $2, error_code = $3, error = $4 WHERE id = $1",
                             reply_id, state, exc.code, str(exc))
        if isinstance(exc, PermanentSendError) and exc.code == RE_ENGAGEMENT:
            raise WindowClosed(f"conversation {conversation_id}: the Cloud API refused the reply with 131047 "
                               "(more than 24 h since the contact's last message). Send an approved template "
                               "instead.") from exc
        raise
    async with db.transaction() as conn:
        await conn.execute("UPDATE inbox_replies SET state = 'sent', wamid = $2, sent_at = $3, lease_until = NULL"
                           " WHERE id = $1", reply_id, result.wamid, now)
        cur = await conn.fetchrow(
            """SELECT c.status, c.first_human_reply_at, c.first_inbound_at, t.name AS team
                 FROM inbox_conversations c LEFT JOIN inbox_teams t ON t.id = c.team_id
                WHERE c.id = $1 FOR NO KEY UPDATE OF c""", conversation_id)
        is_first = cur["first_human_reply_at"] is None
        take = agent_id is not None and cur["status"] in ("queued", "bot")  # the replying agent takes it
        await conn.execute(
            """UPDATE inbox_conversations
                  SET first_human_reply_at = coalesce(first_human_reply_at, $2),
                      first_human_agent_id = CASE WHEN $3 THEN $4 ELSE first_human_agent_id END,
                      status = CASE WHEN $5 THEN 'assigned' ELSE status END,
                      agent_id = CASE WHEN $5 THEN $4 ELSE agent_id END,
                      assigned_at = CASE WHEN $5 THEN $2 ELSE assigned_at END,
                      updated_at = now()
                WHERE id = $1""", conversation_id, now, is_first, agent_id, take)
    if is_first:
        observe_first_response(cur["team"] or "unrouted", (now - cur["first_inbound_at"]).total_seconds())
    logger.info("conversation %d: agent %s replied to %s (wamid %s)", conversation_id, agent_name or "-",
                mask_phone(conv["wa_id"]), result.wamid)
    return AgentReply(reply_id, conversation_id, result.wamid, agent_name, is_first)


# --------------------------------------------------------------------------- the bot outbox


async def _claim_bot_replies(db: Database, batch: int) -> list[Any]:
    async with db.transaction() as conn:
        abandoned = await conn.fetch(
            """UPDATE inbox_replies SET state = 'unknown', lease_until = NULL,
                      error = 'worker stopped during the send: outcome unknown, not re-sent'
                WHERE author = 'bot' AND state = 'sending' AND lease_until < now() RETURNING id""")
        for row in abandoned:
            logger.warning("bot reply %d: abandoned mid-send, marked unknown (not re-sent)", row["id"])
        return await conn.fetch(
            """UPDATE inbox_replies r
                  SET state = 'sending', attempts = r.attempts + 1,
                      lease_until = now() + make_interval(secs => $2)
                WHERE r.id IN (SELECT id FROM inbox_replies
                                WHERE author = 'bot' AND state = 'queued' AND next_attempt_at <= now()
                                ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING r.id, r.conversation_id, r.phone_number_id, r.wa_id, r.body, r.preview_url, r.attempts,
                      (SELECT w.expires_at FROM inbox_service_windows w
                        WHERE w.phone_number_id = coalesce(r.phone_number_id, '') AND w.wa_id = r.wa_id)
                      AS expires_at""", batch, OUTBOX_LEASE_S)


async def _finish(db: Database, reply_id: int, state: str, *, wamid: str | None = None, code: int | None = None,
                  error: str | None = None, delay_s: float = 0.0) -> None:
    with trio.CancelScope(shield=True):
        await db.execute(
            """UPDATE inbox_replies
                  SET state = $2, wamid = $3, error_code = $4, error = $5, lease_until = NULL,
                      sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END,
                      next_attempt_at = now() + make_interval(secs => $6)
                WHERE id = $1""", reply_id, state, wamid, code, error, delay_s)


async def send_due_bot_replies(db: Database, sender: TextSender, *, default_phone_number_id: str | None = None,
                               batch: int = OUTBOX_BATCH) -> int:
    """Send every due rule answer; returns how many were accepted by the Cloud API."""
    sent = 0
    while True:
        rows = await _claim_bot_replies(db, batch)
        if not rows:
            return sent
        for row in rows:
            now = datetime.now(UTC)
            if window_error(row["conversation_id"], row["wa_id"], row["expires_at"], now) is not None:
                await _finish(db, row["id"], "expired", error="the 24 h window closed before it was sent")
                continue
            phone_number_id = row["phone_number_id"] or default_phone_number_id
            if not phone_number_id:
                await _finish(db, row["id"], "failed", error="no business number: set WHATSAPP_PHONE_NUMBER_ID")
                continue
            try:
                result = await sender.send_text(
                    phone_number_id, text_payload(row["wa_id"], row["body"], preview_url=row["preview_url"]))
            except OutcomeUnknown as exc:
                await _finish(db, row["id"], "unknown", code=exc.code, error=str(exc))
            except (ThrottledError, TransientSendError) as exc:
                if row["attempts"] >= OUTBOX_MAX_ATTEMPTS:
                    await _finish(db, row["id"], "failed", code=exc.code, error=str(exc))
                else:
                    await _finish(db, row["id"], "queued", code=exc.code, error=str(exc),
                                  delay_s=(exc.retry_after if isinstance(exc, ThrottledError) and exc.retry_after
                                           else OUTBOX_RETRY_S * 2 ** (row["attempts"] - 1)))
            except SendError as exc:
                state = "expired" if exc.code == RE_ENGAGEMENT else "failed"
                await _finish(db, row["id"], state, code=exc.code, error=str(exc))
            except InputError as exc:
                await _finish(db, row["id"], "failed", error=str(exc))
            else:
                sent += 1
                await _finish(db, row["id"], "sent", wamid=result.wamid)
