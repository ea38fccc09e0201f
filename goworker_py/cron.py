"""Crontab fields read exactly as cron.c reads them, and the wall-clock search over them.

Why our own parser and search rather than APScheduler's ``CronTrigger``: APScheduler matches
only the start of a month field (``jan-dec/2`` fired every month, ``lastxyz`` read as
``last``), passes its own messages through ("Increment must be higher than 0"), and scans
towards the year 9999 when a date is rare or impossible. Here:

- every field is parsed by one grammar: ``*``, values, ranges ``a-b``, steps ``*/n``,
  ``a-b/n`` and the seed's ``a/n`` (from ``a`` to the end of the range), lists ``a,b``; names
  (``jan``..``dec``, ``sun``..``sat``, any case) wherever a month or day-of-week value goes,
  ranges and steps included; day-of-month also takes ``last``. Anything else is refused with a
  message naming the field and its allowed form;
- a search for the next matching date goes month by month with day bit masks, and is bounded
  by the Gregorian calendar's cycle: dates and weekdays repeat every 400 years (146,097 days,
  exactly 20,871 weeks), so a date the expression matches lies within 4,800 months of any
  start or nowhere. An expression matching no date is refused once, at parse time.

Times here are *wall-clock* times (naive datetimes); :mod:`goworker_py.schedule` maps them onto
real instants in a time zone.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from goworker_py.errors import InvalidScheduleError

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FORMS = "'*', ranges 'a-b', steps '*/n' and 'a-b/n', lists 'a,b'"
#: One list item: a start ('*', a number or a name), an optional range end, an optional step.
_ITEM = re.compile(r"(\*|[0-9a-z]+)(?:-([0-9a-z]+))?(?:/([0-9]+))?", re.ASCII | re.IGNORECASE)
#: Months in one cycle of the Gregorian calendar (400 years), plus one for a start mid-month.
_CYCLE_MONTHS = 400 * 12 + 1
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
#: Years in which January 1st falls on each weekday, leap and common: between them every month
#: starts on every weekday, with both February lengths.
_SAMPLE_YEARS = tuple(range(2000, 2029))


@dataclass(frozen=True)
class _Field:
    """How one crontab field is read: its name, its range, its names, its allowed form."""

    name: str
    low: int
    high: int
    values: str
    names: tuple[str, ...] = ()
    #: The value of the first name (jan = 1, sun = 0).
    first_name: int = 0
    #: End of a seed-style "a/n" item (day-of-week stops at Saturday, as in the seed).
    step_end: int = -1

    def allowed(self) -> str:
        return f"{self.name} takes {self.values}, {_FORMS}"


_SECOND = _Field("second", 0, 59, "0-59")
_MINUTE = _Field("minute", 0, 59, "0-59")
_HOUR = _Field("hour", 0, 23, "0-23")
_DOM = _Field("day-of-month", 1, 31, "1-31 or 'last'")
_MONTH = _Field("month", 1, 12, "1-12 or jan-dec", _MONTH_NAMES, 1)
_DOW = _Field("day-of-week", 0, 7, "0-7 (0 and 7 are Sunday) or sun-sat", _DOW_NAMES, 0, 6)
FIELDS = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)


def shown(text: str, limit: int = 80) -> str:
    """``repr(text)``, shortened in the middle when long (a 5,000-digit field stays readable)."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit // 2] + " ... " + text[-limit // 4 :])


class _FieldError(Exception):
    """A problem in one field; :func:`parse_fields` adds the field, the expression and the form."""


def _number(token: str, spec: _Field) -> int:
    """One value of ``spec``: digits (ASCII) or, for months and days, a three-letter name."""
    if token.isdigit():
        digits = token.lstrip("0") or "0"
        value = int(digits) if len(digits) <= 3 else spec.high + 1  # no int() of 5,000 digits
        if not spec.low <= value <= spec.high:
            raise _FieldError(f"{shown(token, 20)} is out of range")
        return value
    lowered = token.lower()
    if lowered in spec.names:
        return spec.names.index(lowered) + spec.first_name
    if spec.names:
        kind = "month" if spec is _MONTH else "day"
        raise _FieldError(f"{shown(token, 20)} is neither a number nor a {kind} name")
    raise _FieldError(f"{shown(token, 20)} is not a number")


