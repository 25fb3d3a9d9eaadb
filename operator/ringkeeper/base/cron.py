"""Five-field cron schedules: parsing with clear messages, and the next firing time (UTC by
default, or the wall clock of an IANA time zone).

A base module (no ringkeeper imports): the API models check schedules at admission with
it, and the operator's deciders compute firing times with it.

Fields are minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC) and
day of week (0-7 or SUN-SAT; 0 and 7 are Sunday). Each field is `*`, a value, a range
`a-b`, any of those with a step (`*/15`, `1-5/2`, `10/5` = `10-max/5`), or a comma list
of them. The macros @hourly, @daily, @midnight, @weekly, @monthly, @yearly and @annually
stand for their usual expansions.

Day matching follows standard (Vixie) cron: when both the day of month and the day of
week are restricted (neither field starts with `*`), a day matches if EITHER matches;
otherwise both must (an unrestricted field matches every day).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
           "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def _admission_pattern() -> str:
    """What admission can check without a cron parser: five space-separated fields, each
    a list of `*`, values or ranges in the field's own bounds with an optional step, or an
    @-macro. CEL has no cron parser, so the API server runs this regular expression
    (RE2); Python runs the same one with `re.fullmatch`. It has no backslash, so it reads
    the same in a CEL string literal, in RE2, in Rust's regex and in Python's `re`.
    Schedules that pass it and still cannot fire (`0 0 31 2 *`, `5-1 * * * *`) are
    caught by `parse`, which the operator runs on first sight."""
    def names(words: tuple[str, ...]) -> str:
        return "(?i:" + "|".join(w.lower() for w in words) + ")"

    values = (
        "[0-5]?[0-9]",                                   # minute 0-59
        "[01]?[0-9]|2[0-3]",                             # hour 0-23
        "0?[1-9]|[12][0-9]|3[01]",                       # day of month 1-31
        "0?[1-9]|1[0-2]|" + names(_MONTHS),              # month 1-12, JAN-DEC
        "[0-7]|" + names(_DAYS),                         # day of week 0-7, SUN-SAT
    )
    fields = []
    for v in values:
        item = f"([*]|({v})(-({v}))?)(/[1-9][0-9]?)?"
        fields.append(f"{item}(,{item})*")
    macros = "@(yearly|annually|monthly|weekly|daily|midnight|hourly)"
    return f"^({macros}|{' +'.join(fields)})$"


# Checked at admission (CEL `matches`) and by `ringkeeper validate`.
ADMISSION_PATTERN = _admission_pattern()
ADMISSION_MESSAGE = (
    "must be a cron schedule of five fields separated by spaces: minute 0-59, hour 0-23, "
    "day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT (each *, a value, "
    "a range a-b, with an optional step /n, or a comma list of them), or one of @hourly, "
    "@daily, @midnight, @weekly, @monthly, @yearly, @annually"
)


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: tuple[str, ...] = ()
    names_from: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day of week", 0, 7, _DAYS, 0),
)

# Longest days of each month (February: leap years).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# The search for the next firing gives up after this many years: the rarest schedule that
# fires at all (Feb 29 on a given weekday) repeats within 28 years.
_SEARCH_YEARS = 30


@dataclass(frozen=True)
class Cron:
    """A parsed schedule: the allowed values of each field (day of week 0-6, Sunday 0)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool

    def day_matches(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.dom_restricted and self.dow_restricted:
            return dom or dow
        return dom and dow

    def matches(self, t: datetime) -> bool:
        """True when the schedule fires in the minute of `t` (read as UTC)."""
        t = _utc(t)
        return (t.minute in self.minutes and t.hour in self.hours
                and t.month in self.months and self.day_matches(t))


def _value(text: str, f: _Field, whole: str) -> int:
    up = text.upper()
    if f.names and up in f.names:
        return f.names.index(up) + f.names_from
    if not (text.isascii() and text.isdigit()):
        hint = f" or a name ({f.names[0]}-{f.names[-1]})" if f.names else ""
        raise ValueError(f"cron {whole!r}: {f.name} field: {text!r} is not a number{hint}")
    n = int(text)
    if not f.lo <= n <= f.hi:
        raise ValueError(f"cron {whole!r}: {f.name} field: {n} is outside {f.lo}-{f.hi}")
    return n


def _parse_field(text: str, f: _Field, whole: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"cron {whole!r}: {f.name} field {text!r} has an empty list item")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise ValueError(f"cron {whole!r}: {f.name} field: step {step_text!r} must "
                                 "be a positive number")
            step = int(step_text)
        if base == "*":
            lo, hi = f.lo, f.hi
        elif "-" in base:
            a, _, b = base.partition("-")
            lo, hi = _value(a, f, whole), _value(b, f, whole)
            if lo > hi:
                raise ValueError(f"cron {whole!r}: {f.name} field: range {base!r} runs "
                                 "backwards")
        else:
            lo = _value(base, f, whole)
            hi = f.hi if slash else lo  # "10/5" means from 10 to the end, every 5
        out.update(range(lo, hi + 1, step))
    return out


def parse(expr: str) -> Cron:
    """Parse a five-field expression or an @-macro; ValueError says what is wrong."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("cron: the schedule is empty")
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ValueError(f"cron {expr!r}: unknown macro; use one of "
                             f"{', '.join(MACROS)}")
        text = MACROS[text.lower()]
    parts = text.split(" ")
    if len(parts) != 5:
        raise ValueError(f"cron {expr!r}: needs 5 fields (minute hour day-of-month month "
                         f"day-of-week), got {len(parts)}")
    sets = [_parse_field(p, f, expr) for p, f in zip(parts, _FIELDS, strict=True)]
    weekdays = {d % 7 for d in sets[4]}
    cron = Cron(expr=expr, minutes=frozenset(sets[0]), hours=frozenset(sets[1]),
                days=frozenset(sets[2]), months=frozenset(sets[3]),
                weekdays=frozenset(weekdays), dom_restricted=not parts[2].startswith("*"),
                dow_restricted=not parts[4].startswith("*"))
    if not (cron.dom_restricted and cron.dow_restricted) and not any(
            d <= _MONTH_DAYS[m - 1] for m in cron.months for d in cron.days):
        raise ValueError(f"cron {expr!r}: never fires (no selected month has any of the "
                         "selected days)")
    return cron


def admitted(expr: str) -> bool:
    """True when admission lets `expr` through (the CEL rule's Python twin)."""
    return re.fullmatch(ADMISSION_PATTERN, expr) is not None


def problem(expr: object) -> str | None:
    """Why `expr` cannot serve as a schedule, or None when it can: the pure check the
    operator runs before using a schedule (an object written before admission checked
    cron, or one that passes the pattern but never fires)."""
    if not isinstance(expr, str):
        return f"cron: the schedule must be a string, not {type(expr).__name__}"
    try:
        next_fire(parse(expr), datetime(2000, 1, 1, tzinfo=UTC))
    except ValueError as exc:
        return str(exc)
    return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone `name` (None: UTC); ValueError for a name the zone database lacks."""
    if name is None:
        return None
    if not isinstance(name, str) or not re.fullmatch(TIME_ZONE_PATTERN, name):
        raise ValueError(f"time zone {name!r} is not an IANA name such as Asia/Shanghai")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is not in the time zone database") from None


# Admission's conservative shape of an IANA name (Area/Location, Etc/GMT+8, UTC): letters,
# digits and `_+-` in `/`-separated parts, no `.` (so no `..`), no leading `/`.
TIME_ZONE_PATTERN = "^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"


def time_zone_problem(name: object) -> str | None:
    """Why `name` cannot serve as a schedule's time zone, or None."""
    try:
        zone(name)  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return None


def next_fire(expr: str | Cron, after: datetime, tz: str | None = None) -> datetime:
    """The first minute strictly after `after` at which the schedule fires, in UTC (a naive
    `after` is read as UTC). With `tz`, the fields are read on that zone's wall clock: a
    wall time the zone skips (spring forward) does not fire, one it repeats (fall back)
    fires once, at its first occurrence."""
    cron = expr if isinstance(expr, Cron) else parse(expr)
    z = zone(tz)
    if z is None:
        return _next_wall(cron, _utc(after).replace(tzinfo=None)).replace(tzinfo=UTC)
    after_utc = _utc(after)
    t = after_utc.astimezone(z).replace(tzinfo=None)
    # Back one hour so a repeated wall hour (fold) after `after` is not stepped over.
    t -= timedelta(hours=1)
    while True:
        t = _next_wall(cron, t)
        aware = t.replace(tzinfo=z, fold=0)
        real = aware.astimezone(UTC)
        if real.astimezone(z).replace(tzinfo=None) == t and real > after_utc:
            return real


def _next_wall(cron: Cron, after: datetime) -> datetime:
    """The first wall-clock minute strictly after the naive `after` that matches."""
    t = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t.year + _SEARCH_YEARS
    while t.year <= limit:
        if t.month not in cron.months:
            t = (t.replace(year=t.year + 1, month=1, day=1, hour=0, minute=0)
                 if t.month == 12 else t.replace(month=t.month + 1, day=1, hour=0, minute=0))
            continue
        if not cron.day_matches(t):
            t = t.replace(hour=0, minute=0) + timedelta(days=1)
            continue
        if t.hour not in cron.hours:
            t = t.replace(minute=0) + timedelta(hours=1)
            continue
        if t.minute not in cron.minutes:
            t += timedelta(minutes=1)
            continue
        return t
    raise ValueError(f"cron {cron.expr!r}: does not fire within {_SEARCH_YEARS} years")
