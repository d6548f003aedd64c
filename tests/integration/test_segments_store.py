"""Segments in Postgres: filters combine correctly on a small fixture set; create/list/edit/delete rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from broadcaster.db import Database
from broadcaster.errors import NotFoundError, StateError, UsageError
from broadcaster.segment_store import (
    count_filter,
    count_segment,
    create_segment,
    delete_segment,
    get_segment,
    list_segments,
    preview_segment,
    update_segment,
)
from segments.filters import FilterError, SegmentFilter, compile_filter


@dataclass(frozen=True)
class C:
    key: str          # last 4 digits of the number
    genre: str | None
    language: str | None
    city: str | None
    followers: int | None
    days_ago: int | None
    tags: tuple[str, ...]
    opted_in: bool


FIXTURE = [
    C("0001", "humor", "hi", "Mumbai", 500, 1, ("verified",), True),
    C("0002", "humor", "ta", "Chennai", 5_000, 10, ("verified", "top100"), True),
    C("0003", "news", "hi", "Delhi", 50_000, 40, ("top100",), False),
    C("0004", "news", "bn", "Kolkata", 120, 2, (), True),
    C("0005", "sports", "hi", "mumbai", 900, None, ("dormant",), True),
    C("0006", "music", "te", "Hyderabad", None, 5, ("new", "verified"), True),
    C("0007", "humor", None, None, 10, 100, ("agency_x",), False),
    C("0008", None, "hi", "Pune", 2_000, 3, ("verified", "agency_x"), True),
    C("0009", "sports", "ta", "Chennai", 75_000, 0, ("top100", "verified", "monetised"), True),
    C("0010", "news", "hi", "Mumbai", 1_000, 8, ("dormant", "top100"), True),
]


@pytest.fixture
async def ws(db: Database, uniq: str) -> str:
    """A workspace holding FIXTURE, plus a decoy workspace with the same contacts (must never match)."""
    now = datetime.now(UTC)
    for name in (f"seg_{uniq}", f"decoy_{uniq}"):
        await db.execute("INSERT INTO workspaces (name) VALUES ($1)", name)
        await db.executemany(
            "INSERT INTO contacts (workspace, wa_id, genre, language, city, followers, last_active_at, tags,"
            " marketing_opt_in) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(name, f"91980000{c.key}", c.genre, c.language, c.city, c.followers,
              None if c.days_ago is None else now - timedelta(days=c.days_ago, hours=1), list(c.tags), c.opted_in)
             for c in FIXTURE])
    return f"seg_{uniq}"


async def _keys(db: Database, f: SegmentFilter) -> set[str]:
    where, params = compile_filter(f)
    rows = await db.fetch(f"SELECT right(wa_id, 4) AS k FROM contacts c WHERE {where}", *params)
    assert await count_filter(db, f) == len(rows)
    return {r["k"] for r in rows}


CASES = [
    ({}, {c.key for c in FIXTURE}),
    ({"genres": ["Comedy"]}, {"0001", "0002", "0007"}),
    ({"genres": ["humor", "news"], "languages": ["Hindi"]}, {"0001", "0003", "0010"}),
    ({"languages": ["hi", "ta"], "opted_in": True}, {"0001", "0002", "0005", "0008", "0009", "0010"}),
    ({"opted_in": False}, {"0003", "0007"}),
    ({"tags_any": ["top100", "new"]}, {"0002", "0003", "0006", "0009", "0010"}),
    ({"tags_all": ["verified", "top100"]}, {"0002", "0009"}),
    ({"tags_none": ["verified"]}, {"0003", "0004", "0005", "0007", "0010"}),
    ({"tags_any": ["top100"], "tags_none": ["dormant", "monetised"]}, {"0002", "0003"}),
    ({"cities": ["MUMBAI"]}, {"0001", "0005", "0010"}),
    ({"followers_min": 1_000}, {"0002", "0003", "0008", "0009", "0010"}),
    ({"followers_min": 500, "followers_max": 2_000}, {"0001", "0005", "0008", "0010"}),
    ({"active_within_days": 7}, {"0001", "0004", "0006", "0008", "0009"}),
    ({"genres": ["sports"], "languages": ["ta"], "cities": ["chennai"], "followers_min": 70_000,
      "active_within_days": 1, "tags_all": ["verified"], "opted_in": True}, {"0009"}),
    ({"genres": ["education"]}, set()),
]


@pytest.mark.parametrize(("fields", "expected"), CASES)
async def test_filters_combine_as_hand_computed(db: Database, ws: str, fields: dict, expected: set[str]) -> None:
    assert await _keys(db, SegmentFilter.from_json({"workspace": ws, **fields})) == expected


async def test_filters_agree_with_a_python_predicate(db: Database, ws: str) -> None:
    """Every combination of two conditions from CASES equals the intersection of their results."""
    singles = [(f, e) for f, e in CASES if len(f) == 1 and "tags_any" not in f]
    for i, (f1, e1) in enumerate(singles):
        for f2, e2 in singles[i + 1:]:
            if set(f1) & set(f2):
                continue
            try:
                f = SegmentFilter.from_json({"workspace": ws, **f1, **f2})
            except FilterError:  # e.g. a tag both required and excluded
                continue
            got = await _keys(db, f)
            assert got == e1 & e2, (f1, f2)


async def test_create_get_list_update_delete(db: Database, ws: str, uniq: str) -> None:
    f = SegmentFilter(workspace=ws, genres=("humor",))
    info = await create_segment(db, f"humor_{uniq}", f)
    assert info.filter == f and info.workspace == ws
    assert await get_segment(db, f"humor_{uniq}") == f
    assert await count_segment(db, f"humor_{uniq}") == 3
    assert [s.name for s in await list_segments(db, ws)] == [f"humor_{uniq}"]
    with pytest.raises(StateError, match=rf"^segment 'humor_{uniq}' already exists"):
        await create_segment(db, f"humor_{uniq}", f)
    await update_segment(db, f"humor_{uniq}", f.replace(languages=("hi",)))
    assert await count_segment(db, f"humor_{uniq}") == 1
    await delete_segment(db, f"humor_{uniq}")
    with pytest.raises(NotFoundError, match=rf"^segment 'humor_{uniq}' does not exist: create it with "
                                            rf"`broadcaster segments create humor_{uniq} --workspace W …`"):
        await get_segment(db, f"humor_{uniq}")


async def test_names_and_workspaces_are_checked(db: Database, ws: str, uniq: str) -> None:
    with pytest.raises(UsageError, match=r"^segment name 'a b' is not allowed"):
        await create_segment(db, "a b", SegmentFilter(workspace=ws))
    with pytest.raises(NotFoundError, match=rf"^workspace 'none_{uniq}' does not exist"):
        await create_segment(db, f"x_{uniq}", SegmentFilter(workspace=f"none_{uniq}"))
    with pytest.raises(NotFoundError, match=r"^segment 'nope_.*' does not exist"):
        await delete_segment(db, f"nope_{uniq}")


async def test_segment_used_by_a_campaign_is_kept(db: Database, ws: str, uniq: str) -> None:
    await create_segment(db, f"used_{uniq}", SegmentFilter(workspace=ws))
    await db.execute("INSERT INTO campaigns (name, workspace, segment, template_name, default_language)"
                     " VALUES ($1, $2, $3, 't', 'hi')", f"camp_{uniq}", ws, f"used_{uniq}")
    with pytest.raises(StateError, match=rf"^segment 'used_{uniq}' is used by campaign\(s\) camp_{uniq}: "):
        await delete_segment(db, f"used_{uniq}")
    with pytest.raises(StateError, match=r"its workspace cannot change"):
        await update_segment(db, f"used_{uniq}", SegmentFilter(workspace=f"decoy_{uniq}"))
    await update_segment(db, f"used_{uniq}", SegmentFilter(workspace=ws, opted_in=True))  # same workspace: fine


async def test_preview_masks_numbers(db: Database, ws: str, uniq: str) -> None:
    await create_segment(db, f"prev_{uniq}", SegmentFilter(workspace=ws, tags_all=("verified",)))
    rows = await preview_segment(db, f"prev_{uniq}", limit=3)
    assert [r.wa_id_masked for r in rows] == ["********0001", "********0002", "********0006"]
    assert all("98000" not in r.wa_id_masked for r in rows)
    with pytest.raises(UsageError, match=r"^--limit must be between 1 and 1000"):
        await preview_segment(db, f"prev_{uniq}", limit=0)
