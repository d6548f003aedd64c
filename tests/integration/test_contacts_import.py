"""Contact import against Postgres: exact counts on the shared sample, upserts, consent, all-or-nothing."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from broadcaster.contacts import import_contacts, mark_opted_in, mark_opted_out
from broadcaster.db import Database, _asyncio_loop, open_db
from broadcaster.errors import InputError, NotFoundError, UsageError

SAMPLE = Path("/work/shared/data/contacts_5k.csv")
HEADER = ["external_id", "name", "phone", "language", "genre", "workspace", "opted_in", "city", "followers",
          "last_active_at", "tags"]


def _write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _row(phone: str, ws: str, **kw: str) -> dict[str, str]:
    return {"external_id": kw.get("external_id", ""), "name": kw.get("name", "A Creator"), "phone": phone,
            "language": kw.get("language", "hi"), "genre": kw.get("genre", "news"), "workspace": ws,
            "opted_in": kw.get("opted_in", "true"), "city": kw.get("city", "Pune"),
            "followers": kw.get("followers", "100"), "last_active_at": kw.get("last_active_at", ""),
            "tags": kw.get("tags", "")}


def _expected_number(raw: str) -> str | None:
    """An independent reading of the acceptance rule: libphonenumber, valid, mobile (or an Indian
    10-digit 6-9 number libphonenumber calls a fixed line), no letters."""
    text = raw.strip()
    if not text or any(ch.isalpha() for ch in text):
        return None
    try:
        number = phonenumbers.parse(text, "IN")
    except phonenumbers.NumberParseException:
        return None
    kind = phonenumbers.number_type(number)
    national = str(number.national_number)
    indian_mobile_series = number.country_code == 91 and len(national) == 10 and national[0] in "6789"
    if kind not in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE) and not (
            kind == PhoneNumberType.FIXED_LINE and indian_mobile_series):
        return None
    return f"{number.country_code}{number.national_number}"


def _falsy(text: str) -> bool:
    return text.strip().lower() in ("false", "no", "n", "0")


@pytest.fixture
def sample_copy(tmp_path: Path, uniq: str) -> tuple[Path, dict[str, str], list[dict[str, str]]]:
    """The shared 5k sample with workspace names made unique to this test."""
    rows = _read_csv(SAMPLE)
    names = {ws: f"{ws}_{uniq}" for ws in {r["workspace"] for r in rows}}
    for r in rows:
        r["workspace"] = names[r["workspace"]]
    return _write_csv(tmp_path / "contacts_5k.csv", rows), names, rows


async def test_shared_sample_exact_counts(db: Database, sample_copy: tuple, tmp_path: Path) -> None:
    path, names, rows = sample_copy
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    rejected = 0
    for r in rows:
        number = _expected_number(r["phone"])
        if number is None:
            rejected += 1
        else:
            groups[(r["workspace"], number)].append(r)
    valid = len(rows) - rejected

    summary = await import_contacts(db, path, rejects_path=tmp_path / "rejects.csv")

    assert summary.read == len(rows) == 5000
    assert summary.inserted == len(groups)
    assert summary.collapsed == valid - len(groups)
    assert summary.rejected_total == rejected
    assert (summary.updated, summary.unchanged) == (0, 0)
    assert sorted(summary.new_workspaces) == sorted(names.values())
    stored = await db.fetchval("SELECT count(*) FROM contacts WHERE workspace = ANY($1::text[])",
                               list(names.values()))
    assert stored == len(groups)
    rejects = _read_csv(tmp_path / "rejects.csv")
    assert len(rejects) == rejected
    assert all(r["reason"].startswith("phone_") and r["field"] == "phone" for r in rejects)

    # duplicates: the last row's fields; opted out if any duplicate says so
    dups = {key: g for key, g in groups.items() if len(g) > 1}
    assert dups, "the sample has duplicates"
    for (ws, number), group in dups.items():
        row = await db.fetchrow("SELECT external_id, marketing_opt_in FROM contacts WHERE workspace = $1"
                                " AND wa_id = $2", ws, number)
        assert row["external_id"] == group[-1]["external_id"]
        assert row["marketing_opt_in"] is not any(_falsy(r["opted_in"]) for r in group)


async def test_reimport_counts_unchanged_and_updated(db: Database, sample_copy: tuple, tmp_path: Path) -> None:
    path, names, rows = sample_copy
    first = await import_contacts(db, path)
    again = await import_contacts(db, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.inserted)
    assert again.collapsed == first.collapsed and again.rejected == first.rejected

    # change 10 contacts' city and append one new contact
    changed = 0
    touched: set[str] = set()
    for r in rows:
        number = _expected_number(r["phone"])
        if number and number not in touched and changed < 10:
            touched.add(number)
            changed += 1
    for r in rows:
        if _expected_number(r["phone"]) in touched:
            r["city"] = "Shillong"
    rows.append(_row("+91 98000 00004", next(iter(names.values()))))
    third = await import_contacts(db, _write_csv(tmp_path / "edited.csv", rows))
    assert (third.inserted, third.updated, third.unchanged) == (1, 10, first.inserted - 10)


@pytest.mark.parametrize("raw", ["+91 98000 00004", "09800000004", "0091 9800000004", "919800000004",
                                 "9800000004", "(+91) 98000.00004", " 9800000004 "])
async def test_each_phone_form_is_one_contact(db: Database, uniq: str, tmp_path: Path, raw: str) -> None:
    ws = f"forms_{uniq}"
    summary = await import_contacts(db, _write_csv(tmp_path / "f.csv", [_row(raw, ws)]))
    assert summary.inserted == 1
    assert await db.fetchval("SELECT wa_id FROM contacts WHERE workspace = $1", ws) == "919800000004"


async def test_all_phone_forms_in_one_file_collapse(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"forms_{uniq}"
    forms = ["+91 98000 00004", "09800000004", "0091 9800000004", "919800000004", "9800000004",
             "(+91) 98000.00004", " 9800000004 "]
    rows = [_row(p, ws, external_id=f"e{i}", opted_in="no" if i == 2 else "yes") for i, p in enumerate(forms)]
    rows += [_row(bad, ws) for bad in ["12345", "98765ABCDE", "0442345678", ""]]
    summary = await import_contacts(db, _write_csv(tmp_path / "f.csv", rows))
    assert (summary.read, summary.inserted, summary.collapsed, summary.rejected_total) == (11, 1, 6, 4)
    row = await db.fetchrow("SELECT external_id, marketing_opt_in FROM contacts WHERE workspace = $1", ws)
    assert (row["external_id"], row["marketing_opt_in"]) == ("e6", False)  # last row's fields, opt-out wins


async def test_upsert_keeps_values_missing_from_the_file(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"keep_{uniq}"
    await import_contacts(db, _write_csv(tmp_path / "a.csv", [_row("9800000004", ws, city="Pune", tags="a;b",
                                                                   language="Hindi", genre="Comedy")]))
    lean = tmp_path / "b.csv"
    lean.write_text(f"phone,workspace,followers,shoe_size\n9800000004,{ws},250,9\n", encoding="utf-8")
    summary = await import_contacts(db, lean)
    assert (summary.updated, summary.unchanged) == (1, 0)
    row = await db.fetchrow("SELECT * FROM contacts WHERE workspace = $1", ws)
    assert (row["city"], row["tags"], row["language"], row["genre"], row["followers"]) == \
        ("Pune", ["a", "b"], "hi", "humor", 250)
    assert json.loads(row["attributes"]) == {"shoe_size": "9"}


async def test_unknown_values_are_kept_and_reported(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"unk_{uniq}"
    rows = [_row("9800000004", ws, language="Klingon", genre="ASMR"), _row("9800000005", ws, language="bho")]
    summary = await import_contacts(db, _write_csv(tmp_path / "u.csv", rows))
    assert summary.unknown_languages == {"klingon": 1}
    assert summary.unknown_genres == {"asmr": 1}
    assert summary.no_template_language == {"bho": 1}
    stored = await db.fetch("SELECT language, genre FROM contacts WHERE workspace = $1 ORDER BY wa_id", ws)
    assert [(r["language"], r["genre"]) for r in stored] == [("klingon", "asmr"), ("bho", "news")]


async def test_workspace_from_row_else_option_else_rejected(db: Database, uniq: str, tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(f"phone,workspace\n9800000004,row_{uniq}\n9800000005,\n", encoding="utf-8")
    summary = await import_contacts(db, path)
    assert (summary.inserted, summary.rejected) == (1, {"missing_workspace": 1})
    assert summary.examples == ["w.csv row 3, field workspace: missing_workspace (no workspace in the row and "
                                "no --workspace given)"]
    summary = await import_contacts(db, path, workspace=f"opt_{uniq}")
    assert (summary.inserted, summary.unchanged) == (1, 1)
    assert await db.fetchval("SELECT workspace FROM contacts WHERE wa_id = '919800000005'"
                             " AND workspace LIKE $1", f"%{uniq}") == f"opt_{uniq}"


async def test_jsonl_import(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"jsonl_{uniq}"
    lines = [{"phone": "+919800000004", "workspace": ws, "tags": ["VIP"], "plan": {"tier": 2}, "opted_in": False},
             {"mobile": 9800000005, "workspace": ws, "followers": "1.5k"}]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    summary = await import_contacts(db, path)
    assert (summary.inserted, summary.without_consent) == (2, 1)
    rows = await db.fetch("SELECT wa_id, tags, attributes, marketing_opt_in, followers FROM contacts"
                          " WHERE workspace = $1 ORDER BY wa_id", ws)
    assert [(r["wa_id"], r["tags"], json.loads(r["attributes"]), r["marketing_opt_in"], r["followers"])
            for r in rows] == [("919800000004", ["vip"], {"plan": {"tier": 2}}, False, None),
                               ("919800000005", [], {}, False, 1500)]  # no opted_in: consent not assumed


@pytest.mark.parametrize(("tail", "message"), [
    (b'9800000099,"unterminated\n', r"^bad\.csv row 12003: not valid CSV"),
    (b"9800000099,\xff\n", r"^bad\.csv row 12003: not UTF-8 text"),
])
async def test_unparseable_file_changes_nothing(db: Database, uniq: str, tmp_path: Path, tail: bytes,
                                                message: str) -> None:
    """The break sits after more than one COPY chunk: chunks already staged are rolled back too."""
    ws = f"bad_{uniq}"
    await import_contacts(db, _write_csv(tmp_path / "good.csv", [_row("9800000004", ws, city="Pune")]))
    before = await db.fetch("SELECT * FROM contacts WHERE workspace = $1", ws)
    lines = [f"98{i:08d},{ws},Goa".encode() for i in range(12_000)] + [f"9800000004,{ws},Goa".encode()]
    path = tmp_path / "bad.csv"
    path.write_bytes(b"phone,workspace,city\n" + b"\n".join(lines) + b"\n" + tail)
    with pytest.raises(InputError, match=message):
        await import_contacts(db, path, rejects_path=tmp_path / "rejects.csv")
    assert await db.fetch("SELECT * FROM contacts WHERE workspace = $1", ws) == before
    assert not (tmp_path / "rejects.csv").exists() and not (tmp_path / "rejects.csv.part").exists()


async def test_file_without_phone_column(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("name,city\nA,B\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"^x\.csv row 1: no phone column"):
        await import_contacts(db, path)


async def test_bad_options(db: Database, tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "c.csv", [])
    with pytest.raises(UsageError, match=r"^--default-region 'XX' is not a region code"):
        await import_contacts(db, path, default_region="XX")
    with pytest.raises(UsageError, match=r"^--rejects must not be the file being imported"):
        await import_contacts(db, path, rejects_path=path)


async def test_stop_reply_is_never_undone_by_an_import(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"stop_{uniq}"
    path = _write_csv(tmp_path / "c.csv", [_row("9800000004", ws, opted_in="yes")])
    await import_contacts(db, path)
    assert await mark_opted_out(db, ws, "919800000004", "reply", detail="STOP")
    again = await import_contacts(db, path)
    assert again.unchanged == 1
    row = await db.fetchrow("SELECT marketing_opt_in, consent_source FROM contacts WHERE workspace = $1", ws)
    assert (row["marketing_opt_in"], row["consent_source"]) == (False, "reply")
    assert await mark_opted_in(db, ws, "+919800000004", "agent")
    row = await db.fetchrow("SELECT marketing_opt_in, consent_source FROM contacts WHERE workspace = $1", ws)
    assert (row["marketing_opt_in"], row["consent_source"]) == (True, "agent")
    events = await db.fetch("SELECT opted_in, source, detail FROM consent_events WHERE workspace = $1 ORDER BY id", ws)
    assert [tuple(e) for e in events] == [(False, "reply", "STOP"), (True, "agent", None)]


async def test_stop_reply_during_an_import_is_kept(db: Database, uniq: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A STOP that creates the contact after the import looked for it (its insert would collide
    on the unique key) wins: the import keeps that contact as it is and inserts the others."""
    import broadcaster.contacts as contacts_module

    ws = f"race_{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
    real_insert = contacts_module._insert_new

    async def stop_arrives_first(conn, filename):  # type: ignore[no-untyped-def]
        assert await mark_opted_out(db, ws, "919800000004", "reply", detail="STOP")  # another connection
        return await real_insert(conn, filename)

    monkeypatch.setattr(contacts_module, "_insert_new", stop_arrives_first)
    summary = await import_contacts(db, _write_csv(tmp_path / "c.csv", [
        _row("9800000004", ws, opted_in="yes"), _row("9800000005", ws, opted_in="yes")]))
    assert (summary.inserted, summary.updated, summary.unchanged) == (1, 0, 1)
    rows = await db.fetch("SELECT wa_id, marketing_opt_in, consent_source FROM contacts WHERE workspace = $1"
                          " ORDER BY wa_id", ws)
    assert [tuple(r) for r in rows] == [("919800000004", False, "reply"), ("919800000005", True, "import")]


