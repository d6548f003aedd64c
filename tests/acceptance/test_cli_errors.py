"""The `broadcaster` CLI in a subprocess: bad input gets one clear line, the right exit code, and
nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "BROADCASTER_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def migrated(db_url: str) -> str:
    return db_url


def test_migrate_twice_reports_up_to_date(migrated: str) -> None:
    first = cli("db", "migrate")
    assert first.returncode == 0, first.stderr
    second = cli("db", "migrate")
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout


def test_unknown_segment_exits_1_and_writes_nothing(migrated: str, uniq: str) -> None:
    r = cli("templates", "import", str(ROOT / "examples" / "message_templates.json"))
    assert r.returncode == 0, r.stderr
    r = cli("campaign", "create", f"c_{uniq}", "--segment", f"nope_{uniq}", "--template", "daily_campaign_invite")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: segment 'nope_{uniq}' does not exist"), r.stderr
    assert "Traceback" not in r.stderr
    listed = cli("campaign", "list")
    assert f"c_{uniq}" not in listed.stdout


def test_unknown_template_exits_1(migrated: str, uniq: str) -> None:
    assert cli("contacts", "import", str(ROOT / "examples" / "contacts_sample.csv")).returncode == 0
    r = cli("segments", "create", f"s_{uniq}", "--workspace", "originals", "--genre", "comedy")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("campaign", "create", f"c_{uniq}", "--segment", f"s_{uniq}", "--template", f"nope_{uniq}")
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: template 'nope_{uniq}' is not in the registry"), r.stderr


def test_missing_required_option_is_usage_error_2(migrated: str) -> None:
    r = cli("campaign", "create", "x", "--template", "daily_campaign_invite")
    assert r.returncode == 2
    assert "--segment" in r.stderr


def test_malformed_var_is_usage_error_2(migrated: str, uniq: str) -> None:
    r = cli("campaign", "create", f"c_{uniq}", "--segment", "s", "--template", "t", "--var", "novalue")
    assert r.returncode == 2
    assert "--var 'novalue': expected KEY=VALUE" in r.stderr


def test_launch_without_sender_number_names_the_variable_and_freezes_nothing(migrated: str, uniq: str) -> None:
    ws = f"w_{uniq}"
    csv = ROOT / "examples" / "contacts_sample.csv"
    assert cli("contacts", "import", str(csv), "--workspace", ws).returncode == 0
    assert cli("templates", "import", str(ROOT / "examples" / "message_templates.json")).returncode == 0
    assert cli("segments", "create", f"s_{uniq}", "--workspace", "originals").returncode == 0
    r = cli("campaign", "create", f"c_{uniq}", "--segment", f"s_{uniq}", "--template", "creator_tips_update",
            "--var", "first_name=contact.first_name", "--var", "tip_link=https://creators.example.in/handbook/views")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("campaign", "launch", f"c_{uniq}")
    assert r.returncode == 1
    assert "WHATSAPP_PHONE_NUMBER_ID" in r.stderr
    status = cli("campaign", "status", f"c_{uniq}")
    assert "draft" in status.stdout, status.stdout


def _workspace(tmp_path: Path, name: str) -> None:
    """A workspace exists once contacts were imported into it."""
    csv = tmp_path / f"{name}.csv"
    csv.write_text("phone,name,genre,language\n9800000004,Asha,comedy,hi\n", encoding="utf-8")
    r = cli("contacts", "import", str(csv), "--workspace", name)
    assert r.returncode == 0, r.stdout + r.stderr


def test_numbers_add_refuses_an_unknown_workspace_and_what_is_not_a_phone_number_id(
        migrated: str, uniq: str, tmp_path: Path) -> None:
    ws = f"w_{uniq}"
    _workspace(tmp_path, ws)
    r = cli("numbers", "add", "123456789012345", "--workspace", f"{ws}x")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: workspace '{ws}x' does not exist (did you mean '{ws}'?)"), r.stderr
    for bad, message in (("", "error: PHONE_NUMBER_ID is empty"),
                         ("   ", "error: PHONE_NUMBER_ID is empty"),
                         ("+91 98765 43210", "error: PHONE_NUMBER_ID '+91 98765 43210' is not a phone_number_id "
                                             "(5-25 digits) — that looks like the phone number itself")):
        r = cli("numbers", "add", bad, "--workspace", ws)
        assert r.returncode == 2, (bad, r.stdout + r.stderr)
        assert " ".join(r.stderr.split()).startswith(message), r.stderr
    listed = cli("numbers", "list").stdout
    assert ws not in listed and f"{ws}x" not in listed, "nothing was stored"
    workspaces = cli("segments", "create", f"s_{uniq}", "--workspace", f"{ws}x")
    assert workspaces.returncode == 1, "no workspace was created by the refused number"


def test_campaign_numbers_must_be_configured_for_the_campaigns_workspace(
        migrated: str, uniq: str, tmp_path: Path) -> None:
    ws, other = f"w_{uniq}", f"o_{uniq}"
    _workspace(tmp_path, ws)
    _workspace(tmp_path, other)
    assert cli("templates", "import", str(ROOT / "examples" / "message_templates.json")).returncode == 0
    assert cli("segments", "create", f"s_{uniq}", "--workspace", ws).returncode == 0
    assert cli("numbers", "add", f"55{int(uniq[1:], 16) % 10**10:010d}", "--workspace", other).returncode == 0
    base = ("campaign", "create", f"c_{uniq}", "--segment", f"s_{uniq}", "--template", "creator_tips_update",
            "--var", "first_name=contact.first_name", "--var", "tip_link=https://creators.example.in/h")
    r = cli(*base, "--number", "5550001234567")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("error: --number 5550001234567 is not configured: `broadcaster numbers add "
                               f"5550001234567 --workspace {ws}` first"), r.stderr
    r = cli(*base, "--number", f"55{int(uniq[1:], 16) % 10**10:010d}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"belongs to workspace '{other}', the campaign's segment to '{ws}'" in r.stderr
    assert f"c_{uniq}" not in cli("campaign", "list").stdout
    # the deployment's default number needs no registration
    r = cli(*base, "--number", "106540352242922", env={"WHATSAPP_PHONE_NUMBER_ID": "106540352242922"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unmigrated_or_missing_database_says_to_migrate(db_url: str, uniq: str) -> None:
    import trio

    from broadcaster.db import open_db

    base = db_url.rsplit("/", 1)[0]
    empty = f"empty_{uniq}"

    async def admin(sql: str) -> None:
        async with open_db(f"{base}/postgres", max_size=1) as db:
            await db.execute(sql)

    trio.run(admin, f'CREATE DATABASE "{empty}"')
    try:
        for dbname in (empty, f"missing_{uniq}"):
            r = cli("campaign", "list", env={"DATABASE_URL": f"{base}/{dbname}"})
            assert r.returncode == 1, r.stdout + r.stderr
            assert "broadcaster db migrate" in r.stderr, r.stderr
    finally:
        trio.run(admin, f'DROP DATABASE "{empty}" WITH (FORCE)')


@pytest.mark.parametrize("name", ["", "  spaced name ", "x" * 101, ".dot-first", "semi;colon"])
def test_a_campaign_name_that_scripts_cannot_use_is_refused(migrated: str, name: str) -> None:
    r = cli("campaign", "create", name, "--segment", "s", "--template", "t")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is not allowed: use 1-100 letters, digits" in r.stderr


def test_a_negative_unknown_grace_is_refused(migrated: str, uniq: str) -> None:
    r = cli("campaign", "create", f"c_{uniq}", "--segment", "s", "--template", "t", "--unknown-grace", "-5")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--unknown-grace must be 0 to 604800 seconds" in r.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("[]", "no templates in the file"),
    ('{"data": []}', "no templates in the file"),
    ('"hello"', "expected an object with 'data' or a list, got a string"),
])
def test_a_templates_file_with_nothing_to_import_exits_1(migrated: str, tmp_path: Path, content: str,
                                                          message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content, encoding="utf-8")
    r = cli("templates", "import", str(path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr and "t.json" in r.stderr


@pytest.mark.parametrize(("age", "message"), [("30x", "expected a number of hours, days or weeks"),
                                              ("3d", "must be at least 7 days")])
def test_db_prune_refuses_a_bad_or_too_short_age(migrated: str, age: str, message: str) -> None:
    r = cli("db", "prune", "--older-than", age)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: --older-than") and message in r.stderr and "Traceback" not in r.stderr


def test_retry_failed_refuses_a_name_scripts_cannot_use(migrated: str) -> None:
    r = cli("campaign", "retry-failed", "anything", "--codes", "131000", "--name", "bad name!")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "campaign name 'bad name!' is not allowed" in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "0", "2000"])
def test_guards_window_out_of_range_is_a_usage_error(migrated: str, value: str) -> None:
    r = cli("health", "guards", "set", "--workspace", "originals", "--window-min", value)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the window must be 0.17 to 1440 minutes" in r.stderr and "Traceback" not in r.stderr
