"""What agents do to a conversation: resolve, escalate (mark for Slack), assign; and listing.

Resolving frees a slot under the agent's cap, so the agent's teams are drained (their oldest
queued conversations assigned) in the same transaction. A resolved conversation stays resolved:
the contact's next message opens a new conversation, which is a new FRT/resolution measurement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broadcaster.db import Connection, Database
from broadcaster.errors import NotFoundError, StateError
from broadcaster.inbox import routing
from broadcaster.inbox.directory import agent_id_of
from broadcaster.inbox.handler import escalate_in
from broadcaster.inbox.worker import nudge
from broadcaster.metrics import observe_resolution, record_escalation

__all__ = ["Resolution", "assign_conversation", "escalate_conversation", "list_conversations",
           "resolve_conversation"]

logger = logging.getLogger(__name__)

STATUSES = ("bot", "queued", "assigned", "resolved")


@dataclass(frozen=True)
class Resolution:
    conversation_id: int
    resolution_s: float
    agent: str | None
    reassigned: list[tuple[int, int]]  # queued conversations handed out because a slot freed up


async def _locked(conn: Connection, conversation_id: int) -> Any:
    row = await conn.fetchrow(
        """SELECT c.*, t.name AS team FROM inbox_conversations c LEFT JOIN inbox_teams t ON t.id = c.team_id
            WHERE c.id = $1 FOR NO KEY UPDATE OF c""", conversation_id)
    if row is None:
        raise NotFoundError(f"conversation {conversation_id} does not exist (see `broadcaster inbox list`)")
    return row


async def resolve_conversation(db: Database, conversation_id: int, *, agent: str | None = None,
                               now: datetime | None = None) -> Resolution:
    """Close a conversation (by `agent`, default: its assigned agent) and refill freed slots.

    Raises:
        NotFoundError: no such conversation or agent.
        StateError: already resolved.
    """
    now = now or datetime.now(UTC)
    async with db.transaction() as conn:
        conv = await _locked(conn, conversation_id)
        if conv["status"] == "resolved":
            raise StateError(f"conversation {conversation_id} is already resolved "
                             f"(at {conv['resolved_at']:%Y-%m-%d %H:%M} UTC)")
        resolver = await agent_id_of(conn, conv["workspace"], agent) if agent else conv["agent_id"]
        await conn.execute(
            """UPDATE inbox_conversations SET status = 'resolved', resolved_at = $2, resolved_by = 'agent',
                      resolved_agent_id = $3, updated_at = now() WHERE id = $1""",
            conversation_id, now, resolver)
        reassigned: list[tuple[int, int]] = []
        if conv["status"] == "assigned" and conv["agent_id"] is not None:
            reassigned = await routing.drain_agent_teams(conn, conv["agent_id"], now)
        name = await conn.fetchval("SELECT name FROM inbox_agents WHERE id = $1", resolver) if resolver else None
    seconds = (now - conv["first_inbound_at"]).total_seconds()
    observe_resolution(conv["team"] or "unrouted", seconds)
    logger.info("conversation %d resolved by %s after %.0f s; %d queued conversations assigned", conversation_id,
                name or "-", seconds, len(reassigned))
    return Resolution(conversation_id, seconds, name, reassigned)


async def assign_conversation(db: Database, conversation_id: int, agent: str, *,
                              now: datetime | None = None) -> None:
    """Hand a conversation to a named agent (a manual choice: the cap is not applied)."""
    now = now or datetime.now(UTC)
    async with db.transaction() as conn:
        conv = await _locked(conn, conversation_id)
        if conv["status"] == "resolved":
            raise StateError(f"conversation {conversation_id} is resolved; it cannot be assigned")
        agent_id = await agent_id_of(conn, conv["workspace"], agent)
        await conn.execute(
            """UPDATE inbox_conversations SET status = 'assigned', agent_id = $2, assigned_at = $3,
                      updated_at = now() WHERE id = $1""", conversation_id, agent_id, now)
        if conv["status"] == "assigned" and conv["agent_id"] not in (None, agent_id):
            await routing.drain_agent_teams(conn, conv["agent_id"], now)


async def escalate_conversation(db: Database, conversation_id: int, *, note: str | None = None,
                                agent: str | None = None) -> bool:
    """An agent marks a conversation for Slack; False when it was already escalated (one post each)."""
    async with db.transaction() as conn:
        conv = await _locked(conn, conversation_id)
        if conv["status"] == "resolved":
            raise StateError(f"conversation {conversation_id} is resolved; it cannot be escalated")
        contact = await conn.fetchrow("SELECT name, wa_id, genre, language FROM contacts WHERE id = $1",
                                      conv["contact_id"])
        last = await conn.fetchval(
            """SELECT coalesce(body, payload) FROM inbox_messages WHERE conversation_id = $1
                ORDER BY sent_at DESC, id DESC LIMIT 1""", conversation_id)
        reason = f"marked by {agent or 'an agent'}" + (f": {note}" if note else "")
        queued = await escalate_in(conn, conversation_id, reason=reason, workspace=conv["workspace"],
                                   team=conv["team"], contact=contact, text=last)
    if queued:
        record_escalation(conv["team"] or "unrouted")
        nudge()
    return queued


async def list_conversations(db: Database, *, workspace: str | None = None, status: str | None = None,
                             team: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent conversations, newest first, with team, agent and masked-ready wa_id."""
    if status is not None and status not in (*STATUSES, "open"):
        raise StateError(f"unknown conversation status {status!r} (known: open, {', '.join(STATUSES)})")
    rows = await db.fetch(
        """SELECT c.id, c.workspace, c.status, t.name AS team, a.name AS agent, k.wa_id, k.name AS contact,
                  k.genre, k.language, c.first_inbound_at, c.last_inbound_at, c.first_human_reply_at,
                  c.resolved_at, c.reopens,
                  (SELECT state FROM inbox_escalations e WHERE e.conversation_id = c.id) AS escalation
             FROM inbox_conversations c
             JOIN contacts k ON k.id = c.contact_id
             LEFT JOIN inbox_teams t ON t.id = c.team_id
             LEFT JOIN inbox_agents a ON a.id = c.agent_id
            WHERE ($1::text IS NULL OR c.workspace = $1)
              AND ($2::text IS NULL OR c.status = $2 OR ($2 = 'open' AND c.status <> 'resolved'))
              AND ($3::text IS NULL OR t.name = $3)
            ORDER BY c.last_inbound_at DESC, c.id DESC LIMIT $4""", workspace, status, team, limit)
    return [dict(r) for r in rows]
