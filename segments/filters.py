"""Segment filters: a structured AND of conditions over contacts, and its SQL compiler.

Guarantees:
- A `SegmentFilter` is valid once constructed: `FilterError` names the field otherwise. Genres and
  languages are canonicalised (`Comedy` → `humor`, `HI` → `hi`), tags lower-cased, lists deduplicated
  and sorted, so two filters that select the same contacts compare (and serialise) equal.
- `compile_filter` never inlines user text: every value is a `$n` parameter. The expression reads
  only columns of `contacts` under the given alias.
- An empty list means "no condition on this field", never "match nothing".

What a filter is not: it does not exclude opted-out or blocked contacts unless `opted_in` says
so; marketing suppression and frequency caps are applied when a campaign's audience is frozen.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from segments.canon import canonical_genre, canonical_language, canonical_tags
from segments.errors import FilterError

__all__ = ["FilterError", "SegmentFilter", "compile_filter"]

MAX_LIST_ITEMS = 500
MAX_FOLLOWERS = 2**31 - 1  # contacts.followers is an integer column
MAX_DAYS = 36_500
_ALIAS = re.compile(r"[a-z_][a-z0-9_]{0,30}")


def _text_list(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise FilterError(name, f"must be a list of strings, got {type(value).__name__}")
    if len(value) > MAX_LIST_ITEMS:
        raise FilterError(name, f"at most {MAX_LIST_ITEMS} values, got {len(value)}")
    items = []
    for item in value:
        if not isinstance(item, str):
            raise FilterError(name, f"must be a list of strings, got an item of type {type(item).__name__}")
        if "\x00" in item:
            raise FilterError(name, "values may not contain NUL characters")
        if item.strip():
            items.append(item)
    return tuple(items)


def _canonical(name: str, value: Any, canon: Any) -> tuple[str, ...]:
    out = set()
    for item in _text_list(name, value):
        code, _known = canon(item)
        if code is not None:
            out.add(code)
    return tuple(sorted(out))


def _int_or_none(name: str, value: Any, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FilterError(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise FilterError(name, f"must be between {low} and {high}, got {value}")
    return value


@dataclass(frozen=True)
class SegmentFilter:
    """Contacts of one workspace matching every given condition (AND; IN within a list).

    Fields: workspace (required); genres / languages / cities: contact value in the list (cities
    compare case-insensitively); tags_any: at least one of; tags_all: every one of; tags_none: none
    of; followers_min / followers_max: inclusive range; active_within_days: last_active_at within
    that many days of now; opted_in: True = marketing opt-in only, False = opted-out only,
    None = either.
    """

    workspace: str
    genres: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_none: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()
    followers_min: int | None = None
    followers_max: int | None = None
    active_within_days: int | None = None
    opted_in: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.workspace, str) or not self.workspace.strip():
            raise FilterError("workspace", "is required (a workspace name)")
        if "\x00" in self.workspace:
            raise FilterError("workspace", "may not contain NUL characters")
        put = object.__setattr__
        put(self, "workspace", self.workspace.strip())
        put(self, "genres", _canonical("genres", self.genres, canonical_genre))
        put(self, "languages", _canonical("languages", self.languages, canonical_language))
        for name in ("tags_any", "tags_all", "tags_none"):
            put(self, name, canonical_tags(list(_text_list(name, getattr(self, name)))))
        cities = {" ".join(c.split()).lower() for c in _text_list("cities", self.cities)}
        put(self, "cities", tuple(sorted(cities)))
        lo = _int_or_none("followers_min", self.followers_min, 0, MAX_FOLLOWERS)
        hi = _int_or_none("followers_max", self.followers_max, 0, MAX_FOLLOWERS)
        if lo is not None and hi is not None and lo > hi:
            raise FilterError("followers_max", f"must be ≥ followers_min ({lo}), got {hi}")
        _int_or_none("active_within_days", self.active_within_days, 1, MAX_DAYS)
        if self.opted_in is not None and not isinstance(self.opted_in, bool):
            raise FilterError("opted_in", f"must be true, false or null, got {self.opted_in!r}")
        overlap = set(self.tags_none) & (set(self.tags_any) | set(self.tags_all))
        if overlap:
            raise FilterError("tags_none", f"excludes tags that are also required: {', '.join(sorted(overlap))}")

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that constrain something (plus workspace); lists as JSON arrays."""
        out: dict[str, Any] = {"workspace": self.workspace}
        for f in dataclasses.fields(self):
            if f.name == "workspace":
                continue
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        """Compact JSON with sorted keys (what the `segments.filter` jsonb column stores)."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> SegmentFilter:
        """Parse JSON text or a mapping; unknown keys and wrong types raise FilterError naming the field."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise FilterError("(filter)", f"is not valid JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise FilterError("(filter)", f"must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            hint = _did_you_mean(unknown[0], names)
            raise FilterError(unknown[0], f"is not a filter field{hint}; fields: {', '.join(sorted(names))}")
        if "workspace" not in data:
            raise FilterError("workspace", "is required (a workspace name)")
        return cls(**{k: v for k, v in data.items()})

    def replace(self, **changes: Any) -> SegmentFilter:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One human line: 'workspace=originals genres=humor,news followers>=1000'."""
        parts = [f"workspace={self.workspace}"]
        for key, value in self.to_dict().items():
            if key == "workspace":
                continue
            shown = ",".join(str(v) for v in value) if isinstance(value, list) else str(value).lower()
            parts.append(f"{key}={shown}")
        return " ".join(parts)


def _did_you_mean(name: str, names: set[str]) -> str:
    for candidate in sorted(names):
        if candidate.rstrip("s") == name.rstrip("s") or candidate.startswith(name) or name.startswith(candidate):
            return f" (did you mean '{candidate}'?)"
    return ""


def compile_filter(f: SegmentFilter, *, first_param: int = 1, alias: str = "c") -> tuple[str, list[Any]]:
    """The filter as a SQL boolean expression over `contacts <alias>`, with $n parameters.

    Returns (sql, params): `sql` uses $first_param … $(first_param + len(params) - 1), e.g.
    ("c.workspace = $1 AND c.genre = ANY($2::text[])", ["originals", ["humor"]]). Embed it as
    `SELECT … FROM contacts c WHERE <sql>`; pass `first_param` to append to a query that
    already uses $1…$k.
    """
    if not _ALIAS.fullmatch(alias):
        raise ValueError(f"alias must be a plain SQL identifier, got {alias!r}")
    if first_param < 1:
        raise ValueError(f"first_param must be ≥ 1, got {first_param}")
    params: list[Any] = []
    clauses: list[str] = []

    def p(value: Any, cast: str = "") -> str:
        params.append(value)
        return f"${first_param + len(params) - 1}{cast}"

    a = alias
    clauses.append(f"{a}.workspace = {p(f.workspace)}")
    if f.genres:
        clauses.append(f"{a}.genre = ANY({p(list(f.genres), '::text[]')})")
    if f.languages:
        clauses.append(f"{a}.language = ANY({p(list(f.languages), '::text[]')})")
    if f.cities:
        clauses.append(f"lower({a}.city) = ANY({p(list(f.cities), '::text[]')})")
    if f.tags_any:
        clauses.append(f"{a}.tags && {p(list(f.tags_any), '::text[]')}")
    if f.tags_all:
        clauses.append(f"{a}.tags @> {p(list(f.tags_all), '::text[]')}")
    if f.tags_none:
        clauses.append(f"NOT ({a}.tags && {p(list(f.tags_none), '::text[]')})")
    if f.followers_min is not None:
        clauses.append(f"{a}.followers >= {p(f.followers_min, '::integer')}")
    if f.followers_max is not None:
        clauses.append(f"{a}.followers <= {p(f.followers_max, '::integer')}")
    if f.active_within_days is not None:
        clauses.append(f"{a}.last_active_at >= now() - make_interval(days => {p(f.active_within_days, '::integer')})")
    if f.opted_in is not None:
        clauses.append(f"{a}.marketing_opt_in = {p(f.opted_in, '::boolean')}")
    return " AND ".join(clauses), params
