"""Schedules against the real database: firing once, late, never twice, and fresh audiences per run."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from broadcaster.campaigns import cancel, create_campaign, get_campaign, launch
from broadcaster.db import Database, open_db
from broadcaster.errors import StateError, UsageError
from broadcaster.ledger import LedgerStore
from broadcaster.schedule import (
    ScheduleRequest,
    get_schedule,
    next_due,
    request_schedule,
    run_name,
    run_scheduler,
    schedule_campaign,
    tick,
    zone,
)
from tests.integration.factories import add_contacts, campaign_for

ROOT = Path(__file__).resolve().parents[2]
IST = zone("Asia/Kolkata")


def _future_ist(days: int = 2, hour: int = 10) -> tuple[str, datetime]:
    """A wall time `days` ahead in IST, as typed ('YYYY-MM-DD 10:00') and as the UTC instant."""
    day = (datetime.now(UTC) + timedelta(days=days)).astimezone(IST).date()
    instant = datetime(day.year, day.month, day.day, hour, 0, tzinfo=IST).astimezone(UTC)
    return f"{day:%Y-%m-%d} {hour:02d}:00", instant


async def _once(db: Database, uniq: str, phones: list[str]) -> tuple[str, datetime]:
    campaign = await campaign_for(db, uniq, phones)
    text, instant = _future_ist()
    req = request_schedule(at=text, every=None, tz_name="Asia/Kolkata", now=datetime.now(UTC))
    sched = await schedule_campaign(db, campaign.name, req)
    assert sched.next_run_at == instant and sched.kind == "once"
    return campaign.name, instant


async def _every(db: Database, uniq: str, phones: list[str], cron: str = "0 10 * * *") -> tuple[str, datetime]:
    campaign = await campaign_for(db, uniq, phones)
    req = request_schedule(at=None, every=cron, tz_name="Asia/Kolkata", now=datetime.now(UTC))
    sched = await schedule_campaign(db, campaign.name, req)
    assert (await get_campaign(db, campaign.name)).state == "recurring"
    assert sched.next_run_at is not None
    return campaign.name, sched.next_run_at


async def _runs(db: Database, series: str) -> list[tuple[datetime, str, int]]:
    rows = await db.fetch(
        "SELECT r.slot, k.name, (SELECT count(*) FROM ledger l WHERE l.campaign_id = k.id) AS n"
        " FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id JOIN campaigns d ON d.id = s.campaign_id"
        " JOIN campaigns k ON k.id = r.campaign_id WHERE d.name = $1 ORDER BY r.slot", series)
    return [(r["slot"], r["name"], r["n"]) for r in rows]


async def test_one_off_fires_at_its_slot_and_only_once(db: Database, uniq: str, phone_factory) -> None:
    phones = [phone_factory() for _ in range(5)]
    name, slot = await _once(db, uniq, phones)
    assert (await get_campaign(db, name)).state == "scheduled"

    assert [f for f in await tick(db, slot - timedelta(seconds=1)) if f.campaign == name] == []
    fired = [f for f in await tick(db, slot) if f.campaign == name]
    assert [(f.outcome, f.run, f.frozen_rows) for f in fired] == [("started", name, 5)]
    assert (await get_campaign(db, name)).state == "running"
    assert (await LedgerStore(db).counts((await get_campaign(db, name)).id)).audience == 5
    assert [f for f in await tick(db, slot + timedelta(minutes=5)) if f.campaign == name] == []
    sched = await get_schedule(db, name)
    assert (sched.state, sched.next_run_at, sched.runs, sched.last_slot_at) == ("done", None, 1, slot)


async def test_recurring_run_picks_up_a_contact_added_between_runs(db: Database, uniq: str,
                                                                   phone_factory) -> None:
    phones = [phone_factory() for _ in range(4)]
    series, first = await _every(db, uniq, phones)
    fired = [f for f in await tick(db, first + timedelta(seconds=20)) if f.campaign == series]
    assert [(f.outcome, f.run) for f in fired] == [("started", run_name(series, first, IST))]

    await add_contacts(db, f"ws_{uniq}", [phone_factory()])  # a new creator joins the segment
    second = first + timedelta(days=1)
    assert (await get_schedule(db, series)).next_run_at == second
    fired = [f for f in await tick(db, second + timedelta(seconds=5)) if f.campaign == series]
    assert [f.outcome for f in fired] == ["started"]

    runs = await _runs(db, series)
    assert [(slot, n) for slot, _, n in runs] == [(first, 4), (second, 5)]
    assert [(await get_campaign(db, r)).state for _, r, _ in runs] == ["running", "running"]
    assert (await get_campaign(db, series)).state == "recurring"  # the definition is never sent
    assert (await get_schedule(db, series)).runs == 2


async def test_two_tickers_at_once_start_one_run(db: Database, db_url: str, uniq: str, phone_factory) -> None:
    series, first = await _every(db, uniq, [phone_factory() for _ in range(50)])
    results: list[list] = []

    async def ticker() -> None:
        async with open_db(db_url, max_size=4) as other:
            results.append([f for f in await tick(other, first + timedelta(seconds=1)) if f.campaign == series])

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(ticker)
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    runs = await _runs(db, series)
    assert [(slot, n) for slot, _, n in runs] == [(first, 50)]


async def test_a_schedule_being_fired_is_passed_over(db: Database, uniq: str, phone_factory) -> None:
    """While one ticker holds a slot (row lock), another tick neither waits nor fires it."""
    name, slot = await _once(db, uniq, [phone_factory()])
    async with db.transaction() as conn:
        await conn.execute("SELECT 1 FROM schedules s JOIN campaigns c ON c.id = s.campaign_id"
                           " WHERE c.name = $1 FOR NO KEY UPDATE OF s", name)
        with trio.fail_after(10):
            assert [f for f in await tick(db, slot) if f.campaign == name] == []
    assert [f.outcome for f in await tick(db, slot) if f.campaign == name] == ["started"]


async def test_two_tick_processes_started_together_start_one_run(db: Database, uniq: str,
                                                                 phone_factory) -> None:
    series, first = await _every(db, uniq, [phone_factory() for _ in range(200)])
    due = datetime.now(UTC) - timedelta(seconds=30)  # make it due now, within the horizon
    await db.execute("UPDATE schedules s SET next_run_at = $2 FROM campaigns c"
                     " WHERE c.id = s.campaign_id AND c.name = $1", series, due)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "broadcaster.commands.scheduler", "tick"]
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def one() -> None:
        done.append(await trio.run_process(cmd, env=env, cwd=ROOT, capture_stdout=True, capture_stderr=True,
                                           check=False))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
    outs = [(p.stdout.decode(), p.stderr.decode()) for p in done]
    assert [p.returncode for p in done] == [0, 0], outs
    launched = [o for o, _ in outs if f"{series}: launched" in o]
    assert len(launched) == 1, outs
    runs = await _runs(db, series)
    assert len(runs) == 1 and runs[0][2] == 200


async def test_missed_slots_start_late_once(db: Database, uniq: str, phone_factory, caplog) -> None:
    series, first = await _every(db, uniq, [phone_factory() for _ in range(3)])
    # everything was down for three days; the ticker comes back 40 minutes after the fourth slot
    now = first + timedelta(days=3, minutes=40)
    fired = [f for f in await tick(db, now) if f.campaign == series]
    assert [(f.outcome, f.slot, f.skipped_slots) for f in fired] == [("started", first + timedelta(days=3), 3)]
    assert fired[0].late_s == pytest.approx(40 * 60)
    assert "schedule_late" in caplog.text and "schedule_skipped" in caplog.text
    assert (await get_schedule(db, series)).next_run_at == first + timedelta(days=4)
    assert [f for f in await tick(db, now + timedelta(minutes=1)) if f.campaign == series] == []
    assert len(await _runs(db, series)) == 1


async def test_missed_beyond_the_horizon_is_not_started(db: Database, uniq: str, phone_factory) -> None:
    name, slot = await _once(db, uniq, [phone_factory()])
    fired = [f for f in await tick(db, slot + timedelta(hours=3), horizon_s=7200) if f.campaign == name]
    assert [f.outcome for f in fired] == ["missed"]
    sched = await get_schedule(db, name)
    assert sched.state == "missed" and sched.next_run_at is None
    assert sched.last_error is not None and sched.last_error.startswith("slot ")
    assert (await get_campaign(db, name)).state == "scheduled"  # a manager may still launch it by hand

    series, first = await _every(db, f"{uniq}b", [phone_factory()])
    now = first + timedelta(hours=5)
    fired = [f for f in await tick(db, now, horizon_s=3600) if f.campaign == series]
    assert [f.outcome for f in fired] == ["missed"]
    sched = await get_schedule(db, series)
    assert sched.state == "active" and sched.next_run_at == first + timedelta(days=1)
    assert await _runs(db, series) == []


async def test_cancelling_the_campaign_stops_its_schedule(db: Database, uniq: str, phone_factory) -> None:
    series, first = await _every(db, uniq, [phone_factory()])
    await cancel(db, series)
    fired = [f for f in await tick(db, first) if f.campaign == series]
    assert [f.outcome for f in fired] == ["cancelled"]
    assert (await get_schedule(db, series)).state == "cancelled"
    assert await _runs(db, series) == []


async def test_interrupted_firing_reuses_its_draft_run(db: Database, uniq: str, phone_factory) -> None:
    """A ticker died after creating the slot's campaign, before recording it: the next adopts it."""
    series, first = await _every(db, uniq, [phone_factory() for _ in range(2)])
    definition = await get_campaign(db, series)
    left_behind = await create_campaign(db, run_name(series, first, IST), segment=definition.segment,
                                        template=definition.template_name, variables=definition.variables,
                                        default_language=definition.default_language)
    fired = [f for f in await tick(db, first) if f.campaign == series]
    assert [(f.outcome, f.run) for f in fired] == [("started", left_behind.name)]
    assert [n for _, _, n in await _runs(db, series)] == [2]


