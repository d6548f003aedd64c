"""Five-field cron expressions, evaluated in an IANA time zone. Pure: no I/O, no process TZ.

    ┌─ minute        0-59
    │ ┌─ hour        0-23
    │ │ ┌─ day       1-31
    │ │ │ ┌─ month   1-12 or jan-dec
    │ │ │ │ ┌─ weekday 0-7 or sun-sat (0 and 7 are Sunday)
    0 10 * * *       every day at 10:00 in the schedule's zone

Each field is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (a to the field's
maximum), or a comma list of those. Macros: @hourly, @daily (@midnight), @weekly, @monthly,
@yearly (@annually). Day rule (as Vixie cron): when both day-of-month and weekday are restricted
(neither starts with `*`), a day matches if EITHER matches; otherwise both must.

Guarantees:
- `next_after(t, zone)` returns the earliest firing instant strictly after `t`, as an aware UTC
  datetime; `last_at_or_before(t, zone)` the latest at or before `t`. Both refuse naive datetimes,
  so the host's TZ setting can never change a result.
- Wall-clock times are read in the given zone. Around daylight-saving changes: a time skipped by
  a spring-forward gap fires at the same wall time shifted by the gap (02:30 → 03:30); a time
  that occurs twice on a fall-back night fires once, at its first occurrence.
- `parse_cron` rejects, with the field named, anything out of range, malformed, or an expression
  that can never fire (`0 0 30 2 *`).

What it is not: no seconds field, no `L`/`W`/`#`/`?` extensions, no @reboot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from broadcaster.errors import UsageError

__all__ = ["Cron", "CronError", "parse_cron"]

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_WEEKDAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("weekday", 0, 7, _WEEKDAYS),
)
_MAX_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
SEARCH_DAYS = 366 * 9  # longest gap between firings of a valid expression: Feb 29 across 2100 (8 years)


class CronError(UsageError):
    """A cron expression is malformed or can never fire; the message names the field."""


def _number(expr: str, field: str, token: str, low: int, high: int, names: dict[str, int]) -> int:
    text = token.strip().lower()
    if text in names:
        return names[text]
    if not text.isdigit():
        raise CronError(f"cron {expr!r}: {field} field: {token!r} is not a number"
                        + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"cron {expr!r}: {field} field: {value} is out of range {low}-{high}")
    return value


def _parse_field(expr: str, index: int, text: str) -> frozenset[int]:
    field, low, high, names = _FIELDS[index]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"cron {expr!r}: {field} field {text!r} has an empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"cron {expr!r}: {field} field: step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start = _number(expr, field, a, low, high, names)
            stop = _number(expr, field, b, low, high, names)
            if start > stop:
                raise CronError(f"cron {expr!r}: {field} field: range {base!r} runs backwards")
        else:
            start = _number(expr, field, base, low, high, names)
            stop = high if slash else start
        values.update(range(start, stop + 1, step))
    if index == 4 and 7 in values:  # 7 is Sunday too
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression. Build it with `parse_cron`."""

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]        # 0 = Sunday … 6 = Saturday
    either_day: bool                # both day fields restricted: a day matches if either does

    def __str__(self) -> str:
        return self.expr

    def matches_day(self, day: date) -> bool:
        """Whether the calendar day (in the schedule's zone) has firings."""
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.weekday() + 1) % 7 in self.weekdays
        return (dom or dow) if self.either_day else (dom and dow)

    def _day_candidates(self, day: date, zone: ZoneInfo) -> list[datetime]:
        """The day's firing instants in UTC, in wall-clock order (fold=0: first occurrence)."""
        return [datetime(day.year, day.month, day.day, h, m, tzinfo=zone).astimezone(UTC)
                for h in self.hours for m in self.minutes]

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        """The earliest firing strictly after `after` (aware), as an aware UTC datetime."""
        local = _aware(after, "after").astimezone(zone)
        day = local.date()
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                later = [c for c in self._day_candidates(day, zone) if c > after]
                if later:
                    return min(later)  # min, not first: a DST gap can reorder wall-clock times
            day += timedelta(days=1)
        raise CronError(f"cron {self.expr!r} does not fire within {SEARCH_DAYS // 366} years")

    def last_at_or_before(self, at: datetime, zone: ZoneInfo) -> datetime | None:
        """The latest firing at or before `at` (aware), as UTC; None if none in the search span."""
        local = _aware(at, "at").astimezone(zone)
        day = local.date()
        for _ in range(SEARCH_DAYS):
            if self.matches_day(day):
                earlier = [c for c in self._day_candidates(day, zone) if c <= at]
                if earlier:
                    return max(earlier)
            day -= timedelta(days=1)
        return None

    def upcoming(self, after: datetime, zone: ZoneInfo, count: int) -> list[datetime]:
        """The next `count` firings after `after`, in UTC."""
        out: list[datetime] = []
        t = after
        for _ in range(count):
            t = self.next_after(t, zone)
            out.append(t)
        return out


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value!r} is a naive datetime: pass an aware one (the process TZ is never used)")
    return value


def parse_cron(expr: str) -> Cron:
    """Parse a 5-field expression or a macro.

    Raises:
        CronError: the message names the field and the problem, e.g.
            "cron '0 25 * * *': hour field: 25 is out of range 0-23".
    """
    original = expr
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise CronError(f"cron {original!r}: unknown macro; use one of {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(f"cron {original!r}: expected 5 fields (minute hour day-of-month month weekday), "
                        f"got {len([p for p in parts if p])}; e.g. '0 10 * * *' for every day at 10:00")
    sets = [_parse_field(original, i, p) for i, p in enumerate(parts)]
    dom_star, dow_star = parts[2].startswith("*"), parts[4].startswith("*")
    cron = Cron(expr=text, minutes=tuple(sorted(sets[0])), hours=tuple(sorted(sets[1])), days=sets[2],
                months=sets[3], weekdays=sets[4], either_day=not dom_star and not dow_star)
    if not cron.either_day and not dom_star:
        # day-of-month alone decides: it must exist in at least one of the months
        if not any(min(cron.days) <= _MAX_DAYS_IN_MONTH[m - 1] for m in cron.months):
            raise CronError(f"cron {original!r}: day-of-month field: day {min(cron.days)} never occurs in "
                            f"the months given; it would never fire")
    return cron
