"""Routing: which team takes a conversation, which agent gets it, and the team queue.

Team: the route for (workspace, genre, language) of the contact; else the workspace's
language-only route (genre NULL); else its default route (both NULL); else no team (the
conversation waits unrouted). Genre and language are compared canonical (segments.canon), so a
contact imported as 'Hindi' / ' HI' routes like 'hi'. Workspaces never share routes, teams or agents.

Agent: among the team's members, only agents under their open-conversation cap (`max_open`,
counted over every team) and, for an `online_only` team, only online agents:
    round_robin  the member whose last turn in this team is oldest (never-assigned first, then id)
    least_open   the member with the fewest open conversations (ties: round-robin order)
When nobody is eligible the conversation waits in the team queue; `drain_team` assigns queued
conversations oldest first whenever an agent frees up (resolve, back online, cap raised).

The decisions are pure (`resolve_team`, `pick_agent`); the async functions run them inside the
caller's transaction. Locks are taken in one order everywhere (the caller's conversation → every
team involved, by id → every member agent, by id) and other queued conversations are taken with
SKIP LOCKED, so concurrent routing cannot deadlock, and an agent's cap holds under concurrency (its
row is locked while it is counted and assigned).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broadcaster.db import Connection
from segments.canon import canonical_genre, canonical_language

__all__ = [
    "STRATEGIES", "Assignment", "Candidate", "drain_agent_teams", "drain_team", "drain_teams", "lock_agent_teams",
    "pick_agent", "resolve_team", "route_conversation", "route_key", "team_for",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("round_robin", "least_open")
MAX_DRAIN = 1000  # conversations assigned per drain call (a bound, not a quota)

RouteKey = tuple[str | None, str | None]  # (genre, language); None = any


def route_key(genre: str | None, language: str | None) -> RouteKey:
    """Canonical (genre, language) of a contact or a route definition."""
    return canonical_genre(genre)[0], canonical_language(language)[0]


def resolve_team(routes: Mapping[RouteKey, int], genre: str | None, language: str | None) -> tuple[int | None, str]:
    """(team id, level) for a contact: level is 'exact', 'language', 'default' or 'none'.

    `routes` maps canonical (genre, language) → team id; (None, lang) is a language-only route
    and (None, None) the default. A contact without a genre can still match language-only.
    """
    genre, language = route_key(genre, language)
    if genre is not None and language is not None and (genre, language) in routes:
        return routes[(genre, language)], "exact"
    if language is not None and (None, language) in routes:
        return routes[(None, language)], "language"
    if (None, None) in routes:
        return routes[(None, None)], "default"
    return None, "none"


@dataclass(frozen=True)
class Candidate:
    """A team member as the picker sees it."""

    agent_id: int
    online: bool
    open_count: int
    max_open: int
    last_assigned: int | None  # the member's last round-robin turn in this team; None = never

    def eligible(self, online_only: bool) -> bool:
        return self.open_count < self.max_open and (self.online or not online_only)

    def turn(self) -> tuple[int, int, int]:
        return (0 if self.last_assigned is None else 1, self.last_assigned or 0, self.agent_id)


def pick_agent(candidates: Iterable[Candidate], strategy: str, online_only: bool) -> int | None:
    """The agent to assign next, or None when every member is at the cap (or offline)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown assignment strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    eligible = [c for c in candidates if c.eligible(online_only)]
    if not eligible:
        return None
    if strategy == "least_open":
        return min(eligible, key=lambda c: (c.open_count, *c.turn())).agent_id
    return min(eligible, key=Candidate.turn).agent_id


@dataclass(frozen=True)
class Assignment:
    """Where a conversation went: `agent_id` set = assigned; else queued (team_id None = unrouted)."""

    conversation_id: int
    team_id: int | None
    agent_id: int | None
    level: str  # how the team was found: exact | language | default | none | kept


# --------------------------------------------------------------------------- database side


async def _routes(conn: Connection, workspace: str) -> dict[RouteKey, int]:
    rows = await conn.fetch(
        "SELECT team_id, genre, language FROM inbox_team_routes WHERE workspace = $1", workspace)
    return {(r["genre"], r["language"]): r["team_id"] for r in rows}


async def team_for(conn: Connection, workspace: str, genre: str | None,
                   language: str | None) -> tuple[int | None, str]:
    """(team id, level) for a contact of `workspace` (see `resolve_team`)."""
    return resolve_team(await _routes(conn, workspace), genre, language)


async def _candidates(conn: Connection, team_id: int) -> list[Candidate]:
    rows = await conn.fetch(
        """SELECT a.id, a.online, a.max_open, m.last_assigned,
                  (SELECT count(*) FROM inbox_conversations c
                    WHERE c.agent_id = a.id AND c.status = 'assigned') AS open_count
             FROM inbox_team_members m JOIN inbox_agents a ON a.id = m.agent_id
            WHERE m.team_id = $1 ORDER BY a.id""", team_id)
    return [Candidate(r["id"], r["online"], r["open_count"], r["max_open"], r["last_assigned"]) for r in rows]