async def test_import_opt_out_then_opt_in_again(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"flip_{uniq}"
    await import_contacts(db, _write_csv(tmp_path / "a.csv", [_row("9800000004", ws, opted_in="yes")]))
    out = await import_contacts(db, _write_csv(tmp_path / "b.csv", [_row("9800000004", ws, opted_in="N")]))
    back = await import_contacts(db, _write_csv(tmp_path / "c.csv", [_row("9800000004", ws, opted_in="Y")]))
    assert (out.updated, back.updated) == (1, 1)
    events = await db.fetch("SELECT opted_in, source, detail FROM consent_events WHERE workspace = $1 ORDER BY id", ws)
    assert [tuple(e) for e in events] == [(False, "import", "b.csv"), (True, "import", "c.csv")]


async def test_opt_out_of_unknown_number_suppresses_later_import(db: Database, uniq: str, tmp_path: Path) -> None:
    ws = f"supp_{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
    assert await mark_opted_out(db, ws, "919800000004", "error_131050")
    assert not await mark_opted_out(db, ws, "919800000004", "error_131050")  # already recorded
    summary = await import_contacts(db, _write_csv(tmp_path / "c.csv", [_row("9800000004", ws, opted_in="yes")]))
    assert (summary.inserted, summary.updated) == (0, 1)  # fields filled in, consent kept
    row = await db.fetchrow("SELECT marketing_opt_in, consent_source, name FROM contacts WHERE workspace = $1", ws)
    assert tuple(row) == (False, "error_131050", "A Creator")


async def test_reply_confirms_an_import_opt_out(db: Database, uniq: str, tmp_path: Path) -> None:
    """A STOP on a contact the import already opted out makes the opt-out sticky."""
    ws = f"conf_{uniq}"
    await import_contacts(db, _write_csv(tmp_path / "a.csv", [_row("9800000004", ws, opted_in="no")]))
    assert await mark_opted_out(db, ws, "919800000004", "reply")
    await import_contacts(db, _write_csv(tmp_path / "b.csv", [_row("9800000004", ws, opted_in="yes")]))
    assert await db.fetchval("SELECT marketing_opt_in FROM contacts WHERE workspace = $1", ws) is False


async def test_consent_calls_validate_input(db: Database, uniq: str) -> None:
    with pytest.raises(NotFoundError, match=r"^workspace 'nope_.*' does not exist"):
        await mark_opted_out(db, f"nope_{uniq}", "919800000004", "reply")
    with pytest.raises(ValueError, match=r"^consent source must be one of"):
        await mark_opted_out(db, "w", "919800000004", "sms")
    with pytest.raises(InputError, match=r"is not a WhatsApp id"):
        await mark_opted_out(db, "w", "98000abc", "reply")
    ws = f"empty_{uniq}"
    await db.execute("INSERT INTO workspaces (name) VALUES ($1)", ws)
    assert not await mark_opted_in(db, ws, "919800000009", "reply")  # opt-in never creates a contact
    with pytest.raises(ValueError, match=r"^an import opts contacts in through import_contacts"):
        await mark_opted_in(db, ws, "919800000009", "import")


_cell = st.one_of(st.text(max_size=25), st.sampled_from(["", " ", "yes", "N", "1.5k", "-3", "2026-01-01", "Comedy",
                                                         "Hindi", "a;b", "9" * 12]))
_phone = st.one_of(st.sampled_from(["+91 98000 00004", "9800000005", "09800000006", "12345", "", "n/a",
                                    "+44 7911 123456", "+91 12345 67890"]), st.text(max_size=16))
_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                   st.lists(st.text(max_size=5), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_phone, st.sampled_from(["", "w1", "w2"]), *([_cell] * 9)), min_size=1, max_size=12))
async def test_no_csv_row_crashes_the_importer(db_url: str, uniq: str, tmp_path: Path, rows: list[tuple]) -> None:
    """Every row of any CSV is imported or rejected with a reason; the counts always add up."""
    header = ["phone", "workspace", "external_id", "name", "language", "genre", "opted_in", "city", "followers",
              "last_active_at", "tags"]
    path = tmp_path / "h.csv"
    _write_rows(path, header, [[phone, f"{ws}_{uniq}" if ws else "", *cells] for phone, ws, *cells in rows])
    try:
        # hypothesis runs each example in a fresh trio run: a pool per example, not the `db` fixture
        async with _asyncio_loop(), open_db(db_url, max_size=2) as db:
            summary = await import_contacts(db, path, workspace=f"fb_{uniq}", rejects_path=tmp_path / "r.csv")
    except InputError as exc:  # only a whole-file problem may stop it (e.g. a stray '\r' breaks CSV quoting)
        assert "nothing was imported" in str(exc)
        return
    assert summary.read == len(rows)
    assert summary.read == (summary.inserted + summary.updated + summary.unchanged + summary.collapsed
                            + summary.rejected_total)
    rejects = _read_csv(tmp_path / "r.csv")
    assert len(rejects) == summary.rejected_total
    assert all(r["reason"] and r["field"] for r in rejects)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objs=st.lists(st.dictionaries(st.sampled_from(["phone", "workspace", "name", "language", "genre", "tags",
                                                      "opted_in", "followers", "last_active_at", "city", "x"]),
                                     _value, max_size=8), min_size=1, max_size=8))
async def test_no_jsonl_value_crashes_the_importer(db_url: str, uniq: str, tmp_path: Path,
                                                   objs: list[dict]) -> None:
    """JSON Lines can carry NUL, lone surrogates, NaN and nested values: each row is stored or rejected."""
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in objs) + "\n", encoding="utf-8")
    async with _asyncio_loop(), open_db(db_url, max_size=2) as db:
        summary = await import_contacts(db, path, workspace=f"js_{uniq}", rejects_path=tmp_path / "r.csv")
    assert summary.read == len(objs)
    assert summary.read == (summary.inserted + summary.updated + summary.unchanged + summary.collapsed
                            + summary.rejected_total)
    assert len(_read_csv(tmp_path / "r.csv")) == summary.rejected_total
