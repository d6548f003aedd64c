"""One raw input row → a clean contact row, or a rejection with a reason. Pure.

Guarantees:
- `clean_row` never raises for any row `segments.parsing` can produce (any strings, and for JSON
  Lines any JSON values): it returns a `ContactRow` or a `Rejection` (hypothesis-tested).
- A `ContactRow` is storable as is: text has no NUL or lone surrogates, lengths fit the indexes,
  followers fit an integer column, timestamps are timezone-aware (naive ones are read as UTC).
- Empty cells mean "not given": they become None (tags: None), never a stored blank.
- Rejection reasons (stable codes, counted in the import summary):
  phone_empty, phone_not_a_number, phone_too_short, phone_too_long, phone_invalid,
  phone_not_mobile, missing_workspace, bad_opted_in, bad_followers, bad_last_active_at,
  bad_text (NUL / broken unicode), too_long (a field over its limit), bad_value (a JSON list or
  object where text was expected), too_many_cells / too_few_cells (a CSV row wider or narrower
  than its header).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from segments.canon import canonical_city, canonical_genre, canonical_language, canonical_tags
from segments.errors import InvalidPhone
from segments.parsing import RawRow
from segments.phones import normalize_phone

__all__ = ["MAX_LENGTHS", "ContactRow", "Rejection", "clean_row", "parse_opted_in"]

MAX_FOLLOWERS = 2**31 - 1
# characters; keeps every value well inside a btree index entry (≈ 2.7 kB)
MAX_LENGTHS = {"workspace": 64, "external_id": 200, "name": 200, "language": 35, "genre": 64, "city": 100,
               "tag": 64, "attribute_key": 64, "attribute_value": 2000}

_TRUE = frozenset({"true", "t", "yes", "y", "1", "on", "opted_in", "opt_in", "opted in", "subscribed"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "off", "opted_out", "opt_out", "opted out", "unsubscribed",
                    "stop"})
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*([km]?)", re.IGNORECASE)


class ContactRow(NamedTuple):
    """A clean, storable contact from one input row (a NamedTuple: cheap at a million rows)."""

    row: int
    workspace: str
    wa_id: str
    external_id: str | None = None
    name: str | None = None
    language: str | None = None
    genre: str | None = None
    city: str | None = None
    followers: int | None = None
    last_active_at: datetime | None = None
    tags: tuple[str, ...] | None = None
    attributes: dict[str, Any] | None = None
    opted_in: bool | None = None
    language_known: bool = True
    genre_known: bool = True


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row that was not imported: why, and which field."""

    row: int
    reason: str
    field: str
    detail: str

    def message(self, filename: str) -> str:
        """'contacts.csv row 812, field phone: phone_too_short (not a valid number …)'."""
        return f"{filename} row {self.row}, field {self.field}: {self.reason} ({self.detail})"


class _Reject(Exception):
    def __init__(self, reason: str, field: str, detail: str) -> None:
        self.reason, self.field, self.detail = reason, field, detail


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text(fields: dict[str, Any], key: str) -> str | None:
    """The field as stripped text, None when empty/absent; lists/objects are rejected."""
    value = fields.get(key)
    if value is None:
        return None
    if type(value) is str:
        text = value.strip()
        if not text:
            return None
        if text.isascii() and "\x00" not in text:
            limit = MAX_LENGTHS.get(key)
            if limit is None or len(text) <= limit:
                return text
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        raise _Reject("bad_value", key, f"expected text, got a JSON {type(value).__name__}")
    if not text:
        return None
    if _bad_text(text):
        raise _Reject("bad_text", key, "contains a NUL character or broken unicode")
    limit = MAX_LENGTHS.get(key)
    if limit is not None and len(text) > limit:
        raise _Reject("too_long", key, f"{len(text)} characters, at most {limit}")
    return text


class _Memo(dict[str, Any]):
    """`answer(cell)` for a low-cardinality column (workspace, language, genre, city, opted_in,
    tags), remembered per distinct string: a seen value costs one dict lookup. An answer that
    raises (a rejection) is not remembered; at most MEMO_SIZE values are."""

    __slots__ = ("answer",)

    def __init__(self, answer: Callable[[Any], Any]) -> None:
        super().__init__()
        self.answer = answer

    def __missing__(self, value: str) -> Any:
        out = self.answer(value)
        if len(self) < MEMO_SIZE:
            self[value] = out
        return out

    def of(self, value: Any) -> Any:
        """The answer for any cell value; only strings are remembered (1, 1.0 and True are equal
        dict keys with different answers)."""
        return self[value] if type(value) is str else self.answer(value)


MEMO_SIZE = 8192
_WORKSPACE = _Memo(lambda v: _text({"workspace": v}, "workspace"))
_LANGUAGE = _Memo(lambda v: canonical_language(_text({"language": v}, "language")))
_GENRE = _Memo(lambda v: canonical_genre(_text({"genre": v}, "genre")))
_CITY = _Memo(lambda v: canonical_city(_text({"city": v}, "city")))


