"""Named segments in Postgres: create, list, show, edit, delete, count and preview.

Guarantees:
- A stored filter is always a valid `SegmentFilter` (validated before it is written); the SQL that
  selects its contacts comes only from `segments.filters.compile_filter` (parameters, never text).
- A segment used by a campaign cannot be deleted, nor moved to another workspace: campaigns keep
  pointing at what they were created for. Editing other fields is allowed; an audience already
  frozen into a campaign's ledger does not change.
- Previews never show a full phone number (`mask_phone`: last 4 digits).

Every function takes a `Database` or a `Connection` (to run inside a caller's transaction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broadcaster.db import Connection, Database, Record, UniqueViolation
from broadcaster.errors import InputError, NotFoundError, StateError, UsageError
from segments.canon import GENRES, LANGUAGES, closest_genre, closest_language
from segments.errors import FilterError
from segments.filters import SegmentFilter, compile_filter
from segments.phones import mask_phone

__all__ = ["ContactPreview", "SegmentInfo", "check_filter_values", "count_filter", "count_segment",
           "create_segment", "delete_segment", "explain_count", "get_segment", "get_segment_info",
           "list_segments", "preview_segment", "update_segment"]

Executor = Database | Connection
MAX_PREVIEW = 1_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class SegmentInfo:
    name: str
    workspace: str
    filter: SegmentFilter
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ContactPreview:
    """One contact as a preview shows it: the number masked to its last 4 digits."""

    id: int
    wa_id_masked: str
    name: str | None
    language: str | None
    genre: str | None
    city: str | None
    followers: int | None
    tags: list[str]
    opted_in: bool
    last_active_at: datetime | None


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"segment '{name}' does not exist: create it with "
                         f"`broadcaster segments create {name} --workspace W …`")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise UsageError(f"segment name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                         "starting with a letter or digit")
    return name


def _info(row: Record) -> SegmentInfo:
    try:
        f = SegmentFilter.from_json(row["filter"])
    except FilterError as exc:
        raise InputError(f"segment '{row['name']}' has an invalid stored filter ({exc}): "
                         f"fix it with `broadcaster segments edit {row['name']} …`") from None
    return SegmentInfo(row["name"], row["workspace"], f, row["created_at"], row["updated_at"])


async def _require_workspace(db: Executor, workspace: str) -> None:
    if not await db.fetchval("SELECT 1 FROM workspaces WHERE name = $1", workspace):
        raise NotFoundError(f"workspace '{workspace}' does not exist: import contacts into it first "
                            f"(`broadcaster contacts import FILE --workspace {workspace}`)")


_VALUE_CHECKS = (  # filter field, CLI flag, SQL: which of $2 (text[]) some contact of workspace $1 has
    ("genres", "--genre", "SELECT array_agg(DISTINCT genre) FROM contacts WHERE workspace = $1 AND genre = ANY($2)"),
    ("languages", "--language",
     "SELECT array_agg(DISTINCT language) FROM contacts WHERE workspace = $1 AND language = ANY($2)"),
    ("tags_any", "--tag-any", "SELECT array_agg(DISTINCT t) FROM contacts, unnest(tags) AS t"
                              " WHERE workspace = $1 AND tags && $2 AND t = ANY($2)"),
    ("tags_all", "--tag-all", "SELECT array_agg(DISTINCT t) FROM contacts, unnest(tags) AS t"
                              " WHERE workspace = $1 AND tags && $2 AND t = ANY($2)"),
    ("cities", "--city", "SELECT array_agg(DISTINCT lower(city)) FROM contacts"
                         " WHERE workspace = $1 AND lower(city) = ANY($2)"),
)


async def check_filter_values(db: Executor, f: SegmentFilter) -> None:
    """Refuse a filter value that can only match nobody: a genre or language that is neither known
    (segments.canon) nor carried by any contact of the workspace, a tag or city no contact has. A
    typo (`--genre comdy`) would otherwise store a segment of 0 contacts and launch campaigns to it.

    Raises:
        InputError: naming every such value, its flag and the closest known value.
    """
    problems = []
    for field, flag, sql in _VALUE_CHECKS:
        values = [v.lower() if field == "cities" else v for v in getattr(f, field)]
        known = GENRES if field == "genres" else LANGUAGES if field == "languages" else frozenset()
        unknown = [v for v in values if v not in known]
        if not unknown:
            continue
        present = set(await db.fetchval(sql, f.workspace, unknown) or ())
        for value in unknown:
            if value in present:
                continue
            close = closest_genre(value) if field == "genres" else closest_language(value) if known else None
            hint = f" (did you mean {close!r}?)" if close else ""
            what = field.rstrip("s").replace("tags_any", "tag").replace("tags_all", "tag").replace("citie", "city")
            problems.append(f"{flag} {value!r}: no contact in workspace '{f.workspace}' has this {what}{hint}")
    if problems:
        raise InputError("the segment would match nobody:\n  - " + "\n  - ".join(problems)
                         + "\n(pass --allow-unknown to store it anyway, e.g. before importing those contacts)")


async def create_segment(db: Executor, name: str, filter: SegmentFilter, *,
                         allow_unknown: bool = False) -> SegmentInfo:
    """Store a new named segment.

    Raises:
        UsageError: the name is not allowed.
        NotFoundError: the filter's workspace does not exist.
        InputError: a filter value matches no contact (`check_filter_values`), unless allow_unknown.
        StateError: a segment with this name exists already.
    """
    _check_name(name)
    await _require_workspace(db, filter.workspace)
    if not allow_unknown:
        await check_filter_values(db, filter)
    try:
        row = await db.fetchrow(
            "INSERT INTO segments (name, workspace, filter) VALUES ($1, $2, $3::jsonb)"
            " RETURNING name, workspace, filter, created_at, updated_at",
            name, filter.workspace, filter.to_json())
    except UniqueViolation:
        raise StateError(f"segment '{name}' already exists: change it with `broadcaster segments edit {name} …` "
                         "or pick another name") from None
    assert row is not None
    return _info(row)


async def get_segment_info(db: Executor, name: str) -> SegmentInfo:
    row = await db.fetchrow(
        "SELECT name, workspace, filter, created_at, updated_at FROM segments WHERE name = $1", name)
    if row is None:
        raise _not_found(name)
    return _info(row)


async def get_segment(db: Executor, name: str) -> SegmentFilter:
    """The stored filter of segment `name` (NotFoundError says how to create it)."""
    return (await get_segment_info(db, name)).filter


async def list_segments(db: Executor, workspace: str | None = None) -> list[SegmentInfo]:
    """All segments (of one workspace, if given), by name."""
    rows = await db.fetch(
        "SELECT name, workspace, filter, created_at, updated_at FROM segments"
        " WHERE $1::text IS NULL OR workspace = $1 ORDER BY name", workspace)
    return [_info(r) for r in rows]


async def _campaigns_using(db: Executor, name: str) -> list[str]:
    return [r["name"] for r in await db.fetch(
        "SELECT name FROM campaigns WHERE segment = $1 ORDER BY name", name)]


async def update_segment(db: Database, name: str, filter: SegmentFilter, *,
                         allow_unknown: bool = False) -> SegmentInfo:
    """Replace the filter of an existing segment.

    Raises:
        NotFoundError: no such segment, or the new workspace does not exist.
        InputError: a filter value matches no contact (`check_filter_values`), unless allow_unknown.
        StateError: the workspace would change while a campaign uses the segment.
    """
    if not allow_unknown:
        await check_filter_values(db, filter)
    async with db.transaction() as conn:
        row = await conn.fetchrow("SELECT workspace FROM segments WHERE name = $1 FOR UPDATE", name)
        if row is None:
            raise _not_found(name)
        if row["workspace"] != filter.workspace:
            await _require_workspace(conn, filter.workspace)
            users = await _campaigns_using(conn, name)
            if users:
                raise StateError(f"segment '{name}' is used by campaign(s) {', '.join(users)}: its workspace "
                                 f"cannot change; create a new segment instead")
        updated = await conn.fetchrow(
            "UPDATE segments SET workspace = $2, filter = $3::jsonb, updated_at = now() WHERE name = $1"
            " RETURNING name, workspace, filter, created_at, updated_at",
            name, filter.workspace, filter.to_json())
    assert updated is not None
    return _info(updated)


async def delete_segment(db: Database, name: str) -> None:
    """Delete a segment no campaign uses (StateError names the campaigns otherwise)."""
    async with db.transaction() as conn:
        # FOR UPDATE: a campaign being created takes a key-share lock on this row, so the check and
        # the delete cannot interleave with it
        if await conn.fetchrow("SELECT 1 FROM segments WHERE name = $1 FOR UPDATE", name) is None:
            raise _not_found(name)
        users = await _campaigns_using(conn, name)
        if users:
            raise StateError(f"segment '{name}' is used by campaign(s) {', '.join(users)}: "
                             "delete those campaigns first or keep the segment")
        await conn.execute("DELETE FROM segments WHERE name = $1", name)


async def count_filter(db: Executor, f: SegmentFilter) -> int:
    """How many contacts match `f` (opted-out and blocked included unless the filter says otherwise)."""
    where, params = compile_filter(f)
    return await db.fetchval(f"SELECT count(*) FROM contacts c WHERE {where}", *params)


async def count_segment(db: Executor, name: str) -> int:
    """How many contacts segment `name` selects right now."""
    return await count_filter(db, await get_segment(db, name))


async def explain_count(db: Executor, name: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the count query, for benchmarks and slow-count diagnosis."""
    where, params = compile_filter(await get_segment(db, name))
    rows = await db.fetch(f"EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM contacts c WHERE {where}", *params)
    return "\n".join(r[0] for r in rows)


async def preview_segment(db: Executor, name: str, limit: int = 20) -> list[ContactPreview]:
    """The first `limit` contacts of the segment (by id), numbers masked."""
    if not 1 <= limit <= MAX_PREVIEW:
        raise UsageError(f"--limit must be between 1 and {MAX_PREVIEW}, got {limit}")
    where, params = compile_filter(await get_segment(db, name))
    rows = await db.fetch(
        "SELECT c.id, c.wa_id, c.name, c.language, c.genre, c.city, c.followers, c.tags, c.marketing_opt_in,"
        f" c.last_active_at FROM contacts c WHERE {where} ORDER BY c.id LIMIT ${len(params) + 1}",
        *params, limit)
    return [_preview(r) for r in rows]


def _preview(r: Record) -> ContactPreview:
    values: dict[str, Any] = dict(r)
    return ContactPreview(id=values["id"], wa_id_masked=mask_phone(values["wa_id"]), name=values["name"],
                          language=values["language"], genre=values["genre"], city=values["city"],
                          followers=values["followers"], tags=list(values["tags"] or []),
                          opted_in=values["marketing_opt_in"], last_active_at=values["last_active_at"])