async def test_a_draft_with_the_runs_name_but_another_template_is_not_adopted(
        db: Database, uniq: str, phone_factory) -> None:
    series, first = await _every(db, uniq, [phone_factory() for _ in range(2)])
    definition = await get_campaign(db, series)
    assert definition.template_name != "creator_tips_update"
    stranger = await create_campaign(db, run_name(series, first, IST), segment=definition.segment,
                                     template="creator_tips_update",
                                     variables={"first_name": "contact.name",
                                                "tip_link": "https://creators.example.in/handbook/views"},
                                     default_language="hi")
    fired = [f for f in await tick(db, first) if f.campaign == series]
    assert [f.outcome for f in fired] == ["failed"]
    assert "is taken by another campaign" in (fired[0].error or "")
    assert (await get_campaign(db, stranger.name)).state == "draft"  # not launched under the series


async def test_a_recurring_series_itself_cannot_be_launched(db: Database, uniq: str, phone_factory) -> None:
    series, _ = await _every(db, uniq, [phone_factory()])
    with pytest.raises(StateError, match="is a recurring series: the scheduler launches one campaign per slot"):
        await launch(db, series)
    assert (await get_campaign(db, series)).state == "recurring"


async def test_a_paused_series_fires_nothing_and_resumes_from_its_next_slot(
        db: Database, uniq: str, phone_factory) -> None:
    from broadcaster.schedule import pause_series, resume_series

    series, first = await _every(db, uniq, [phone_factory()])
    paused = await pause_series(db, series)
    assert paused.state == "paused" and paused.describe().endswith("(paused)")
    with pytest.raises(StateError, match="is paused, not active: nothing to pause"):
        await pause_series(db, series)
    assert [f for f in await tick(db, first + timedelta(days=2)) if f.campaign == series] == []
    resumed = await resume_series(db, series, now=first + timedelta(days=2, hours=1))
    assert (resumed.state, resumed.next_run_at) == ("active", first + timedelta(days=3))  # paused-over slots skipped
    with pytest.raises(StateError, match="is active, not paused: nothing to resume"):
        await resume_series(db, series)
    fired = [f for f in await tick(db, first + timedelta(days=3)) if f.campaign == series]
    assert [f.outcome for f in fired] == ["started"]
    assert [n for _, _, n in await _runs(db, series)] == [1]