def parse_opted_in(value: Any) -> bool | None:
    """true/false/yes/no/y/n/1/0/on/off/opted out/stop … (any case) → bool; empty → None.

    Raises ValueError for anything else.
    """
    if value is None:
        return None
    if type(value) is str:
        return _OPTED_IN[value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return _opted_in_text(str(value))


def _opted_in_text(value: str) -> bool | None:
    text = " ".join(value.split()).lower().replace("-", "_")
    if not text:
        return None
    if text in _TRUE or text.replace("_", " ") in _TRUE:
        return True
    if text in _FALSE or text.replace("_", " ") in _FALSE:
        return False
    raise ValueError(f"expected true/false/yes/no/1/0, got {str(value)[:40]!r}")


def _followers(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Reject("bad_followers", "followers", "expected a whole number, got true/false")
    if isinstance(value, int):
        number: float = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Reject("bad_followers", "followers", f"expected a whole number, got {value}")
        number = value
    elif isinstance(value, str):
        if value.isdigit() and value.isascii():
            number = int(value)
            if number > MAX_FOLLOWERS:
                raise _Reject("bad_followers", "followers", f"must be between 0 and {MAX_FOLLOWERS}")
            return number
        text = value.strip().replace(",", "").replace("_", "")
        if not text:
            return None
        m = _NUMBER.fullmatch(text)
        if not m:
            raise _Reject("bad_followers", "followers", f"expected a number like 1200 or 1.2k, got {text[:40]!r}")
        number = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    else:
        raise _Reject("bad_followers", "followers", f"expected a number, got a JSON {type(value).__name__}")
    if number < 0 or number > MAX_FOLLOWERS:
        raise _Reject("bad_followers", "followers", f"must be between 0 and {MAX_FOLLOWERS}")
    return int(round(number))


def _timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise _Reject("bad_last_active_at", "last_active_at",
                      f"expected an ISO 8601 time like 2026-11-19T17:45:00+05:30, got {text[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when.year in (1, 9999):
        try:
            when.astimezone(UTC)  # offsets at the ends of the datetime range overflow here
        except (OverflowError, ValueError):
            raise _Reject("bad_last_active_at", "last_active_at", "out of range") from None
    return when


def _tags(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) is str:
        tags = canonical_tags(value)
        if not tags:
            return None
        if value.isascii() and "\x00" not in value and max(map(len, tags)) <= MAX_LENGTHS["tag"]:
            return tags
    elif isinstance(value, list):
        if any(isinstance(v, dict | list) for v in value):
            raise _Reject("bad_value", "tags", "expected a list of strings")
    elif isinstance(value, dict):
        raise _Reject("bad_value", "tags", "expected text or a list, got a JSON object")
    tags = canonical_tags(value)
    for tag in tags:
        if _bad_text(tag):
            raise _Reject("bad_text", "tags", "contains a NUL character or broken unicode")
        if len(tag) > MAX_LENGTHS["tag"]:
            raise _Reject("too_long", "tags", f"a tag of {len(tag)} characters, at most {MAX_LENGTHS['tag']}")
    return tags or None


def _attributes(extra: dict[str, Any]) -> dict[str, Any] | None:
    if not extra:
        return None
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue
        if len(key) > MAX_LENGTHS["attribute_key"]:
            raise _Reject("too_long", key, f"column name of {len(key)} characters, at most "
                          f"{MAX_LENGTHS['attribute_key']}")
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise _Reject("bad_value", key, "not representable as JSON (NaN or infinity)") from None
        if "\\u0000" in encoded or _bad_text(encoded) or _bad_text(key):
            raise _Reject("bad_text", key, "contains a NUL character or broken unicode")
        if len(encoded) > MAX_LENGTHS["attribute_value"]:
            raise _Reject("too_long", key, f"{len(encoded)} characters, at most {MAX_LENGTHS['attribute_value']}")
        out[key] = value
    return out or None


def clean_row(raw: RawRow, *, workspace: str | None = None, default_region: str = "IN") -> ContactRow | Rejection:
    """Validate and canonicalise one row. Never raises for parser output.

    Args:
        raw: the row as read.
        workspace: used when the row has no `workspace` value (the `--workspace` option).
        default_region: region for phone numbers written without a country code.
    """
    try:
        return _clean(raw, workspace, default_region)
    except _Reject as rej:
        return Rejection(raw.row, rej.reason, rej.field, rej.detail)


def _clean(raw: RawRow, default_workspace: str | None, default_region: str) -> ContactRow:
    # Fields are checked in this order (the first bad one names the rejection): phone, workspace,
    # opted_in, language, genre, external_id, name, city, followers, last_active_at, tags, extras.
    if raw.width_error:
        reason = "too_few_cells" if raw.width_error.startswith("only ") else "too_many_cells"
        raise _Reject(reason, "(row)", raw.width_error)
    get = raw.fields.get
    phone_value = get("phone")
    if type(phone_value) is not str:
        if isinstance(phone_value, bool) or isinstance(phone_value, dict | list):
            raise _Reject("phone_not_a_number", "phone", "expected text or digits")
        if isinstance(phone_value, float):
            raise _Reject("phone_not_a_number", "phone", "a decimal number; write the phone as text")
        phone_value = "" if phone_value is None else str(phone_value)
    try:
        wa_id = normalize_phone(phone_value, default_region)
    except InvalidPhone as exc:
        raise _Reject(f"phone_{exc.reason}", "phone", exc.detail) from None
    workspace = _WORKSPACE.of(get("workspace")) or _WORKSPACE.of(default_workspace)
    if not workspace:
        raise _Reject("missing_workspace", "workspace", "no workspace in the row and no --workspace given")
    try:
        opted_in = parse_opted_in(get("opted_in"))
    except ValueError as exc:
        raise _Reject("bad_opted_in", "opted_in", str(exc)) from None
    language, language_known = _LANGUAGE.of(get("language"))
    genre, genre_known = _GENRE.of(get("genre"))
    f = raw.fields
    return ContactRow._make((
        raw.row, workspace, wa_id, _text(f, "external_id"), _text(f, "name"), language, genre,
        _CITY.of(get("city")), _followers(get("followers")), _timestamp(_text(f, "last_active_at")),
        _TAGS.of(get("tags")), _attributes(raw.extra) if raw.extra else None, opted_in, language_known,
        genre_known))


_OPTED_IN = _Memo(_opted_in_text)
_TAGS = _Memo(_tags)