def _item_values(item: str, spec: _Field) -> tuple[list[int], bool]:
    """The values one list item names, and whether it is ``last`` (day-of-month only)."""
    if spec is _DOM and item.lower() == "last":
        return [], True
    match = _ITEM.fullmatch(item)
    if match is None:
        problem = "an empty item" if not item else f"{item!r} is not a value, range or step"
        raise _FieldError(problem)
    start, end, step_text = match.groups()
    if start == "*":
        if end is not None:
            raise _FieldError("'*' cannot start a range")
        first, last = spec.low, spec.high
    else:
        if spec is _DOM and "last" in (start.lower(), (end or "").lower()):
            raise _FieldError("'last' stands alone (no range, no step)")
        first = _number(start, spec)
        if end is not None:
            last = _number(end, spec)
        elif step_text is not None:  # the seed's "a/n": from a to the end of the range
            last = spec.step_end if spec.step_end >= 0 else spec.high
            last = max(last, first)
        else:
            last = first
        if first > last:
            if spec is _DOW:
                raise _FieldError(
                    "the first day must not come after the last "
                    "(write 'fri-sat,sun' instead of 'fri-sun')"
                )
            raise _FieldError("the first value must not come after the last")
    step = 1
    if step_text is not None:
        digits = step_text.lstrip("0")
        if not digits:
            raise _FieldError("a step must be 1 or more")
        # A step wider than its range selects the range's first value only (as crontab does).
        step = int(digits) if len(digits) <= 3 else spec.high + 1
    return list(range(first, last + 1, step)), False


def _parse_field(text: str, spec: _Field) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    last_day = False
    for item in text.split(","):
        found, is_last = _item_values(item, spec)
        values.update(found)
        last_day = last_day or is_last
    return frozenset(values), last_day


def _mask(values: frozenset[int]) -> int:
    out = 0
    for value in values:
        out |= 1 << value
    return out