async def test_a_failed_firing_is_recorded_and_the_series_goes_on(db: Database, uniq: str,
                                                                  phone_factory) -> None:
    series, first = await _every(db, uniq, [phone_factory()])
    definition = await get_campaign(db, series)
    squatter = await create_campaign(db, run_name(series, first, IST), segment=definition.segment,
                                     template=definition.template_name, variables=definition.variables,
                                     default_language=definition.default_language)
    await launch(db, squatter.name)  # not a draft: cannot be adopted
    fired = [f for f in await tick(db, first) if f.campaign == series]
    assert [f.outcome for f in fired] == ["failed"]
    assert fired[0].error is not None and "is taken by another campaign" in fired[0].error
    sched = await get_schedule(db, series)
    assert sched.state == "active" and sched.next_run_at == first + timedelta(days=1)
    assert sched.last_error == fired[0].error


async def test_only_drafts_can_be_scheduled(db: Database, uniq: str, phone_factory) -> None:
    name, _ = await _once(db, uniq, [phone_factory()])
    req = ScheduleRequest("once", "Asia/Kolkata", datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(Exception, match=rf"^campaign '{name}' is scheduled, not draft: only a draft"):
        await schedule_campaign(db, name, req)


async def test_scheduler_run_fires_due_slots_on_its_first_pass(db: Database, uniq: str, phone_factory) -> None:
    name, slot = await _once(db, uniq, [phone_factory()])
    fired: list = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_scheduler(
            db, clock=lambda: slot + timedelta(seconds=2), on_firing=fired.append, task_status=task_status))
        nursery.cancel_scope.cancel()
    assert [(f.campaign, f.outcome) for f in fired if f.campaign == name] == [(name, "started")]
    due = await next_due(db)
    assert due is None or due != slot


