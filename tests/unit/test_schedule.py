"""Schedule requests: zones, `--at` parsing, `--every` first slot (pure parts of broadcaster.schedule)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broadcaster.cron import CronError
from broadcaster.errors import UsageError
from broadcaster.schedule import format_local, parse_at, request_schedule, run_name, zone

IST = ZoneInfo("Asia/Kolkata")
NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def test_wall_time_in_ist_is_stored_as_utc() -> None:
    assert parse_at("2026-12-04 10:00", IST) == datetime(2026, 12, 4, 4, 30, tzinfo=UTC)
    assert parse_at("2026-12-04T10:00:30", IST) == datetime(2026, 12, 4, 4, 30, 30, tzinfo=UTC)


def test_an_explicit_offset_wins_over_the_zone() -> None:
    assert parse_at("2026-12-04T10:00+05:30", NY) == datetime(2026, 12, 4, 4, 30, tzinfo=UTC)
    assert parse_at("2026-12-04T04:30Z", NY) == datetime(2026, 12, 4, 4, 30, tzinfo=UTC)


@pytest.mark.parametrize(("text", "message"), [
    ("tomorrow 10am", r"^--at 'tomorrow 10am': expected a date and time like '2026-12-04 10:00'"),
    ("2026-12-04", r"^--at '2026-12-04': give a time too, e.g. '2026-12-04 10:00'$"),
    ("2026-13-04 10:00", r"^--at '2026-13-04 10:00': expected a date and time"),
])
def test_bad_at_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_at(text, IST)


def test_wall_time_skipped_by_dst_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^--at '2026-03-08 02:30' does not exist in America/New_York: "
                                         r"clocks jump forward"):
        parse_at("2026-03-08 02:30", NY)


def test_repeated_wall_time_means_the_first() -> None:
    assert parse_at("2026-11-01 01:30", NY) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # EDT


def test_unknown_zone_names_the_option() -> None:
    with pytest.raises(UsageError, match=r"^--tz 'Asia/Kolkatta': unknown time zone; use an IANA name"):
        zone("Asia/Kolkatta")
    with pytest.raises(UsageError, match=r"^--tz '': unknown time zone"):
        zone("")
    assert zone("Asia/Calcutta").utcoffset(datetime(2026, 1, 1)) == IST.utcoffset(datetime(2026, 1, 1))


def test_request_once_and_every() -> None:
    once = request_schedule(at="2026-12-04 10:00", every=None, tz_name="Asia/Kolkata", now=NOW)
    assert (once.kind, once.first_run_at, once.cron) == ("once", datetime(2026, 12, 4, 4, 30, tzinfo=UTC), None)
    assert once.describe() == "at 2026-12-04 10:00 IST (2026-12-04 04:30 UTC)"
    every = request_schedule(at=None, every="0 10 * * *", tz_name="Asia/Kolkata", now=NOW)
    assert every.kind == "every" and every.first_run_at == datetime(2026, 12, 4, 4, 30, tzinfo=UTC)
    assert every.describe() == ("every '0 10 * * *' in Asia/Kolkata, first run 2026-12-04 10:00 IST "
                                "(2026-12-04 04:30 UTC)")


def test_request_refuses_both_neither_past_and_bad_cron() -> None:
    with pytest.raises(UsageError, match=r"^give either --at \(one launch\) or --every"):
        request_schedule(at="2026-12-04 10:00", every="0 10 * * *", tz_name="UTC", now=NOW)
    with pytest.raises(UsageError, match=r"^give either --at"):
        request_schedule(at=None, every=None, tz_name="UTC", now=NOW)
    with pytest.raises(UsageError, match=r"^--at '2026-12-03 10:00' is 2026-12-03 10:00 IST, which has passed "
                                         r"\(now 2026-12-03 17:30 IST\)"):
        request_schedule(at="2026-12-03 10:00", every=None, tz_name="Asia/Kolkata", now=NOW)
    with pytest.raises(CronError, match=r"^cron '0 10 \* \*': expected 5 fields"):
        request_schedule(at=None, every="0 10 * *", tz_name="UTC", now=NOW)


def test_run_names_use_local_wall_time() -> None:
    slot = datetime(2026, 12, 4, 4, 30, tzinfo=UTC)
    assert run_name("daily_invite", slot, IST) == "daily_invite-20261204-1000"
    assert format_local(slot, NY) == "2026-12-03 23:30 EST"


_PROBE = """
import time
from datetime import datetime, UTC
from zoneinfo import ZoneInfo
time.tzset()
from broadcaster.schedule import request_schedule
from broadcaster.cron import parse_cron
now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
once = request_schedule(at="2026-12-04 10:00", every=None, tz_name="Asia/Kolkata", now=now)
every = request_schedule(at=None, every="0 10 * * *", tz_name="Asia/Kolkata", now=now)
later = parse_cron("0 10 * * *").upcoming(every.first_run_at, ZoneInfo("Asia/Kolkata"), 3)
print(time.strftime("%Z"), once.first_run_at.isoformat(), every.first_run_at.isoformat(),
      *[t.isoformat() for t in later])
"""


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Tokyo"])
def test_ist_schedule_is_the_same_instant_whatever_the_process_tz(tz: str) -> None:
    """The process TZ must not matter: run the parsing and cron evaluation in a child with TZ set."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TZ": tz, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=60).stdout.split()
    zone_abbr, *instants = out
    assert zone_abbr == {"UTC": "UTC", "America/New_York": "EST", "Asia/Tokyo": "JST"}[tz]  # TZ took effect
    assert instants == ["2026-12-04T04:30:00+00:00", "2026-12-04T04:30:00+00:00",
                        "2026-12-05T04:30:00+00:00", "2026-12-06T04:30:00+00:00", "2026-12-07T04:30:00+00:00"]


def test_schedule_code_never_reads_the_process_clock_zone() -> None:
    """No naive now/local-time calls in the modules that compute schedule instants."""
    banned = ("datetime.now()", "datetime.utcnow", ".astimezone()", "time.localtime", "fromtimestamp(",
              "time.mktime", "datetime.today")
    for rel in ("broadcaster/cron.py", "broadcaster/schedule.py", "broadcaster/plan.py"):
        path = ROOT / rel
        if not path.exists():
            continue
        text = path.read_text()
        found = [b for b in banned if b in text]
        assert not found, f"{rel} uses {found}: pass aware datetimes and explicit zones"
