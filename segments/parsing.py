"""Reading contact files: CSV (UTF-8, BOM tolerated, quoted fields) and JSON Lines → raw rows.

Guarantees:
- Streaming: rows are yielded one at a time; memory does not grow with the file.
- A file that cannot be read as a whole (not UTF-8, broken quoting, no header, no phone column,
  a JSON Lines line that is not a JSON object) raises `FileFormatError` naming the file and the row
  or line; callers treat that as "change nothing".
- Row numbers are what a person sees: for CSV the header is row 1 and the first contact row 2 (as
  in a spreadsheet; a quoted field spanning lines is still one row); for JSON Lines, line numbers.
- Column names are matched case-insensitively with a few aliases (`mobile`, `phone_number` →
  `phone`); every other column is kept under a snake_case key as a contact attribute.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from segments.errors import FileFormatError

__all__ = ["COLUMNS", "ContactFile", "RawRow", "normalise_column", "open_contact_file"]

# canonical column → accepted header spellings (after normalise_column)
_ALIASES: dict[str, tuple[str, ...]] = {
    "external_id": ("external_id", "id", "creator_id", "contact_id"),
    "name": ("name", "full_name", "creator_name", "contact_name"),
    "phone": ("phone", "phone_number", "mobile", "mobile_number", "whatsapp", "whatsapp_number",
              "wa_id", "msisdn"),
    "language": ("language", "lang", "language_code"),
    "genre": ("genre", "category"),
    "workspace": ("workspace",),
    "opted_in": ("opted_in", "opt_in", "optin", "marketing_opt_in", "consent"),
    "city": ("city",),
    "followers": ("followers", "follower_count", "followers_count"),
    "last_active_at": ("last_active_at", "last_active", "last_seen"),
    "tags": ("tags", "labels"),
}
COLUMNS: tuple[str, ...] = tuple(_ALIASES)
_BY_ALIAS = {alias: column for column, aliases in _ALIASES.items() for alias in aliases}
_NON_WORD = re.compile(r"[^\w]+")
MAX_COLUMNS = 200
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def normalise_column(name: str) -> str:
    """'Phone Number ' → 'phone_number'; '﻿Name' (BOM) → 'name'."""
    return _NON_WORD.sub("_", name.replace("\ufeff", "").strip().lower()).strip("_")


class RawRow(NamedTuple):
    """One input row: known columns under canonical names, unknown ones under `extra`."""

    row: int
    fields: dict[str, Any]
    extra: dict[str, Any]
    width_error: str | None = None  # set when a CSV row has more or fewer cells than the header


@dataclass
class ContactFile:
    """An opened contact file: its format, header mapping and a row iterator (`rows()`)."""

    path: Path
    format: str                     # "csv" | "jsonl"
    columns: list[str]              # header as written (CSV) or [] (JSON Lines: per line)
    unknown_columns: list[str]      # extra columns that become attributes (CSV)
    _stream: io.TextIOBase
    _header: list[tuple[str, bool]]  # per CSV position: (key, is_known)
    _delimiter: str = ","

    def rows(self) -> Iterator[RawRow]:
        if self.format == "csv":
            return self._csv_rows()
        return self._jsonl_rows()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ContactFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- CSV -----------------------------------------------------------------------------------

    def _csv_rows(self) -> Iterator[RawRow]:
        header = self._header
        width = len(header)
        known = [(key, i) for i, (key, is_known) in enumerate(header) if is_known]
        unknown = [(key, i) for i, (key, is_known) in enumerate(header) if not is_known]
        reader = csv.reader(self._stream, delimiter=self._delimiter, strict=True)
        make = RawRow._make
        row_no = 1
        try:
            for cells in reader:
                row_no += 1
                n = len(cells)
                line = "".join(cells)
                if not line.isascii() and _undecodable(line):
                    raise _not_utf8(self.path, f"row {row_no}")
                if n == width:
                    fields = {key: cells[i] for key, i in known}
                    extra = {key: cells[i] for key, i in unknown if cells[i] != ""} if unknown else {}
                    yield make((row_no, fields, extra, None))
                    continue
                if not cells or (n == 1 and not cells[0].strip()):
                    continue  # a blank line is not a contact
                fields = {key: cells[i] for key, i in known if i < n}
                extra = {key: cells[i] for key, i in unknown if i < n and cells[i] != ""}
                problem = None
                if n > width and any(c.strip() for c in cells[width:]):
                    problem = f"{n} cells but the header has {width} columns"
                elif n < width:  # cut short: its missing cells (consent among them) cannot be guessed
                    problem = f"only {n} of the header's {width} columns"
                yield RawRow(row_no, fields, extra, problem)
        except csv.Error as exc:
            raise FileFormatError(f"{self.path.name} row {row_no + 1}: not valid CSV ({exc}); "
                                  "nothing was imported") from None

    # -- JSON Lines ----------------------------------------------------------------------------

    def _jsonl_rows(self) -> Iterator[RawRow]:
        line_no = 0
        for line in self._stream:
            line_no += 1
            if not line.strip():
                continue
            if not line.isascii() and _undecodable(line):
                raise _not_utf8(self.path, f"line {line_no}")
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise FileFormatError(f"{self.path.name} line {line_no}: not valid JSON ({exc}); "
                                      "nothing was imported") from None
            if not isinstance(obj, dict):
                raise FileFormatError(f"{self.path.name} line {line_no}: expected a JSON object, got "
                                      f"{type(obj).__name__}; nothing was imported")
            fields: dict[str, Any] = {}
            extra: dict[str, Any] = {}
            for raw_key, value in obj.items():
                key = normalise_column(str(raw_key))
                column = _BY_ALIAS.get(key)
                if column is not None:
                    fields[column] = value
                elif key and value is not None and value != "":
                    extra[key] = value
            yield RawRow(line_no, fields, extra)


def _undecodable(text: str) -> bool:
    """True when `text` holds bytes that were not UTF-8 (surrogateescape'd to U+DC80…U+DCFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_utf8(path: Path, where: str) -> FileFormatError:
    return FileFormatError(f"{path.name} {where}: not UTF-8 text; save the file as 'CSV UTF-8' "
                           "and retry; nothing was imported")


def _detect_format(path: Path, first_line: str) -> str:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return "csv"
    return "jsonl" if first_line.lstrip().startswith("{") else "csv"


def _sniff_delimiter(first_line: str) -> str:
    """',' unless ';' or a tab splits the header into more columns (European/TSV exports)."""
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def open_contact_file(path: str | Path) -> ContactFile:
    """Open a CSV or JSON Lines contact file and read its header.

    Raises:
        FileFormatError: missing/unreadable file, not UTF-8, empty, a CSV header without a phone
            column or with a column twice.
    """
    p = Path(path)
    try:
        # surrogateescape: an undecodable byte becomes a lone surrogate, caught per row below so
        # the error names the row (a strict decoder fails a whole 8 kB buffer ahead of the reader)
        stream = open(p, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
    except OSError as exc:
        raise FileFormatError(f"cannot open {p}: {exc.strerror or exc}") from None
    try:
        first_line = stream.readline()
        if _undecodable(first_line):
            raise _not_utf8(p, "row 1")
        if not first_line.strip():
            raise FileFormatError(f"{p.name}: the file is empty (expected a header row or JSON Lines); "
                                  "nothing was imported")
        fmt = _detect_format(p, first_line)
        if fmt == "jsonl":
            stream.seek(0)
            if stream.read(1) != "\ufeff":
                stream.seek(0)
            return ContactFile(p, "jsonl", [], [], stream, [])
        delimiter = _sniff_delimiter(first_line)
        try:
            header_cells = next(csv.reader([first_line], delimiter=delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            raise FileFormatError(f"{p.name} row 1: the header is not valid CSV ({exc}); "
                                  "nothing was imported") from None
        return _csv_file(p, stream, header_cells, delimiter)
    except BaseException:
        stream.close()
        raise


def _csv_file(p: Path, stream: io.TextIOBase, header_cells: list[str], delimiter: str) -> ContactFile:
    if len(header_cells) > MAX_COLUMNS:
        raise FileFormatError(f"{p.name} row 1: {len(header_cells)} columns; at most {MAX_COLUMNS} are "
                              "supported; nothing was imported")
    header: list[tuple[str, bool]] = []
    seen: dict[str, str] = {}
    unknown: list[str] = []
    for index, cell in enumerate(header_cells, start=1):
        if "\x00" in cell:
            raise FileFormatError(f"{p.name} row 1, column {index}: the header contains a NUL character; "
                                  "nothing was imported")
        key = normalise_column(cell) or f"column_{index}"
        column = _BY_ALIAS.get(key)
        name = column or key
        if name in seen:
            raise FileFormatError(f"{p.name} row 1: columns {seen[name]!r} and {cell.strip()!r} both mean "
                                  f"'{name}'; keep one; nothing was imported")
        seen[name] = cell.strip()
        header.append((name, column is not None))
        if column is None:
            unknown.append(key)
    if "phone" not in seen:
        raise FileFormatError(
            f"{p.name} row 1: no phone column (looked for {', '.join(_ALIASES['phone'])}); "
            f"columns are: {', '.join(c.strip() for c in header_cells)}; nothing was imported")
    return ContactFile(p, "csv", [c.strip() for c in header_cells], unknown, stream, header, delimiter)