async def _lock(conn: Connection, team_ids: list[int]) -> list[Any]:
    """Lock the teams, then every member agent, each set in id order, in two statements.

    Why: an agent can sit in several teams. Taking all team locks first and then all agent locks
    in one global order means two drains can wait for each other but never in a cycle, and an
    agent's open count cannot change between counting it and filling its last slot. The locks are
    FOR NO KEY UPDATE: inserting a conversation that references a team (or assigning one to an
    agent) takes a KEY SHARE lock through the foreign key, which FOR UPDATE would conflict with:
    two handlers each holding KEY SHARE and both asking FOR UPDATE deadlock (the concurrency test
    caught exactly that).
    """
    teams = await conn.fetch(
        "SELECT id, strategy, online_only FROM inbox_teams WHERE id = ANY($1::int[]) ORDER BY id FOR NO KEY UPDATE",
        team_ids)
    await conn.fetch(
        """SELECT id FROM inbox_agents
            WHERE id IN (SELECT agent_id FROM inbox_team_members WHERE team_id = ANY($1::int[]))
            ORDER BY id FOR NO KEY UPDATE""", team_ids)
    return teams


async def _drain_locked(conn: Connection, team: Any, now: datetime) -> list[tuple[int, int]]:
    team_id = team["id"]
    done: list[tuple[int, int]] = []
    candidates = await _candidates(conn, team_id)
    for _ in range(MAX_DRAIN):
        agent_id = pick_agent(candidates, team["strategy"], team["online_only"])
        if agent_id is None:
            break
        conv = await conn.fetchrow(
            """SELECT id FROM inbox_conversations
                WHERE team_id = $1 AND status = 'queued'
                ORDER BY queued_at, id
                LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED""", team_id)
        if conv is None:
            break
        turn = await conn.fetchval(
            """WITH c AS (UPDATE inbox_conversations
                             SET status = 'assigned', agent_id = $2, assigned_at = $3, updated_at = now()
                           WHERE id = $1)
               UPDATE inbox_team_members SET last_assigned = nextval('inbox_assign_seq')
                WHERE team_id = $4 AND agent_id = $2 RETURNING last_assigned""",
            conv["id"], agent_id, now, team_id)
        done.append((conv["id"], agent_id))
        candidates = [Candidate(c.agent_id, c.online, c.open_count + 1, c.max_open, turn)
                      if c.agent_id == agent_id else c for c in candidates]
    for conv_id, agent_id in done:
        logger.info("conversation %d assigned to agent %d (team %d)", conv_id, agent_id, team_id)
    return done


async def drain_teams(conn: Connection, team_ids: Iterable[int], now: datetime) -> list[tuple[int, int]]:
    """Assign the teams' queued conversations, oldest first per team, while an agent is eligible.

    Returns [(conversation id, agent id)] in assignment order. Runs in the caller's transaction.
    """
    ids = sorted(set(team_ids))
    if not ids:
        return []
    done: list[tuple[int, int]] = []
    for team in await _lock(conn, ids):
        done.extend(await _drain_locked(conn, team, now))
    return done


async def drain_team(conn: Connection, team_id: int, now: datetime) -> list[tuple[int, int]]:
    """`drain_teams` for one team."""
    return await drain_teams(conn, [team_id], now)


async def _agent_team_ids(conn: Connection, agent_id: int) -> list[int]:
    return [r["team_id"] for r in await conn.fetch(
        "SELECT team_id FROM inbox_team_members WHERE agent_id = $1", agent_id)]


async def lock_agent_teams(conn: Connection, agent_id: int) -> None:
    """Take the drain locks (the agent's teams, then their agents) before changing the agent's row.

    Updating an agent first and draining after would lock agent → team, the reverse of a drain.
    """
    team_ids = sorted(set(await _agent_team_ids(conn, agent_id)))
    if team_ids:
        await _lock(conn, team_ids)


async def drain_agent_teams(conn: Connection, agent_id: int, now: datetime) -> list[tuple[int, int]]:
    """Drain every team the agent belongs to (after it resolved, came online or got a higher cap)."""
    return await drain_teams(conn, await _agent_team_ids(conn, agent_id), now)


async def route_conversation(conn: Connection, conversation_id: int, workspace: str, genre: str | None,
                             language: str | None, now: datetime) -> Assignment:
    """Queue a conversation that needs a human in its team, then drain the team (oldest first).

    The caller holds the conversation row (locked) in its transaction. A conversation already
    queued or assigned is left where it is.
    """
    row = await conn.fetchrow("SELECT status, team_id, agent_id FROM inbox_conversations WHERE id = $1",
                              conversation_id)
    if row is None:
        raise LookupError(f"conversation {conversation_id} does not exist")
    if row["status"] in ("queued", "assigned"):
        return Assignment(conversation_id, row["team_id"], row["agent_id"], "kept")
    team_id, level = await team_for(conn, workspace, genre, language)
    await conn.execute(
        """UPDATE inbox_conversations SET status = 'queued', team_id = $2, agent_id = NULL,
                  queued_at = $3, updated_at = now() WHERE id = $1""", conversation_id, team_id, now)
    if team_id is None:
        logger.warning("conversation %d: workspace %r has no route for genre %r, language %r and no default "
                       "team; it waits unrouted", conversation_id, workspace, genre, language)
        return Assignment(conversation_id, None, None, level)
    assigned = dict(await drain_team(conn, team_id, now))
    return Assignment(conversation_id, team_id, assigned.get(conversation_id), level)
