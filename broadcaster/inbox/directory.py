"""Agents, teams, routes and membership (the CLI's `agents` / `teams` groups).

Every agent and team belongs to one workspace; membership and routes never cross workspaces
(enforced by composite foreign keys). Changes that can free capacity (an agent back online, a
higher cap, a new member) drain the affected team queues at once, oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from broadcaster.db import Connection, Database, UniqueViolation
from broadcaster.errors import InputError, NotFoundError, StateError
from broadcaster.inbox import routing
from segments.canon import GENRES, canonical_genre, canonical_language

__all__ = [
    "add_agent", "add_route", "add_team", "join_team", "leave_team", "list_agents", "list_teams",
    "parse_route", "set_agent", "set_team",
]


def parse_route(spec: str) -> tuple[str | None, str | None]:
    """'sports:hi' → ('sports', 'hi'); ':hi' or 'hi' → (None, 'hi') (language-only); 'default' → (None, None).

    Raises InputError naming the value for an unknown genre/language or a genre without a language.
    """
    text = spec.strip()
    if text.lower() in ("default", "*", ":", "*:*"):
        return None, None
    genre_raw, sep, language_raw = text.rpartition(":") if ":" in text else ("", "", text)
    genre_raw = genre_raw.strip()
    if genre_raw in ("*", ""):
        genre_raw = ""
    language, known_lang = canonical_language(language_raw.strip().strip("*") or None)
    if not known_lang:
        raise InputError(f"route {spec!r}: unknown language {language_raw.strip()!r} (use a code like hi, ta, bho)")
    genre, known_genre = canonical_genre(genre_raw or None)
    if not known_genre:
        raise InputError(f"route {spec!r}: unknown genre {genre_raw!r} (known: {', '.join(sorted(GENRES))})")
    if genre is not None and language is None:
        raise InputError(f"route {spec!r}: a genre needs a language (genre:language); fallbacks are "
                         "language-only (:hi) and default")
    return genre, language


def _now() -> datetime:
    return datetime.now(UTC)


async def _workspace(conn: Connection | Database, workspace: str) -> None:
    if await conn.fetchval("SELECT 1 FROM workspaces WHERE name = $1", workspace) is None:
        raise NotFoundError(f"workspace {workspace!r} does not exist")


async def _team(conn: Connection, workspace: str, team: str) -> int:
    team_id = await conn.fetchval("SELECT id FROM inbox_teams WHERE workspace = $1 AND name = $2", workspace, team)
    if team_id is None:
        raise NotFoundError(f"team {team!r} does not exist in workspace {workspace!r} (see `broadcaster teams list`)")
    return team_id


async def agent_id_of(conn: Connection, workspace: str, agent: str) -> int:
    """The id of agent `agent` in `workspace`, or NotFoundError naming where to look."""
    agent_id = await conn.fetchval("SELECT id FROM inbox_agents WHERE workspace = $1 AND name = $2", workspace, agent)
    if agent_id is None:
        raise NotFoundError(f"agent {agent!r} does not exist in workspace {workspace!r} "
                            "(see `broadcaster agents list`)")
    return agent_id


# --------------------------------------------------------------------------- agents


async def add_agent(db: Database, workspace: str, name: str, *, max_open: int = 5, online: bool = True) -> int:
    """Create an agent; returns its id."""
    if not name.strip():
        raise InputError("agent name is empty")
    if max_open < 0:
        raise InputError(f"agent {name!r}: max_open must be 0 or more, got {max_open}")
    async with db.transaction() as conn:
        await _workspace(conn, workspace)
        try:
            return await conn.fetchval(
                "INSERT INTO inbox_agents (workspace, name, max_open, online) VALUES ($1, $2, $3, $4) RETURNING id",
                workspace, name, max_open, online)
        except UniqueViolation:
            raise StateError(f"agent {name!r} already exists in workspace {workspace!r}") from None


async def set_agent(db: Database, workspace: str, name: str, *, online: bool | None = None,
                    max_open: int | None = None) -> list[tuple[int, int]]:
    """Change an agent's online state / cap; returns queued conversations assigned as a result."""
    if max_open is not None and max_open < 0:
        raise InputError(f"agent {name!r}: max_open must be 0 or more, got {max_open}")
    async with db.transaction() as conn:
        agent_id = await agent_id_of(conn, workspace, name)
        await routing.lock_agent_teams(conn, agent_id)  # teams before the agent row: the drains' lock order
        await conn.execute(
            """UPDATE inbox_agents SET online = coalesce($2, online), max_open = coalesce($3, max_open)
                WHERE id = $1""", agent_id, online, max_open)
        return await routing.drain_agent_teams(conn, agent_id, _now())


