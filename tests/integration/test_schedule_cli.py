"""The campaign manager's commands through typer's CliRunner against the real database:
create --at/--every, plan, watch, retry-failed, list, report --csv/--html, scheduler tick."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import trio
from typer.testing import CliRunner

import broadcaster.commands.campaign_extra  # noqa: F401  (registers plan, watch, retry-failed, list)
from broadcaster.commands.campaign import app as campaign_app
from broadcaster.commands.scheduler import app as scheduler_app
from broadcaster.db import open_db
from broadcaster.schedule import zone
from tests.integration.factories import campaign_for

runner = CliRunner()
IST = zone("Asia/Kolkata")


def one_line(stream: str) -> str:
    """rich wraps long lines at the terminal width; compare the words."""
    return " ".join(stream.split())


def ok(app, *args: str, env: dict[str, str] | None = None) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output + result.stderr
    return result.stdout


def _draft(db_url: str, uniq: str, phones: list[str], *, failed: dict[int, int] | None = None) -> str:
    """A draft campaign over `phones` (its segment is seg_<uniq>); with `failed`, launched and that
    many recipients per error code moved to failed."""

    async def setup() -> str:
        async with open_db(db_url, max_size=2) as db:
            c = await campaign_for(db, uniq, phones)
            if failed:
                from broadcaster.campaigns import launch

                await launch(db, c.name)
                ids = [r["id"] for r in await db.fetch(
                    "SELECT id FROM ledger WHERE campaign_id = $1 ORDER BY id", c.id)]
                at = 0
                for code, n in failed.items():
                    await db.execute("UPDATE ledger SET state = 'failed', error_code = $2, failed_at = now()"
                                     " WHERE id = ANY($1::bigint[])", ids[at:at + n], code)
                    at += n
                await db.execute("UPDATE ledger SET state = 'accepted', accepted_at = now() WHERE campaign_id = $1"
                                 " AND state = 'pending'", c.id)
            return c.name

    return trio.run(setup)


def _fetch(db_url: str, sql: str, *args: object) -> list:
    async def q() -> list:
        async with open_db(db_url, max_size=1) as db:
            return [dict(r) for r in await db.fetch(sql, *args)]

    return trio.run(q)


def _create_args(uniq: str, name: str) -> list[str]:
    return ["create", name, "--segment", f"seg_{uniq}", "--template", "daily_campaign_invite",
            "--var", "1=contact.name", "--var", "2=contact.genre_label", "--var", "3=#MonsoonMasti",
            "--var", "4=9 PM", "--var", "button.0=contact.external_id", "--language", "hi"]


def test_create_at_in_the_workspace_zone_echoes_local_and_utc(db_url: str, uniq: str, phone_factory) -> None:
    _draft(db_url, uniq, [phone_factory()])
    day = (datetime.now(UTC) + timedelta(days=2)).astimezone(IST).date()
    out = one_line(ok(campaign_app, *_create_args(uniq, f"at_{uniq}"), "--at", f"{day} 10:00"))
    assert f"created campaign 'at_{uniq}' (scheduled)" in out
    assert f"launches at {day} 10:00 IST ({day} 04:30 UTC)" in out
    [row] = _fetch(db_url, "SELECT c.state, c.scheduled_at, s.next_run_at, s.timezone FROM campaigns c"
                           " JOIN schedules s ON s.campaign_id = c.id WHERE c.name = $1", f"at_{uniq}")
    expected = datetime(day.year, day.month, day.day, 4, 30, tzinfo=UTC)
    assert row == {"state": "scheduled", "scheduled_at": expected, "next_run_at": expected,
                   "timezone": "Asia/Kolkata"}


def test_create_every_lists_the_next_runs(db_url: str, uniq: str, phone_factory) -> None:
    _draft(db_url, uniq, [phone_factory()])
    out = one_line(ok(campaign_app, *_create_args(uniq, f"ev_{uniq}"), "--every", "30 18 * * mon-fri",
                      "--tz", "Europe/London"))
    assert f"created campaign 'ev_{uniq}' (recurring)" in out
    assert "every '30 18 * * mon-fri' in Europe/London; each run is a new campaign" in out
    assert out.count(" 18:30 GMT (") == 3


def test_pause_and_resume_a_series_from_the_cli(db_url: str, uniq: str, phone_factory) -> None:
    _draft(db_url, uniq, [phone_factory()])
    name = f"ser_{uniq}"
    ok(campaign_app, *_create_args(uniq, name), "--every", "0 10 * * *")
    out = one_line(ok(campaign_app, "pause", name))
    assert out == f"series '{name}' is paused: no new runs until `broadcaster campaign resume {name}` " \
                  "(runs already launched go on)"
    assert _fetch(db_url, "SELECT s.state FROM schedules s JOIN campaigns c ON c.id = s.campaign_id"
                          " WHERE c.name = $1", name) == [{"state": "paused"}]
    out = one_line(ok(campaign_app, "resume", name, env={"WHATSAPP_TOKEN": ""}))  # no token needed for a series
    assert out.startswith(f"series '{name}' is active again: every '0 10 * * *' Asia/Kolkata, next ")


def test_bad_schedule_options_exit_2_and_create_nothing(db_url: str, uniq: str, phone_factory) -> None:
    _draft(db_url, uniq, [phone_factory()])
    for extra, message in ((["--at", "2026-12-04 10:00", "--tz", "Mars/Base"], "error: --tz 'Mars/Base': unknown"),
                           (["--every", "0 10 * *"], "error: cron '0 10 * *': expected 5 fields"),
                           (["--at", "2020-01-01 10:00"], "error: --at '2020-01-01 10:00' is 2020-01-01 10:00 IST, "
                                                          "which has passed"),
                           (["--tz", "UTC"], "error: give either --at (one launch) or --every")):
        result = runner.invoke(campaign_app, [*_create_args(uniq, f"bad_{uniq}"), *extra])
        assert result.exit_code == 2, result.output + result.stderr
        assert one_line(result.stderr).startswith(message), result.stderr
    assert _fetch(db_url, "SELECT 1 FROM campaigns WHERE name = $1", f"bad_{uniq}") == []


def test_plan_text_and_json(db_url: str, uniq: str, phone_factory) -> None:
    name = _draft(db_url, uniq, [phone_factory() for _ in range(8)])
    number = {"WHATSAPP_PHONE_NUMBER_ID": "106540352242922", "COLUMNS": "200"}
    text = one_line(ok(campaign_app, "plan", name, env=number))
    assert f"plan for {name} (draft)" in text
    assert "audience 8 if launched now: 8 to send" in text
    assert "daily_campaign_invite / hi" in text and "pre-flight: ok" in text
    assert "finishes at" in text
    data = orjson.loads(ok(campaign_app, "plan", name, "--json", env=number))
    assert (data["to_send"], data["by_language"], data["frozen"], data["preflight_ok"]) == (8, {"hi": 8}, False, True)
    result = runner.invoke(campaign_app, ["plan", name])  # no sender number configured
    assert result.exit_code == 1, "a failed pre-flight is a failed plan, for scripts too"
    refused = one_line(result.stdout)
    assert (f"pre-flight: FAILED - no sender number: `broadcaster numbers add PHONE_NUMBER_ID --workspace "
            f"ws_{uniq}`, set WHATSAPP_PHONE_NUMBER_ID") in refused


def test_watch_once_shows_progress_and_top_errors(db_url: str, uniq: str, phone_factory) -> None:
    name = _draft(db_url, uniq, [phone_factory() for _ in range(10)], failed={131026: 3})
    out = one_line(ok(campaign_app, "watch", name, "--once"))
    assert f"{name} running" in out and "10/10 100%" in out
    assert "accepted 7" in out and "failed 3" in out
    assert "top errors: 131026 Message undeliverable ×3" in out


def test_retry_failed_creates_a_follow_up_for_exactly_those_recipients(db_url: str, uniq: str,
                                                                       phone_factory) -> None:
    name = _draft(db_url, uniq, [phone_factory() for _ in range(12)], failed={131000: 2, 131049: 3, 131026: 4})
    out = one_line(ok(campaign_app, "retry-failed", name, "--codes", "131000, 131049"))
    follow = f"{name}-retry-1"
    assert f"created '{follow}' for 5 recipients of '{name}'" in out
    assert f"`broadcaster campaign resume {follow}` sends it" in out
    wanted = _fetch(db_url, "SELECT wa_id FROM ledger l JOIN campaigns c ON c.id = l.campaign_id"
                            " WHERE c.name = $1 AND l.error_code IN (131000, 131049)", name)
    got = _fetch(db_url, "SELECT l.wa_id, l.state FROM ledger l JOIN campaigns c ON c.id = l.campaign_id"
                         " WHERE c.name = $1", follow)
    assert sorted(r["wa_id"] for r in got) == sorted(r["wa_id"] for r in wanted)
    assert {r["state"] for r in got} == {"pending"}
    [c] = _fetch(db_url, "SELECT state, pause_reason FROM campaigns WHERE name = $1", follow)
    assert c == {"state": "paused", "pause_reason": "retry_ready"}

    none = runner.invoke(campaign_app, ["retry-failed", name, "--codes", "132000"])
    assert none.exit_code == 2
    assert one_line(none.stderr) == (f"error: campaign '{name}' has no failed recipients with code(s) 132000; "
                                     "its failures: 131026×4, 131049×3, 131000×2")
    bad = runner.invoke(campaign_app, ["retry-failed", name, "--codes", "1310x"])
    assert bad.exit_code == 2 and "'1310x' is not an error code" in one_line(bad.stderr)


def test_list_shows_progress_and_schedule(db_url: str, uniq: str, phone_factory) -> None:
    name = _draft(db_url, uniq, [phone_factory() for _ in range(10)], failed={131026: 3})
    day = (datetime.now(UTC) + timedelta(days=2)).astimezone(IST).date()
    ok(campaign_app, *_create_args(uniq, f"at_{uniq}"), "--at", f"{day} 10:00")
    result = runner.invoke(campaign_app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 3}
    assert "10/10 100%" in lines[name] and "running" in lines[name]
    assert f"at {day} 10:00 IST" in lines[f"at_{uniq}"] and "scheduled" in lines[f"at_{uniq}"]


def test_report_json_csv_html_agree(db_url: str, uniq: str, phone_factory, tmp_path: Path) -> None:
    name = _draft(db_url, uniq, [phone_factory() for _ in range(10)], failed={131026: 3, 131049: 1})
    csv_path, html_path = tmp_path / "r.csv", tmp_path / "r.html"
    report = orjson.loads(ok(campaign_app, "report", name, "--json", "--csv", str(csv_path), "--html", str(html_path),
                             "--mask-numbers"))
    rows = list(csv.DictReader(csv_path.open(newline="")))
    assert len(rows) == report["funnel"]["audience"] == 10
    assert Counter(r["state"] for r in rows) == {"accepted": 6, "failed": 4}
    assert {f["code"]: f["n"] for f in report["failures"]} == {131026: 3, 131049: 1}
    assert all(r["wa_id"].startswith("********") for r in rows)
    page = html_path.read_text()
    assert 'data-metric="failed">4<' in page and 'data-metric="accepted">6<' in page
    text = one_line(ok(campaign_app, "report", name))
    assert "131026 │ Message undeliverable │ 3" in text
    assert "failed │ 4 │ 40.0%" in text


def test_scheduler_tick_fires_a_due_one_off(db_url: str, uniq: str, phone_factory) -> None:
    _draft(db_url, uniq, [phone_factory() for _ in range(3)])
    day = (datetime.now(UTC) + timedelta(days=2)).astimezone(IST).date()
    ok(campaign_app, *_create_args(uniq, f"at_{uniq}"), "--at", f"{day} 10:00")
    slot = datetime(day.year, day.month, day.day, 4, 30, tzinfo=UTC)
    early = ok(scheduler_app, "tick", "--now", (slot - timedelta(seconds=1)).isoformat())
    assert f"at_{uniq}" not in early
    out = one_line(ok(scheduler_app, "tick", "--now", slot.isoformat()))
    assert f"at_{uniq}: launched 'at_{uniq}' for {slot:%Y-%m-%d %H:%M} UTC (3 recipients frozen)" in out
    bad = runner.invoke(scheduler_app, ["tick", "--now", "2026-12-04 10:00"])
    assert bad.exit_code == 2 and "expected an ISO time with offset" in one_line(bad.stderr)
