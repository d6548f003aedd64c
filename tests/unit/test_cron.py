"""The 5-field cron evaluator: parsing, next/previous firing, zones and daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.cron import Cron, CronError, parse_cron
from broadcaster.errors import UsageError

IST = ZoneInfo("Asia/Kolkata")
NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ----- parsing

def test_parse_daily_at_ten() -> None:
    c = parse_cron("0 10 * * *")
    assert c.minutes == (0,) and c.hours == (10,)
    assert c.days == frozenset(range(1, 32)) and c.months == frozenset(range(1, 13))
    assert c.weekdays == frozenset(range(7)) and not c.either_day


def test_parse_lists_ranges_steps_and_names() -> None:
    c = parse_cron("*/15 9-17/4 1,15 jan-MAR mon-fri")
    assert c.minutes == (0, 15, 30, 45)
    assert c.hours == (9, 13, 17)
    assert c.days == frozenset({1, 15})
    assert c.months == frozenset({1, 2, 3})
    assert c.weekdays == frozenset({1, 2, 3, 4, 5})
    assert c.either_day


def test_start_with_step_runs_to_the_field_maximum() -> None:
    assert parse_cron("50/5 * * * *").minutes == (50, 55)


def test_weekday_seven_is_sunday() -> None:
    assert parse_cron("0 0 * * 7").weekdays == frozenset({0})
    assert parse_cron("0 0 * * 5-7").weekdays == frozenset({0, 5, 6})


def test_macros_expand() -> None:
    assert parse_cron("@daily").expr == "0 0 * * *"
    assert parse_cron("@HOURLY").expr == "0 * * * *"
    assert parse_cron("  0   10 *  * * ").expr == "0 10 * * *"


@pytest.mark.parametrize(("expr", "message"), [
    ("0 10 * *", r"^cron '0 10 \* \*': expected 5 fields .*got 4"),
    ("0 25 * * *", r"^cron '0 25 \* \* \*': hour field: 25 is out of range 0-23$"),
    ("60 * * * *", r"^cron '60 \* \* \* \*': minute field: 60 is out of range 0-59$"),
    ("0 0 0 * *", r"^cron '0 0 0 \* \*': day-of-month field: 0 is out of range 1-31$"),
    ("0 0 * 13 *", r"month field: 13 is out of range 1-12$"),
    ("0 0 * * 8", r"weekday field: 8 is out of range 0-7$"),
    ("*/0 * * * *", r"minute field: step '0' must be a whole number >= 1$"),
    ("5-1 * * * *", r"minute field: range '5-1' runs backwards$"),
    ("1,,2 * * * *", r"minute field '1,,2' has an empty list item$"),
    ("x * * * *", r"minute field: 'x' is not a number$"),
    ("0 0 * foo *", r"month field: 'foo' is not a number or a name \(jan, feb"),
    ("0 0 30 2 *", r"^cron '0 0 30 2 \*': day-of-month field: day 30 never occurs"),
    ("0 0 31 4,6,9,11 *", r"day 31 never occurs"),
    ("@reboot", r"^cron '@reboot': unknown macro; use one of @yearly"),
])
def test_bad_expressions_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        parse_cron(expr)


def test_cron_error_is_a_usage_error() -> None:
    assert issubclass(CronError, UsageError)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^after=.* is a naive datetime"):
        parse_cron("* * * * *").next_after(datetime(2026, 12, 4, 10, 0), IST)


# ----- next / previous

def test_ist_ten_am_is_four_thirty_utc() -> None:
    c = parse_cron("0 10 * * *")
    assert c.next_after(utc(2026, 12, 4, 0, 0), IST) == utc(2026, 12, 4, 4, 30)
    assert c.next_after(utc(2026, 12, 4, 4, 30), IST) == utc(2026, 12, 5, 4, 30)  # strictly after
    assert c.last_at_or_before(utc(2026, 12, 4, 4, 30), IST) == utc(2026, 12, 4, 4, 30)
    assert c.last_at_or_before(utc(2026, 12, 4, 4, 29), IST) == utc(2026, 12, 3, 4, 30)


def test_result_is_utc_whatever_the_input_offset() -> None:
    c = parse_cron("0 10 * * *")
    after = datetime(2026, 12, 4, 9, 0, tzinfo=IST)
    got = c.next_after(after, IST)
    assert got == utc(2026, 12, 4, 4, 30) and got.tzinfo is UTC


def test_day_of_month_or_weekday_when_both_restricted() -> None:
    c = parse_cron("0 0 13 * 5")  # the 13th, and every Friday
    firings = c.upcoming(utc(2026, 2, 1), UTC, 4)
    assert firings == [utc(2026, 2, 6), utc(2026, 2, 13), utc(2026, 2, 20), utc(2026, 2, 27)]
    d = parse_cron("0 0 */10 * mon")  # starts with '*': both must match
    assert not d.either_day


def test_leap_day_every_four_years() -> None:
    c = parse_cron("0 0 29 2 *")
    assert c.next_after(utc(2026, 3, 1), UTC) == utc(2028, 2, 29)
    assert c.last_at_or_before(utc(2026, 3, 1), UTC) == utc(2024, 2, 29)


def test_dst_spring_forward_gap_shifts_by_the_gap() -> None:
    # 2026-03-08 02:00 EST → 03:00 EDT: 02:30 does not exist in New York that night
    c = parse_cron("30 2 * * *")
    assert c.next_after(utc(2026, 3, 7, 12), NY) == utc(2026, 3, 8, 7, 30)  # 03:30 EDT
    assert c.next_after(utc(2026, 3, 8, 7, 30), NY) == utc(2026, 3, 9, 6, 30)  # 02:30 EDT


def test_dst_fall_back_fires_once_at_first_occurrence() -> None:
    # 2026-11-01 02:00 EDT → 01:00 EST: 01:30 happens twice
    c = parse_cron("30 1 * * *")
    first = c.next_after(utc(2026, 10, 31, 12), NY)
    assert first == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    assert c.next_after(first, NY) == utc(2026, 11, 2, 6, 30)  # next day, 01:30 EST


def test_dst_gap_never_returns_out_of_order() -> None:
    c = parse_cron("0,30 * * * *")
    t = utc(2026, 3, 8, 5, 0)
    seen = []
    for _ in range(8):
        t = c.next_after(t, NY)
        seen.append(t)
    assert seen == sorted(set(seen))
    assert seen[:4] == [utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 6, 30),
                        utc(2026, 3, 8, 7, 0)]


# ----- property: the evaluator agrees with a brute-force minute scan (zones without DST)

def _field(low: int, high: int) -> st.SearchStrategy[str]:
    single = st.integers(low, high).map(str)
    rng = st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda ab: f"{min(ab)}-{max(ab)}")
    step = st.tuples(st.sampled_from(["*", f"{low}"]), st.integers(1, max(1, high - low))).map(
        lambda bs: f"{bs[0]}/{bs[1]}")
    item = st.one_of(single, rng, step)
    return st.one_of(st.just("*"), st.lists(item, min_size=1, max_size=3).map(",".join))


crons = st.tuples(_field(0, 59), _field(0, 23), st.one_of(st.just("*"), _field(1, 28)),
                  st.just("*"), _field(0, 6)).map(" ".join)
zones = st.sampled_from([UTC, IST, ZoneInfo("Asia/Kathmandu"), ZoneInfo("Asia/Tokyo")])
instants = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1)).map(
    lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC))


def _matches(c: Cron, instant: datetime, zone: ZoneInfo | type[UTC]) -> bool:
    local = instant.astimezone(zone)  # type: ignore[arg-type]
    return (local.minute in c.minutes and local.hour in c.hours and c.matches_day(local.date()))


@settings(max_examples=150, deadline=None)
@given(expr=crons, zone=zones, start=instants)
def test_next_after_is_the_first_matching_minute(expr: str, zone: ZoneInfo, start: datetime) -> None:
    c = parse_cron(expr)
    got = c.next_after(start, zone)
    assert got > start and _matches(c, got, zone)
    # no matching minute in between (bounded scan: step by minutes within matching hours only)
    t = start + timedelta(minutes=1)
    while t < got:
        assert not _matches(c, t, zone), f"{expr} matches {t} before {got}"
        t += timedelta(minutes=1) if t.astimezone(zone).hour in c.hours else timedelta(
            minutes=60 - t.astimezone(zone).minute)
    assert c.last_at_or_before(got, zone) == got
    assert c.last_at_or_before(got - timedelta(minutes=1), zone) in (None,) or \
        c.last_at_or_before(got - timedelta(minutes=1), zone) <= start
