"""`broadcaster segments …`: named audience filters (structured, never raw SQL)."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Column, Table

from broadcaster.commands.common import console, database, run
from broadcaster.errors import UsageError
from broadcaster.segment_store import (
    count_segment,
    create_segment,
    delete_segment,
    get_segment_info,
    list_segments,
    preview_segment,
    update_segment,
)
from segments.errors import FilterError
from segments.filters import SegmentFilter

app = typer.Typer(help="Segments: named filters over contacts (genre, language, tags, city, followers, "
                       "activity, consent), combined with AND.", no_args_is_help=True)

_LIST_OPTIONS = {"genre": "genres", "language": "languages", "tag_any": "tags_any", "tag_all": "tags_all",
                 "tag_none": "tags_none", "city": "cities"}
_CLEARABLE = ("genres", "languages", "tags_any", "tags_all", "tags_none", "cities", "followers_min",
              "followers_max", "active_within_days", "opted_in")

_genre = typer.Option(None, "--genre", "-g", help="genre in (repeat or comma-separate)")
_language = typer.Option(None, "--language", "-l", help="language in (repeat or comma-separate)")
_tag_any = typer.Option(None, "--tag-any", help="has at least one of these tags")
_tag_all = typer.Option(None, "--tag-all", help="has every one of these tags")
_tag_none = typer.Option(None, "--tag-none", help="has none of these tags")
_city = typer.Option(None, "--city", help="city in (case-insensitive)")
_followers_min = typer.Option(None, "--followers-min", min=0)
_followers_max = typer.Option(None, "--followers-max", min=0)
_active = typer.Option(None, "--active-within-days", min=1, help="last active within N days")
_opted = typer.Option(None, "--opted-in/--opted-out", help="only contacts opted in (or out) of marketing")
_allow_unknown = typer.Option(False, "--allow-unknown",
                               help="store it even if a genre, language, tag or city matches no contact yet")


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _given(**options: Any) -> dict[str, Any]:
    """The filter fields the user set on the command line."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or value == []:
            continue
        if key in _LIST_OPTIONS:
            parts = _split(value)
            if not parts:  # an empty shell variable must not widen the segment to everyone
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} {value[0]!r}: no value given; to drop this condition use "
                                 f"`segments edit NAME --clear {_LIST_OPTIONS[key]}`")
            value = parts
        out[_LIST_OPTIONS.get(key, key)] = value
    return out


def _build(fields: dict[str, Any]) -> SegmentFilter:
    try:
        return SegmentFilter.from_json(fields)
    except FilterError as exc:
        raise UsageError(str(exc)) from None


@app.command("create")
def create_cmd(
    name: str = typer.Argument(...),
    workspace: str = typer.Option(..., "--workspace", "-w"),
    genre: list[str] = _genre, language: list[str] = _language, tag_any: list[str] = _tag_any,
    tag_all: list[str] = _tag_all, tag_none: list[str] = _tag_none, city: list[str] = _city,
    followers_min: int = _followers_min, followers_max: int = _followers_max,
    active_within_days: int = _active, opted_in: bool = _opted, allow_unknown: bool = _allow_unknown,
) -> None:
    """Create a named segment; e.g. `segments create hi_humor -w originals -g humor -l hi --opted-in`."""

    async def main() -> None:
        f = _build({"workspace": workspace, **_given(
            genre=genre, language=language, tag_any=tag_any, tag_all=tag_all, tag_none=tag_none, city=city,
            followers_min=followers_min, followers_max=followers_max, active_within_days=active_within_days,
            opted_in=opted_in)})
        async with database() as db:
            await create_segment(db, name, f, allow_unknown=allow_unknown)
            size = await count_segment(db, name)
        console.print(f"segment {name}: {f.describe()} — {size} contacts now", markup=False, soft_wrap=True)

    run(main)