def _month_length(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS_IN_MONTH[month]


@dataclass(frozen=True)
class CronFields:
    """A parsed crontab expression: what wall-clock times it matches.

    ``wildcard`` is cron.c's ``MIN_STAR | HR_STAR``: the minute or the hour field starts with
    ``*``. Such a job follows real time across daylight-saving changes; any other job fires
    once per wall-clock time (see :mod:`goworker_py.schedule`).
    """

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    #: Bit ``d`` set for each day-of-month ``d`` (1-31).
    dom_mask: int
    #: ``last`` in the day-of-month field: the month's last day matches.
    last_day: bool
    #: cron's rule: both day fields restricted (neither starts with ``*``): either may match.
    either_day: bool
    wildcard: bool
    #: For a month whose 1st is weekday ``w`` (0 = Sunday): bit ``d`` set if day ``d`` is one of
    #: the expression's weekdays.
    dow_masks: tuple[int, ...]

    # -- dates ------------------------------------------------------------------------------------

    def day_mask(self, year: int, month: int) -> int:
        """Bits of the days of ``year``-``month`` that match (bit ``d`` for day ``d``)."""
        length = _month_length(year, month)
        dom = self.dom_mask | (1 << length if self.last_day else 0)
        dow = self.dow_masks[(date(year, month, 1).weekday() + 1) % 7]
        mask = (dom | dow) if self.either_day else (dom & dow)
        return mask & ((2 << length) - 2)

    def next_day(self, start: date) -> date | None:
        """The first matching date at or after ``start``; ``None`` if none by the year 9999."""
        year, month, day = start.year, start.month, start.day
        months = self.months
        for _ in range(_CYCLE_MONTHS):
            index = bisect_left(months, month)
            if index == len(months):  # no allowed month left this year
                year, month, day = year + 1, months[0], 1
            elif months[index] != month:
                month, day = months[index], 1
            if year > 9999:
                return None
            mask = self.day_mask(year, month) >> day << day
            if mask:
                return date(year, month, (mask & -mask).bit_length() - 1)
            month, day = month + 1, 1
            if month > 12:
                year, month = year + 1, 1
        return None

    # -- times of day -----------------------------------------------------------------------------

    def next_time(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        """The first matching time of day at or after ``hour:minute:second``, or ``None``."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        i = bisect_left(hours, hour)
        if i == len(hours):
            return None
        if hours[i] != hour:
            return hours[i], minutes[0], seconds[0]
        j = bisect_left(minutes, minute)
        if j < len(minutes):
            if minutes[j] != minute:
                return hour, minutes[j], seconds[0]
            k = bisect_left(seconds, second)
            if k < len(seconds):
                return hour, minute, seconds[k]
            if j + 1 < len(minutes):
                return hour, minutes[j + 1], seconds[0]
        if i + 1 < len(hours):
            return hours[i + 1], minutes[0], seconds[0]
        return None

    def next_match(self, wall: datetime) -> datetime | None:
        """The first matching wall-clock time at or after naive ``wall`` (whole seconds)."""
        if wall.microsecond:
            wall = wall.replace(microsecond=0) + timedelta(seconds=1)
        day = wall.date()
        if day.month in self.months and self.day_mask(day.year, day.month) >> day.day & 1:
            found = self.next_time(wall.hour, wall.minute, wall.second)
            if found is not None:
                return datetime(day.year, day.month, day.day, *found)
        if day == date.max:
            return None
        following = self.next_day(day + timedelta(days=1))
        if following is None:
            return None
        return datetime(
            following.year,
            following.month,
            following.day,
            self.hours[0],
            self.minutes[0],
            self.seconds[0],
        )


def _dow_masks(weekdays: frozenset[int]) -> tuple[int, ...]:
    out = []
    for first in range(7):
        out.append(_mask(frozenset(d for d in range(1, 32) if (first + d - 1) % 7 in weekdays)))
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def parse_fields(fields: tuple[str, ...], expression: str) -> CronFields:
    """Parse six crontab fields (seconds first); ``expression`` is quoted in errors.

    Raises :class:`InvalidScheduleError` naming the field and its allowed form, or saying that
    the expression never fires. Cached: workers and ``next_fire_time`` calls parse an
    expression once.
    """
    parsed: list[frozenset[int]] = []
    last_day = False
    for text, spec in zip(fields, FIELDS, strict=True):
        try:
            values, is_last = _parse_field(text, spec)
        except _FieldError as exc:
            raise InvalidScheduleError(
                f"invalid {spec.name} field {shown(text, 40)} in {shown(expression)}: {exc}; "
                f"{spec.allowed()}"
            ) from None
        parsed.append(values)
        last_day = last_day or is_last
    seconds, minutes, hours, doms, months, dows = parsed
    _, minute, hour, dom, _, dow = fields
    result = CronFields(
        seconds=tuple(sorted(seconds)),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        months=tuple(sorted(months)),
        dom_mask=_mask(doms),
        last_day=last_day,
        either_day=not dom.startswith("*") and not dow.startswith("*"),
        wildcard=minute.startswith("*") or hour.startswith("*"),
        dow_masks=_dow_masks(frozenset(day % 7 for day in dows)),
    )
    # A month's matching days depend only on its length and the weekday of its 1st, and every
    # month takes each of those (leap or not) within one 400-year cycle: a month with no
    # matching day in any of them never has one. Searching only the others keeps every search
    # short; an expression left with none is refused at once.
    possible = tuple(m for m in result.months if any(result.day_mask(y, m) for y in _SAMPLE_YEARS))
    if not possible:
        raise InvalidScheduleError(
            f"cron expression {shown(expression)} never fires (no date matches it): "
            "check day and month"
        )
    return dataclasses.replace(result, months=possible)