_CREATE = """
import sys
from datetime import UTC, datetime
import trio
from broadcaster.db import open_db
from broadcaster.schedule import request_schedule, schedule_campaign

async def main() -> None:
    async with open_db() as db:
        req = request_schedule(at=sys.argv[2], every=None, tz_name="Asia/Kolkata", now=datetime.now(UTC))
        print((await schedule_campaign(db, sys.argv[1], req)).next_run_at.isoformat())

trio.run(main)
"""


async def _in_tz(tz: str, *args: str) -> str:
    env = {**os.environ, "TZ": tz,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, *args], env=env, cwd=ROOT, capture_stdout=True,
                                      capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_ist_slot_is_the_same_instant_under_any_process_tz(db: Database, uniq: str, phone_factory) -> None:
    """Created and fired under TZ=America/New_York, not fired a second early under UTC or NY."""
    campaign = await campaign_for(db, uniq, [phone_factory()])
    text, instant = _future_ist(days=3)
    stored = await _in_tz("America/New_York", "-c", _CREATE, campaign.name, text)
    assert stored.strip() == instant.isoformat()  # 04:30 UTC
    tick_cmd = ("-m", "broadcaster.commands.scheduler", "tick", "--now")
    before = (instant - timedelta(seconds=1)).isoformat()
    for tz in ("UTC", "America/New_York"):
        assert campaign.name not in await _in_tz(tz, *tick_cmd, before)
    assert (await get_campaign(db, campaign.name)).state == "scheduled"
    out = await _in_tz("America/New_York", *tick_cmd, instant.isoformat())
    assert f"{campaign.name}: launched '{campaign.name}' for {instant:%Y-%m-%d %H:%M} UTC" in out
    assert (await get_campaign(db, campaign.name)).state == "running"


async def test_retry_follow_up_sends_exactly_the_failed_recipients(db: Database, db_url: str, sandbox: object,
                                                                   uniq: str, phone_factory) -> None:
    from broadcaster.campaigns import resume
    from broadcaster.schedule import create_retry
    from tests.integration.factories import run_campaign, settings_for

    phones = [phone_factory() for _ in range(20)]
    campaign = await campaign_for(db, uniq, phones)
    await launch(db, campaign.name)
    ids = [r["id"] for r in await db.fetch("SELECT id FROM ledger WHERE campaign_id = $1 ORDER BY id", campaign.id)]
    for rid, code in zip(ids[:7], [131000] * 3 + [131049] * 2 + [131026] * 2, strict=True):
        await db.execute("UPDATE ledger SET state = 'failed', error_code = $2, failed_at = now() WHERE id = $1",
                         rid, code)
    await db.execute("UPDATE ledger SET state = 'accepted', accepted_at = now() WHERE campaign_id = $1"
                     " AND state = 'pending'", campaign.id)
    opted_out = await db.fetchval("SELECT wa_id FROM ledger WHERE id = $1", ids[0])
    await db.execute("UPDATE contacts SET marketing_opt_in = false WHERE wa_id = $1", opted_out)

    retry = await create_retry(db, campaign.name, [131000, 131049])
    assert retry.campaign.name == f"{campaign.name}-retry-1"
    assert (retry.to_send, retry.skipped) == (4, {"opted_out": 1})
    assert (retry.campaign.state, retry.campaign.pause_reason) == ("paused", "retry_ready")
    expected = {r["wa_id"] for r in await db.fetch(
        "SELECT wa_id FROM ledger WHERE id = ANY($1::bigint[])", ids[1:5])}

    follow = await resume(db, retry.campaign.name)
    await run_campaign(db, settings_for(db_url, sandbox), follow)
    rows = await db.fetch("SELECT wa_id, state FROM ledger WHERE campaign_id = $1", follow.id)
    assert {r["wa_id"] for r in rows if r["state"] == "accepted"} == expected
    assert {r["wa_id"] for r in rows if r["state"] == "skipped"} == {opted_out}
    assert (await get_campaign(db, follow.name)).state == "completed"
    second = await create_retry(db, campaign.name, [131026], new_name=None)
    assert second.campaign.name == f"{campaign.name}-retry-2" and second.to_send == 2

    # the same codes again: everyone is already in retry-1 (resumed, so its pause detail is gone)
    with pytest.raises(UsageError, match=rf"already in an earlier retry \({campaign.name}-retry-2, "
                                         rf"{campaign.name}-retry-1\)"):
        await create_retry(db, campaign.name, [131000, 131049])
    # overlapping codes: only the recipients no retry holds yet
    await db.execute("UPDATE ledger SET state = 'failed', error_code = 131000, failed_at = now() WHERE id = $1",
                     ids[7])
    third = await create_retry(db, campaign.name, [131000, 131026])
    rows = await db.fetch("SELECT wa_id FROM ledger WHERE campaign_id = $1", third.campaign.id)
    assert [r["wa_id"] for r in rows] == [await db.fetchval("SELECT wa_id FROM ledger WHERE id = $1", ids[7])]