@app.command("edit")
def edit_cmd(
    name: str = typer.Argument(...),
    workspace: str = typer.Option(None, "--workspace", "-w"),
    genre: list[str] = _genre, language: list[str] = _language, tag_any: list[str] = _tag_any,
    tag_all: list[str] = _tag_all, tag_none: list[str] = _tag_none, city: list[str] = _city,
    followers_min: int = _followers_min, followers_max: int = _followers_max,
    active_within_days: int = _active, opted_in: bool = _opted,
    clear: list[str] = typer.Option(None, "--clear", help=f"drop a condition: {', '.join(_CLEARABLE)}"),
    allow_unknown: bool = _allow_unknown,
) -> None:
    """Change a segment: given options replace those conditions, `--clear FIELD` removes one."""

    async def main() -> None:
        async with database() as db:
            current = (await get_segment_info(db, name)).filter
            fields = current.to_dict()
            for field in clear or []:
                if field not in _CLEARABLE:
                    raise UsageError(f"--clear {field!r}: not a condition; one of {', '.join(_CLEARABLE)}")
                fields.pop(field, None)
            if workspace:
                fields["workspace"] = workspace
            fields.update(_given(
                genre=genre, language=language, tag_any=tag_any, tag_all=tag_all, tag_none=tag_none, city=city,
                followers_min=followers_min, followers_max=followers_max, active_within_days=active_within_days,
                opted_in=opted_in))
            f = _build(fields)
            await update_segment(db, name, f, allow_unknown=allow_unknown)
            size = await count_segment(db, name)
        console.print(f"segment {name}: {f.describe()} — {size} contacts now", markup=False, soft_wrap=True)

    run(main)


@app.command("list")
def list_cmd(
    workspace: str = typer.Option(None, "--workspace", "-w"),
    counts: bool = typer.Option(False, "--count", help="also count each segment's contacts"),
) -> None:
    """Every segment, with its conditions."""

    async def main() -> None:
        async with database() as db:
            items = await list_segments(db, workspace)
            sizes = {s.name: await count_segment(db, s.name) for s in items} if counts else {}
        table = Table("name", "workspace", "conditions", *(["contacts"] if counts else []))
        for s in items:
            desc = s.filter.describe().split(" ", 1)
            table.add_row(s.name, s.workspace, desc[1] if len(desc) > 1 else "(all contacts)",
                          *([str(sizes[s.name])] if counts else []))
        console.print(table)

    run(main)


@app.command("show")
def show_cmd(name: str = typer.Argument(...)) -> None:
    """A segment's filter (JSON) and its current size."""

    async def main() -> None:
        async with database() as db:
            info = await get_segment_info(db, name)
            size = await count_segment(db, name)
        console.print(f"segment {info.name} (workspace {info.workspace}), {size} contacts",
                      markup=False, soft_wrap=True)
        console.print_json(info.filter.to_json())
        console.print(f"created {info.created_at:%Y-%m-%d %H:%M}, updated {info.updated_at:%Y-%m-%d %H:%M}")

    run(main)


@app.command("delete")
def delete_cmd(name: str = typer.Argument(...)) -> None:
    """Delete a segment that no campaign uses."""

    async def main() -> None:
        async with database() as db:
            await delete_segment(db, name)
        console.print(f"segment {name} deleted", markup=False, soft_wrap=True)

    run(main)


@app.command("count")
def count_cmd(name: str = typer.Argument(...)) -> None:
    """How many contacts the segment selects right now."""

    async def main() -> None:
        async with database() as db:
            started = time.perf_counter()
            size = await count_segment(db, name)
            ms = (time.perf_counter() - started) * 1000
        console.print(f"{size}  [dim]({ms:.0f} ms)[/]")

    run(main)


@app.command("preview")
def preview_cmd(name: str = typer.Argument(...),
                limit: int = typer.Option(20, "--limit", "-n", help="how many contacts (1-1000)")) -> None:
    """The first contacts of a segment; numbers show only their last 4 digits."""

    async def main() -> None:
        async with database() as db:
            rows = await preview_segment(db, name, limit)
        table = Table(Column("number", no_wrap=True, min_width=12), "name", "language", "genre", "city",
                      "followers", "tags", "opted in", "last active")
        for r in rows:
            table.add_row(r.wa_id_masked, r.name or "", r.language or "", r.genre or "", r.city or "",
                          "" if r.followers is None else str(r.followers), ",".join(r.tags),
                          "yes" if r.opted_in else "no",
                          "" if r.last_active_at is None else f"{r.last_active_at:%Y-%m-%d}")
        console.print(table)

    run(main)