async def list_agents(db: Database, workspace: str | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT a.workspace, a.name, a.online, a.max_open,
                  (SELECT count(*) FROM inbox_conversations c WHERE c.agent_id = a.id AND c.status = 'assigned')
                      AS open,
                  coalesce((SELECT array_agg(t.name ORDER BY t.name) FROM inbox_team_members m
                              JOIN inbox_teams t ON t.id = m.team_id WHERE m.agent_id = a.id), '{}') AS teams
             FROM inbox_agents a WHERE ($1::text IS NULL OR a.workspace = $1)
            ORDER BY a.workspace, a.name""", workspace)
    return [dict(r) for r in rows]


# --------------------------------------------------------------------------- teams


async def _insert_route(conn: Connection, workspace: str, team_id: int, route: tuple[str | None, str | None]) -> None:
    genre, language = route
    taken = await conn.fetchval(
        """SELECT t.name FROM inbox_team_routes r JOIN inbox_teams t ON t.id = r.team_id
            WHERE r.workspace = $1 AND r.genre IS NOT DISTINCT FROM $2 AND r.language IS NOT DISTINCT FROM $3""",
        workspace, genre, language)
    if taken is not None:
        label = "default" if language is None else f"{genre or '*'}:{language}"
        raise StateError(f"route {label} in workspace {workspace!r} already goes to team {taken!r}")
    await conn.execute("INSERT INTO inbox_team_routes (team_id, workspace, genre, language) VALUES ($1, $2, $3, $4)",
                       team_id, workspace, genre, language)


async def add_team(db: Database, workspace: str, name: str, *, routes: Sequence[tuple[str | None, str | None]] = (),
                   strategy: str = "round_robin", online_only: bool = False) -> int:
    """Create a team with its routes (canonical (genre, language) pairs; see parse_route)."""
    if strategy not in routing.STRATEGIES:
        raise InputError(f"team {name!r}: unknown strategy {strategy!r} (known: {', '.join(routing.STRATEGIES)})")
    async with db.transaction() as conn:
        await _workspace(conn, workspace)
        try:
            team_id = await conn.fetchval(
                "INSERT INTO inbox_teams (workspace, name, strategy, online_only) VALUES ($1, $2, $3, $4) RETURNING id",
                workspace, name, strategy, online_only)
        except UniqueViolation:
            raise StateError(f"team {name!r} already exists in workspace {workspace!r}") from None
        for route in routes:
            await _insert_route(conn, workspace, team_id, route)
        return team_id


async def add_route(db: Database, workspace: str, team: str, route: tuple[str | None, str | None]) -> None:
    async with db.transaction() as conn:
        await _insert_route(conn, workspace, await _team(conn, workspace, team), route)


async def set_team(db: Database, workspace: str, team: str, *, strategy: str | None = None,
                   online_only: bool | None = None) -> list[tuple[int, int]]:
    if strategy is not None and strategy not in routing.STRATEGIES:
        raise InputError(f"team {team!r}: unknown strategy {strategy!r} (known: {', '.join(routing.STRATEGIES)})")
    async with db.transaction() as conn:
        team_id = await _team(conn, workspace, team)
        await conn.execute(
            """UPDATE inbox_teams SET strategy = coalesce($2, strategy), online_only = coalesce($3, online_only)
                WHERE id = $1""", team_id, strategy, online_only)
        return await routing.drain_team(conn, team_id, _now())


async def join_team(db: Database, workspace: str, team: str, agent: str) -> list[tuple[int, int]]:
    """Add an agent to a team (same workspace); queued conversations may be assigned at once."""
    async with db.transaction() as conn:
        team_id = await _team(conn, workspace, team)
        agent_id = await agent_id_of(conn, workspace, agent)
        await conn.execute(
            """INSERT INTO inbox_team_members (team_id, agent_id, workspace) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING""", team_id, agent_id, workspace)
        return await routing.drain_team(conn, team_id, _now())


async def leave_team(db: Database, workspace: str, team: str, agent: str) -> None:
    """Remove an agent from a team (its assigned conversations stay with it)."""
    async with db.transaction() as conn:
        team_id = await _team(conn, workspace, team)
        agent_id = await agent_id_of(conn, workspace, agent)
        await conn.execute("DELETE FROM inbox_team_members WHERE team_id = $1 AND agent_id = $2", team_id, agent_id)


async def list_teams(db: Database, workspace: str | None = None) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT t.workspace, t.name, t.strategy, t.online_only,
                  coalesce((SELECT array_agg(CASE WHEN r.language IS NULL THEN 'default'
                                                  ELSE coalesce(r.genre, '*') || ':' || r.language END
                                             ORDER BY r.language NULLS LAST, r.genre NULLS LAST)
                              FROM inbox_team_routes r WHERE r.team_id = t.id), '{}') AS routes,
                  coalesce((SELECT array_agg(a.name ORDER BY a.name) FROM inbox_team_members m
                              JOIN inbox_agents a ON a.id = m.agent_id WHERE m.team_id = t.id), '{}') AS members,
                  (SELECT count(*) FROM inbox_conversations c WHERE c.team_id = t.id AND c.status = 'queued')
                      AS queued
             FROM inbox_teams t WHERE ($1::text IS NULL OR t.workspace = $1)
            ORDER BY t.workspace, t.name""", workspace)
    return [dict(r) for r in rows]
