"""Schedules: parsing, fire times, daylight-saving changes, and a brute-force cross-check.

Every fire time is computed from an explicit ``after`` instant (an injected clock): nothing here
reads the real time except the tests of the "default: now" arguments, and nothing waits.

The reference matcher at the bottom of the helpers reads a crontab expression the way Vixie cron
does, and finds fire times by scanning days (UTC) or real time second by second / minute by
minute (DST zones), so the tests compare against an independent, obviously-correct model. The
differential tests at the end go further: they simulate cron.c's main loop minute by minute
(its four cases for clock changes) in six zones around their real offset changes.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from goworker_py.errors import ConfigError, InvalidScheduleError
from goworker_py.schedule import (
    NO_CRON_BACKOFF,
    NO_CRON_EXPRESSION,
    CronSchedule,
    IntervalSchedule,
    Schedule,
    get_backoff_for_next_schedule,
    next_fire_time,
    parse_duration,
    parse_schedule,
    validate_schedule,
)

pytestmark = pytest.mark.timeout(30)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")

# 2024 transitions, as UTC instants.
BERLIN_SPRING = datetime(2024, 3, 31, 1, tzinfo=UTC)  # 02:00 CET -> 03:00 CEST
BERLIN_AUTUMN = datetime(2024, 10, 27, 1, tzinfo=UTC)  # 03:00 CEST -> 02:00 CET
NEW_YORK_SPRING = datetime(2024, 3, 10, 7, tzinfo=UTC)  # 02:00 EST -> 03:00 EDT
NEW_YORK_AUTUMN = datetime(2024, 11, 3, 6, tzinfo=UTC)  # 02:00 EDT -> 01:00 EST
TRANSITIONS = [
    pytest.param(BERLIN, BERLIN_SPRING, id="berlin-spring"),
    pytest.param(BERLIN, BERLIN_AUTUMN, id="berlin-autumn"),
    pytest.param(NEW_YORK, NEW_YORK_SPRING, id="new-york-spring"),
    pytest.param(NEW_YORK, NEW_YORK_AUTUMN, id="new-york-autumn"),
]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    """An aware UTC datetime: ``utc(2024, 3, 31, 1)``."""
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def fires(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``after``."""
    out: list[datetime] = []
    for _ in range(count):
        fire = schedule.next_after(after)
        assert fire is not None
        out.append(fire)
        after = fire
    return out


def fires_until(schedule: Schedule, after: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (after, end], as UTC instants."""
    out: list[datetime] = []
    while True:
        fire = schedule.next_after(after)
        if fire is None or fire > end:
            return out
        out.append(fire.astimezone(UTC))
        after = fire


def as_utc(values: list[datetime]) -> list[datetime]:
    return [value.astimezone(UTC) for value in values]


def assert_strictly_increasing(values: list[datetime]) -> None:
    stamps = [value.timestamp() for value in values]  # absolute time, whatever the fold
    assert all(b > a for a, b in itertools.pairwise(stamps)), "fire times must strictly increase"
    assert len(set(stamps)) == len(stamps), "a fire time repeats"


# -- the reference: crontab read as Vixie cron reads it -------------------------------------------

_DOW = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}


def _expand(text: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    def value(token: str) -> int:
        return names[token.lower()] if token.lower() in names else int(token)

    out: set[int] = set()
    for item in text.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, b = base.split("-")
            first, last = value(a), value(b)
        else:
            first = value(base)
            last = high if step else first
        out.update(range(first, last + 1, int(step) if step else 1))
    return out


@dataclass
class Reference:
    """A deliberately naive crontab matcher: sets of allowed values, checked one by one."""

    seconds: set[int]
    minutes: set[int]
    hours: set[int]
    days: set[int]
    months: set[int]
    weekdays: set[int]  # 0 = Sunday
    either_day: bool  # cron's OR rule: both day fields restricted
    wildcard: bool  # cron.c: the minute or the hour field starts with "*"

    @classmethod
    def parse(cls, expr: str) -> Reference:
        parts = expr.split()
        if len(parts) == 5:
            parts.insert(0, "0")
        second, minute, hour, dom, month, dow = parts
        return cls(
            seconds=_expand(second, 0, 59, {}),
            minutes=_expand(minute, 0, 59, {}),
            hours=_expand(hour, 0, 23, {}),
            days=_expand(dom, 1, 31, {}),
            months=_expand(month, 1, 12, _MONTHS),
            weekdays={day % 7 for day in _expand(dow, 0, 7, _DOW)},
            either_day=not dom.startswith("*") and not dow.startswith("*"),
            wildcard=minute.startswith("*") or hour.startswith("*"),
        )

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = day.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)

    def matches(self, wall: datetime) -> bool:
        return (
            self.day_matches(wall.date())
            and wall.hour in self.hours
            and wall.minute in self.minutes
            and wall.second in self.seconds
        )

    def next_utc(self, after: datetime, years: int = 10) -> datetime | None:
        """First fire time after ``after`` in UTC (no DST), scanning day by day."""
        day = after.astimezone(UTC).date()
        end = day.replace(year=min(day.year + years, 9999), day=1)
        while day < end:
            if day.month not in self.months:  # on to the next month
                day = (day.replace(day=1) + timedelta(days=31)).replace(day=1)
                continue
            if self.day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        for second in sorted(self.seconds):
                            moment = datetime.combine(day, datetime.min.time(), UTC).replace(
                                hour=hour, minute=minute, second=second
                            )
                            if moment > after:
                                return moment
            day += timedelta(days=1)
        return None

    def fires_between(
        self, zone: tzinfo, start: datetime, end: datetime, step: timedelta
    ) -> list[datetime]:
        """Fire instants in (start, end], scanning real time by ``step`` with Vixie's DST rules.

        A fixed-time job fires at each real instant whose wall time matches, except in the
        second pass of a repeated hour; if its wall times in a skipped (spring) stretch match,
        it fires once when the clocks jump. A wildcard job (minute or hour field starting with
        ``*``) fires at every real instant whose wall time matches.
        """
        seconds = int(step.total_seconds())
        moment = datetime.fromtimestamp((int(start.timestamp()) // seconds + 1) * seconds, UTC)
        previous = (moment - step).astimezone(zone)
        out: list[datetime] = []
        while moment <= end:
            local = moment.astimezone(zone)
            wall = local.replace(tzinfo=None)
            fire = self.matches(wall) and (self.wildcard or local.fold == 0)
            jumped = local.utcoffset() > previous.utcoffset()  # type: ignore[operator]
            if jumped and not self.wildcard and not fire:
                skipped = previous.replace(tzinfo=None) + step
                while skipped < wall and not fire:
                    fire = self.matches(skipped)
                    skipped += step
            if fire:
                out.append(moment)
            previous, moment = local, moment + step
        return out


def test_the_reference_agrees_with_known_fire_times() -> None:
    ref = Reference.parse("30 2 * * *")
    assert ref.next_utc(utc(2024, 1, 1)) == utc(2024, 1, 1, 2, 30)
    fired = ref.fires_between(
        BERLIN, BERLIN_AUTUMN - timedelta(hours=3), BERLIN_AUTUMN + timedelta(hours=3), MINUTE
    )
    assert fired == [utc(2024, 10, 27, 0, 30)]


MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


# -- parsing --------------------------------------------------------------------------------------


def test_five_fields() -> None:
    schedule = parse_schedule("30 4 * * *", "UTC")
    assert isinstance(schedule, CronSchedule)
    assert schedule.expression == "30 4 * * *"
    assert as_utc(fires(schedule, utc(2024, 5, 1, 4, 30), 2)) == [
        utc(2024, 5, 2, 4, 30),
        utc(2024, 5, 3, 4, 30),
    ]


def test_six_fields_lead_with_seconds() -> None:
    schedule = parse_schedule("15 30 4 * * *", "UTC")
    assert as_utc(fires(schedule, utc(2024, 5, 1), 2)) == [
        utc(2024, 5, 1, 4, 30, 15),
        utc(2024, 5, 2, 4, 30, 15),
    ]


@pytest.mark.parametrize(
    ("expr", "expected_seconds"),
    [
        ("*/20 * * * * *", [0, 20, 40, 0, 20]),
        ("*/7 * * * * *", [0, 7, 14, 21, 28, 35, 42, 49, 56, 0]),
        ("5-20/5 * * * * *", [5, 10, 15, 20, 5]),
        ("0,30 * * * * *", [0, 30, 0, 30]),
    ],
)
def test_steps_in_the_seconds_field(expr: str, expected_seconds: list[int]) -> None:
    schedule = parse_schedule(expr, "UTC")
    got = fires(schedule, utc(2024, 5, 1, 12, 0, 0) - SECOND, len(expected_seconds))
    assert [fire.second for fire in got] == expected_seconds
    assert_strictly_increasing(got)


def test_a_fire_time_equal_to_after_is_not_returned() -> None:
    schedule = parse_schedule("*/5 * * * * *", "UTC")
    assert schedule.next_after(utc(2024, 1, 1, 0, 0, 5)) == utc(2024, 1, 1, 0, 0, 10)
    assert schedule.next_after(utc(2024, 1, 1, 0, 0, 4, 999_999)) == utc(2024, 1, 1, 0, 0, 5)


@pytest.mark.parametrize(
    ("descriptor", "after", "expected"),
    [
        ("@yearly", utc(2024, 5, 5), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("@annually", utc(2024, 5, 5), [utc(2025, 1, 1), utc(2026, 1, 1)]),
        ("@monthly", utc(2024, 5, 5), [utc(2024, 6, 1), utc(2024, 7, 1)]),
        # 2024-05-05 was a Sunday: @weekly is Sunday 00:00.
        ("@weekly", utc(2024, 5, 5), [utc(2024, 5, 12), utc(2024, 5, 19)]),
        ("@daily", utc(2024, 5, 5, 12), [utc(2024, 5, 6), utc(2024, 5, 7)]),
        ("@midnight", utc(2024, 5, 5, 12), [utc(2024, 5, 6), utc(2024, 5, 7)]),
        ("@hourly", utc(2024, 5, 5, 12, 1), [utc(2024, 5, 5, 13), utc(2024, 5, 5, 14)]),
    ],
)
def test_descriptors(descriptor: str, after: datetime, expected: list[datetime]) -> None:
    got = fires(parse_schedule(descriptor, "UTC"), after, len(expected))
    assert as_utc(got) == expected
    if descriptor == "@weekly":
        assert all(fire.isoweekday() == 7 for fire in got)


# 2024-01-07 is a Sunday; a two-week window shows each weekday twice.
_WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@pytest.mark.parametrize(
    ("dow", "expected"),
    [
        ("0", {"sun"}),
        ("7", {"sun"}),
        ("sun", {"sun"}),
        ("SUN", {"sun"}),
        ("0,7", {"sun"}),
        ("1", {"mon"}),
        ("6", {"sat"}),
        ("1-5", {"mon", "tue", "wed", "thu", "fri"}),
        ("mon-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("*/2", {"sun", "tue", "thu", "sat"}),
        ("1-5/2", {"mon", "wed", "fri"}),
        ("5-7", {"fri", "sat", "sun"}),
        ("6-7", {"sat", "sun"}),
        ("sat,sun", {"sat", "sun"}),
        ("0-6", set(_WEEKDAY_NAMES)),
        ("1-7", set(_WEEKDAY_NAMES)),
        ("*", set(_WEEKDAY_NAMES)),
        ("mon,wed,fri", {"mon", "wed", "fri"}),
    ],
)
def test_day_of_week_reads_as_crontab(dow: str, expected: set[str]) -> None:
    schedule = parse_schedule(f"0 12 * * {dow}", "UTC")
    got = fires_until(schedule, utc(2024, 1, 7), utc(2024, 1, 21))
    assert {_WEEKDAY_NAMES[fire.isoweekday() % 7] for fire in got} == expected
    assert len(got) == 2 * len(expected)


def test_both_day_fields_restricted_fire_on_either() -> None:
    # January 2024: the 13th is a Saturday; Fridays are the 5th, 12th, 19th and 26th.
    days = [fire.day for fire in fires_until(parse_schedule("0 0 13 * 5", "UTC"), *JANUARY)]
    assert days == [5, 12, 13, 19, 26]


def test_a_day_field_starting_with_a_star_means_both_must_match() -> None:
    # "*/2" starts with "*": Vixie ANDs the fields, so only Fridays on odd dates fire.
    days = [fire.day for fire in fires_until(parse_schedule("0 0 */2 * 5", "UTC"), *JANUARY)]
    assert days == [5, 19]
    days = [fire.day for fire in fires_until(parse_schedule("0 0 13 * *", "UTC"), *JANUARY)]
    assert days == [13]
    days = [fire.day for fire in fires_until(parse_schedule("0 0 * * fri", "UTC"), *JANUARY)]
    assert days == [5, 12, 19, 26]


def test_or_rule_with_a_weekday_field_covering_the_whole_week() -> None:
    # Vixie: "0-6" is a restricted field (no leading "*"), so any day matches it.
    days = [fire.day for fire in fires_until(parse_schedule("0 0 13 * 0-6", "UTC"), *JANUARY)]
    assert days == list(range(1, 32))


JANUARY = (utc(2023, 12, 31, 23), utc(2024, 1, 31, 23))


def test_month_names() -> None:
    got = fires(parse_schedule("0 0 1 jan,JUL *", "UTC"), utc(2024, 2, 1), 3)
    assert as_utc(got) == [utc(2024, 7, 1), utc(2025, 1, 1), utc(2025, 7, 1)]
    got = fires(parse_schedule("0 0 1 mar-may *", "UTC"), utc(2024, 1, 1), 4)
    assert [fire.month for fire in got] == [3, 4, 5, 3]


@pytest.mark.parametrize(
    ("month", "expected"),
    [
        ("jan-dec/2", [1, 3, 5, 7, 9, 11]),
        ("JAN-DEC/2", [1, 3, 5, 7, 9, 11]),
        ("jan-6", [1, 2, 3, 4, 5, 6]),
        ("1-jun", [1, 2, 3, 4, 5, 6]),
        ("feb-nov/3", [2, 5, 8, 11]),
        ("*/4", [1, 5, 9]),
        ("mar/4", [3, 7, 11]),  # the seed's "a/n": from a to the end of the range
        ("jan,jun-aug", [1, 6, 7, 8]),
        ("dec", [12]),
    ],
)
def test_month_names_in_ranges_and_steps(month: str, expected: list[int]) -> None:
    got = fires_until(
        parse_schedule(f"0 0 1 {month} *", "UTC"), utc(2023, 12, 31), utc(2024, 12, 31)
    )
    assert [fire.month for fire in got] == expected


@pytest.mark.parametrize(
    ("dow", "expected"),
    [
        ("mon-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("sun-sat/2", {"sun", "tue", "thu", "sat"}),
        ("mon-5", {"mon", "tue", "wed", "thu", "fri"}),
        ("1-fri", {"mon", "tue", "wed", "thu", "fri"}),
        ("sat-7", {"sat", "sun"}),
        ("Tue-Thu/2", {"tue", "thu"}),
    ],
)
def test_day_names_in_ranges_and_steps(dow: str, expected: set[str]) -> None:
    got = fires_until(parse_schedule(f"0 12 * * {dow}", "UTC"), utc(2024, 1, 7), utc(2024, 1, 21))
    assert {_WEEKDAY_NAMES[fire.isoweekday() % 7] for fire in got} == expected
    assert len(got) == 2 * len(expected)


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("0 0 lastxyz * *", "day-of-month"),
        ("0 0 1 janx *", "month"),
        ("0 0 1 jan-decx/2 *", "month"),
        ("0 0 1 january *", "month"),
        ("0 0 1 1x *", "month"),
        ("0 0 * * mon1", "day-of-week"),
        ("0 0 * * monday", "day-of-week"),
        ("0 0 1 jan-mon *", "month"),
        ("0 0 * * jan", "day-of-week"),
        ("0 jan * * *", "hour"),
        ("0 0 last-5 * *", "day-of-month"),
        ("0 0 */last * *", "day-of-month"),
    ],
)
def test_names_with_trailing_garbage_or_in_the_wrong_field_are_rejected(
    expr: str, field: str
) -> None:
    with pytest.raises(InvalidScheduleError, match=f"invalid {field} field"):
        parse_schedule(expr, "UTC")


def test_last_day_of_the_month() -> None:
    got = fires(parse_schedule("0 0 last feb *", "UTC"), utc(2023, 1, 1), 3)
    assert as_utc(got) == [utc(2023, 2, 28), utc(2024, 2, 29), utc(2025, 2, 28)]
    got = fires(parse_schedule("0 0 15,LAST * *", "UTC"), utc(2024, 4, 1), 4)
    assert [(f.month, f.day) for f in got] == [(4, 15), (4, 30), (5, 15), (5, 31)]
    # Both day fields restricted: the last day or a Friday (cron's OR rule).
    got = fires_until(parse_schedule("0 0 last * fri", "UTC"), *JANUARY)
    assert [f.day for f in got] == [5, 12, 19, 26, 31]


def test_leap_day() -> None:
    schedule = parse_schedule("0 0 29 2 *", "UTC")
    got = fires(schedule, utc(2023, 1, 1), 3)
    assert as_utc(got) == [utc(2024, 2, 29), utc(2028, 2, 29), utc(2032, 2, 29)]
    # 2100 is not a leap year.
    assert schedule.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        # crontab and the seed accept a step wider than its range: only the first value fires.
        ("*/60 * * * *", utc(2024, 5, 5, 0, 1), [utc(2024, 5, 5, 1), utc(2024, 5, 5, 2)]),
        ("0 */24 * * *", utc(2024, 5, 5, 1), [utc(2024, 5, 6), utc(2024, 5, 7)]),
        ("0 9-17/10 * * *", utc(2024, 5, 5), [utc(2024, 5, 5, 9), utc(2024, 5, 6, 9)]),
        ("12-12/1 0 * * *", utc(2024, 5, 5), [utc(2024, 5, 5, 0, 12), utc(2024, 5, 6, 0, 12)]),
        ("0 0 1 */12 *", utc(2024, 5, 5), [utc(2025, 1, 1), utc(2026, 1, 1)]),
    ],
)
def test_steps_wider_than_their_range(expr: str, after: datetime, expected: list[datetime]) -> None:
    assert as_utc(fires(parse_schedule(expr, "UTC"), after, len(expected))) == expected


# -- time zones -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["TZ=America/New_York", "CRON_TZ=America/New_York"])
def test_time_zone_prefix_wins_over_the_zone_argument(prefix: str) -> None:
    schedule = parse_schedule(f"{prefix} 0 9 * * *", "Europe/Berlin")
    fire = schedule.next_after(utc(2024, 1, 15))
    assert fire == utc(2024, 1, 15, 14)  # 09:00 EST
    assert fire is not None and fire.tzinfo == NEW_YORK


def test_zone_argument_as_name_or_tzinfo() -> None:
    for zone in ("Europe/Berlin", BERLIN):
        assert parse_schedule("0 9 * * *", zone).next_after(utc(2024, 1, 15)) == utc(2024, 1, 15, 8)


def test_naive_after_is_a_wall_time_in_the_schedule_zone() -> None:
    schedule = parse_schedule("0 9 * * *", BERLIN)
    assert schedule.next_after(datetime(2024, 1, 15, 8, 59)) == utc(2024, 1, 15, 8)


def test_after_may_be_in_any_zone() -> None:
    schedule = parse_schedule("0 9 * * *", BERLIN)
    tokyo = datetime(2024, 1, 15, 16, 59, tzinfo=ZoneInfo("Asia/Tokyo"))  # 07:59 UTC
    assert schedule.next_after(tokyo) == utc(2024, 1, 15, 8)


def test_unknown_time_zone() -> None:
    with pytest.raises(InvalidScheduleError, match="unknown time zone 'Mars/Olympus'"):
        parse_schedule("TZ=Mars/Olympus 0 9 * * *")
    with pytest.raises(InvalidScheduleError, match="unknown time zone"):
        parse_schedule("0 9 * * *", "Not/AZone")


def test_default_zone_is_the_local_zone() -> None:
    from tzlocal import get_localzone

    schedule = parse_schedule("0 9 * * *")
    assert isinstance(schedule, CronSchedule)
    assert schedule.zone == get_localzone()


# -- invalid expressions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("", "empty schedule"),
        ("   ", "empty schedule"),
        ("TZ=UTC ", "got 1"),
        ("******", "expected 5 fields"),
        ("* * * *", "got 4"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "61"),
        ("60 * * * * *", "60"),
        ("* 24 * * *", "24"),
        ("* * 0 * *", "invalid day-of-month field '0'"),
        ("* * 32 * *", "32"),
        ("* * * 13 *", "13"),
        ("* * * 0 *", "invalid month field '0'"),
        ("* * * * 8", "invalid day-of-week field '8'"),
        ("* * * * fri-sun", "first day must not come after the last"),
        ("* * * * funday", "invalid day-of-week field 'funday'"),
        ("* * * * 1/0", "a step must be 1 or more"),
        ("*/0 * * * *", "invalid minute field '*/0'"),
        ("5-1 * * * *", "the first value must not come after the last"),
        ("a * * * *", "'a' is not a number"),
        ("1,,2 * * * *", "1,,2"),
        ("? * * * *", "invalid minute field '?'"),
        ("* * * * 0#1", "invalid day-of-week field '0#1'"),
        ("@foo", "unknown descriptor '@foo'"),
        ("@daily now", "unknown descriptor"),
        ("@every 0s", "longer than zero"),
        ("@every", "invalid duration"),
        ("@every 5", "invalid duration '5'"),
        ("@every -5s", "invalid duration '-5s'"),
        ("@every 1d", "invalid duration '1d'"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4 *", "never fires"),
        ("0 0 31 2,4,6,9,11 *", "never fires"),
    ],
)
def test_invalid_expressions_name_the_problem(expr: str, problem: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        parse_schedule(expr, "UTC")
    assert problem in str(info.value)
    with pytest.raises(InvalidScheduleError):
        validate_schedule(expr)


def test_the_expression_is_quoted_in_cron_errors() -> None:
    with pytest.raises(InvalidScheduleError, match=r"'61 \* \* \* \*'"):
        validate_schedule("61 * * * *")


@pytest.mark.parametrize(
    ("expr", "field", "allowed"),
    [
        ("*/0 * * * *", "minute", "0-59"),
        ("0/0 * * * * *", "second", "0-59"),
        ("60 * * * * *", "second", "0-59"),
        ("61 * * * *", "minute", "0-59"),
        ("5-1 * * * *", "minute", "0-59"),
        ("*-5 * * * *", "minute", "0-59"),
        ("1,,2 * * * *", "minute", "0-59"),
        ("0 24 * * *", "hour", "0-23"),
        ("0 */0 * * *", "hour", "0-23"),
        ("0 0 0 * *", "day-of-month", "1-31 or 'last'"),
        ("0 0 1-32 * *", "day-of-month", "1-31 or 'last'"),
        ("0 0 */0 * *", "day-of-month", "1-31 or 'last'"),
        ("0 0 1 13 *", "month", "1-12 or jan-dec"),
        ("0 0 1 */0 *", "month", "1-12 or jan-dec"),
        ("0 0 1 dec-jan *", "month", "1-12 or jan-dec"),
        ("0 0 * * 8", "day-of-week", "0-7 (0 and 7 are Sunday) or sun-sat"),
        ("0 0 * * */0", "day-of-week", "0-7 (0 and 7 are Sunday) or sun-sat"),
        ("0 0 * * fri-sun", "day-of-week", "0-7 (0 and 7 are Sunday) or sun-sat"),
    ],
)
def test_every_cron_error_names_the_field_and_its_allowed_form(
    expr: str, field: str, allowed: str
) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        parse_schedule(expr, "UTC")
    message = str(info.value)
    assert f"invalid {field} field" in message
    assert allowed in message
    assert "'*', ranges 'a-b', steps '*/n' and 'a-b/n', lists 'a,b'" in message
    assert "Increment" not in message and "Unrecognized" not in message


@pytest.mark.parametrize("position", range(6))
def test_a_number_of_thousands_of_digits_is_an_invalid_schedule(position: int) -> None:
    fields = ["0", "0", "0", "1", "1", "*"]
    fields[position] = "9" * 5000
    with pytest.raises(InvalidScheduleError, match="out of range") as info:
        parse_schedule(" ".join(fields), "UTC")
    assert len(str(info.value)) < 1000  # the message shortens the expression it quotes
    fields[position] = "1-" + "9" * 5000
    with pytest.raises(InvalidScheduleError, match="out of range"):
        parse_schedule(" ".join(fields), "UTC")


def test_a_step_of_thousands_of_digits_is_a_step_wider_than_its_range() -> None:
    schedule = parse_schedule("0 */" + "9" * 5000 + " * * *", "UTC")
    assert as_utc(fires(schedule, utc(2024, 5, 5, 1), 2)) == [utc(2024, 5, 6), utc(2024, 5, 7)]


@pytest.mark.parametrize("expr", [None, 5, b"* * * * *"])
def test_a_schedule_must_be_a_string(expr: object) -> None:
    with pytest.raises(InvalidScheduleError, match="must be a string"):
        parse_schedule(expr)  # type: ignore[arg-type]


def test_invalid_schedule_error_is_a_config_error() -> None:
    assert issubclass(InvalidScheduleError, ConfigError)


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "*/5 * * * * *",
        "0 0 29 2 *",
        "0 0 30 2 1",  # never on the 30th of February, but on February's Mondays
        "0 0 last * *",
        "TZ=Europe/Berlin 30 2 * * *",
        "@every 1h30m",
        "@hourly",
    ],
)
def test_valid_expressions_validate(expr: str) -> None:
    validate_schedule(expr)


def test_or_rule_with_an_impossible_date_fires_on_the_weekdays() -> None:
    schedule = parse_schedule("0 0 30 2 1", "UTC")
    got = fires(schedule, utc(2024, 1, 1), 5)
    assert [(fire.month, fire.day) for fire in got] == [(2, 5), (2, 12), (2, 19), (2, 26), (2, 3)]
    # The impossible day-of-month half must not make every search scan to the year 9999
    # (it took ~0.1 s per fire time); 200 fire times take well under a second.
    started = time.perf_counter()
    fires(schedule, utc(2024, 1, 1), 200)
    assert time.perf_counter() - started < 2.0


def test_no_fire_time_past_the_year_9999() -> None:
    end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_schedule("0 0 1 1 *", "UTC").next_after(end) is None
    assert parse_schedule("@every 1h").next_after(end) is None
    assert get_backoff_for_next_schedule("TZ=UTC 0 0 1 1 *", now=end) == NO_CRON_BACKOFF


def test_a_far_fire_in_a_daylight_saving_zone_is_not_lost() -> None:
    # 29 February on a Sunday: 2088, then 2128 (2100 is no leap year).
    after = utc(2088, 3, 1)
    assert next_fire_time("TZ=America/New_York 0 0 29 2 */7", after) == utc(2128, 2, 29, 5)
    assert next_fire_time("TZ=Europe/Berlin 0 0 29 2 sun", after) is not None
    schedule = parse_schedule("0 0 29 2 */7", NEW_YORK)
    assert as_utc(fires(schedule, utc(1990, 1, 1), 4)) == [
        utc(2004, 2, 29, 5),
        utc(2032, 2, 29, 5),
        utc(2060, 2, 29, 5),
        utc(2088, 2, 29, 5),
    ]


def test_next_after_is_strictly_after_at_microsecond_precision_in_the_year_3000() -> None:
    schedule = parse_schedule("* * * * * *", "UTC")
    late = utc(3000, 1, 1, 0, 0, 0, 999_999)
    assert schedule.next_after(late) == utc(3000, 1, 1, 0, 0, 1)
    # The answer for .999999 must not be reused for the next microsecond.
    assert schedule.next_after(utc(3000, 1, 1, 0, 0, 1)) == utc(3000, 1, 1, 0, 0, 2)
    shared = parse_schedule("*/2 * * * * *", BERLIN)
    for moment in (utc(3000, 6, 1, 0, 0, 1, 999_999), utc(3000, 6, 1, 0, 0, 2)):
        fire = shared.next_after(moment)
        assert fire is not None and fire > moment


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Europe/Berlin"])
def test_start_times_before_1970(zone: str) -> None:
    schedule = parse_schedule("0 12 1 jan *", zone)
    start = datetime(1950, 6, 1, tzinfo=ZoneInfo(zone))
    got = fires(schedule, start, 3)
    assert [(f.year, f.month, f.day, f.hour) for f in got] == [
        (1951, 1, 1, 12),
        (1952, 1, 1, 12),
        (1953, 1, 1, 12),
    ]
    assert parse_schedule("*/10 * * * *", zone).next_after(
        datetime(1969, 12, 31, 23, 55, tzinfo=ZoneInfo(zone))
    ) == datetime(1970, 1, 1, 0, 0, tzinfo=ZoneInfo(zone))
    assert get_backoff_for_next_schedule(f"TZ={zone} 0 0 * * *", datetime(1900, 1, 1, 23)) == 3600


@pytest.mark.parametrize(
    "expr",
    [
        "0 0 30 2 *",
        "0 0 31 2,4,6,9,11 *",
        "0 0 30,31 feb *",
        "0 0 31 apr-jun/2,sep,nov *",
        "* * 31 2 */7",
    ],
)
def test_never_firing_expressions_are_rejected_promptly(expr: str) -> None:
    # A liveness bound only: rejecting one used to scan towards the year 9999.
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(InvalidScheduleError, match="never fires"):
            validate_schedule(expr)
    assert time.perf_counter() - started < 5.0


def test_rare_fire_times_stay_quick_to_compute() -> None:
    # A liveness bound only: each of these scanned towards year 9999 or day by day.
    started = time.perf_counter()
    for expr in ("0 0 30 2 1", "TZ=America/New_York 0 0 29 2 */7", "0 0 31 dec */7"):
        schedule = parse_schedule(expr, "UTC")
        assert len(fires(schedule, utc(1900, 1, 1), 100)) == 100
    assert time.perf_counter() - started < 5.0


# -- @every and durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("45s", 45.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("2m", 120.0),
        ("1h 30m", 5400.0),
        (".5s", 0.5),
        ("1h0m1s", 3601.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "-1s", "s", "1hh", "1h30", "0s", "0ms", "abc"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidScheduleError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["\u0665s", "1\u0660m", "\uff15s", "\u0665.5s", "5\u00b2s"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(InvalidScheduleError, match="invalid duration"):
        parse_duration(text)
    with pytest.raises(InvalidScheduleError, match="invalid duration"):
        parse_schedule(f"@every {text}")


@pytest.mark.parametrize("text", ["0.0004ms", "0.5ms", "0.0009s", ".9ms"])
def test_an_interval_below_a_millisecond_is_rejected(text: str) -> None:
    with pytest.raises(InvalidScheduleError, match="at least 1ms"):
        parse_schedule(f"@every {text}")


def test_an_interval_too_long_to_ever_fire_is_rejected() -> None:
    with pytest.raises(InvalidScheduleError, match="never fires"):
        parse_schedule("@every " + "9" * 400 + "h")


def test_every_one_millisecond_moves_forward() -> None:
    schedule = parse_schedule("@every 1ms")
    start = utc(2024, 1, 1)
    assert schedule.next_after(start) == start + timedelta(milliseconds=1)


def test_every_counts_real_time_across_daylight_saving() -> None:
    schedule = parse_schedule("@every 1h30m")
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.interval == 5400.0
    # 01:30 CET + 1h30m of real time is 04:00 CEST (the clocks jumped an hour meanwhile).
    start = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)
    fire = schedule.next_after(start)
    assert fire is not None
    assert fire.timestamp() - start.timestamp() == 5400
    assert fire.replace(tzinfo=None) == datetime(2024, 3, 31, 4, 0)


def test_every_never_goes_back_in_the_repeated_hour() -> None:
    schedule = parse_schedule("@every 30m")
    got = fires(schedule, datetime(2024, 10, 27, 1, 30, tzinfo=BERLIN), 6)
    assert_strictly_increasing(got)
    stamps = [fire.timestamp() for fire in got]
    assert {b - a for a, b in itertools.pairwise(stamps)} == {1800.0}
    # The second pass of 02:00-03:00 is shown as such (fold=1, UTC+1).
    assert [(f.hour, f.minute, f.fold) for f in got] == [
        (2, 0, 0),
        (2, 30, 0),
        (2, 0, 1),
        (2, 30, 1),
        (3, 0, 0),
        (3, 30, 0),
    ]


def test_every_with_a_millisecond_interval() -> None:
    schedule = parse_schedule("@every 500ms")
    assert schedule.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1) + timedelta(milliseconds=500)


# -- next_fire_time / get_backoff_for_next_schedule -----------------------------------------------


def test_next_fire_time() -> None:
    assert next_fire_time("TZ=UTC */10 * * * * *", utc(2024, 1, 1, 0, 0, 5)) == utc(
        2024, 1, 1, 0, 0, 10
    )
    before = datetime.now(UTC)
    fire = next_fire_time("* * * * * *")
    assert fire is not None and before < fire <= before + timedelta(seconds=2)


def test_backoff() -> None:
    assert get_backoff_for_next_schedule("*/5 * * * * *", utc(2024, 1, 1, 12, 0, 3)) == 2.0
    assert get_backoff_for_next_schedule("*/5 * * * * *", utc(2024, 1, 1, 12, 0, 3, 500_000)) == 1.5
    assert get_backoff_for_next_schedule("*/5 * * * * *", utc(2024, 1, 1, 12, 0, 5)) == 5.0
    assert get_backoff_for_next_schedule("@every 1h30m", utc(2024, 1, 1)) == 5400.0
    assert 0 < get_backoff_for_next_schedule("* * * * * *") <= 1.0


@pytest.mark.parametrize("expr", [NO_CRON_EXPRESSION, "", "  "])
def test_no_schedule_gives_no_cron_backoff(expr: str) -> None:
    assert NO_CRON_BACKOFF == -1.0
    assert get_backoff_for_next_schedule(expr) == NO_CRON_BACKOFF


def test_backoff_of_a_malformed_expression_raises() -> None:
    with pytest.raises(InvalidScheduleError):
        get_backoff_for_next_schedule("61 * * * *")


def test_backoff_counts_real_seconds_across_daylight_saving() -> None:
    # 01:30 CET to 03:30 CEST is one real hour, although the wall clocks differ by two.
    now = datetime(2024, 3, 31, 1, 30, tzinfo=BERLIN)
    assert get_backoff_for_next_schedule("TZ=Europe/Berlin 30 3 * * *", now) == 3600.0
    # A naive "now" is read in the schedule's zone.
    naive = datetime(2024, 3, 31, 1, 30)
    assert get_backoff_for_next_schedule("TZ=Europe/Berlin 30 3 * * *", naive) == 3600.0
    assert get_backoff_for_next_schedule("@every 5s", naive) == 5.0


# -- daylight saving: fixed-hour jobs -------------------------------------------------------------


def test_berlin_spring_fixed_hour_fires_when_the_clocks_jump() -> None:
    schedule = parse_schedule("30 2 * * *", BERLIN)
    got = fires(schedule, datetime(2024, 3, 29, 12, tzinfo=BERLIN), 3)
    assert as_utc(got) == [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)]
    assert got[1].replace(tzinfo=None) == datetime(2024, 3, 31, 3, 0)  # 03:00 CEST
    # From just before the jump, too.
    assert schedule.next_after(datetime(2024, 3, 31, 1, 59, 59, tzinfo=BERLIN)) == BERLIN_SPRING


def test_berlin_spring_six_field_fixed_hour_fires_at_the_jump() -> None:
    schedule = parse_schedule("15 30 2 * * *", BERLIN)
    got = fires(schedule, datetime(2024, 3, 30, 12, tzinfo=BERLIN), 2)
    assert as_utc(got) == [BERLIN_SPRING, utc(2024, 4, 1, 0, 30, 15)]


def test_berlin_spring_a_job_at_three_is_not_affected() -> None:
    got = fires(parse_schedule("0 3 * * *", BERLIN), datetime(2024, 3, 30, 12, tzinfo=BERLIN), 2)
    assert as_utc(got) == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 1)]


def test_berlin_spring_several_times_in_the_gap_fire_once() -> None:
    schedule = parse_schedule("0,30 2 * * *", BERLIN)
    got = fires_until(schedule, utc(2024, 3, 30, 12), utc(2024, 4, 1, 12))
    assert got == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0), utc(2024, 4, 1, 0, 30)]


# Berlin, 27 October 2024: 02:30 CEST is 00:30 UTC; the next days' 02:30 CET is 01:30 UTC.
_BERLIN_27TH = utc(2024, 10, 27, 0, 30)
_BERLIN_28TH = utc(2024, 10, 28, 1, 30)
_BERLIN_29TH = utc(2024, 10, 29, 1, 30)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(
            datetime(2024, 10, 26, 12, tzinfo=BERLIN), [_BERLIN_27TH, _BERLIN_28TH], id="before"
        ),
        pytest.param(
            datetime(2024, 10, 27, 2, 10, tzinfo=BERLIN),
            [_BERLIN_27TH, _BERLIN_28TH],
            id="first-pass-before-0230",
        ),
        pytest.param(
            datetime(2024, 10, 27, 2, 45, tzinfo=BERLIN),
            [_BERLIN_28TH, _BERLIN_29TH],
            id="first-pass-after-0230",
        ),
        pytest.param(
            datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=BERLIN),
            [_BERLIN_28TH, _BERLIN_29TH],
            id="second-pass-before-0230",
        ),
        pytest.param(
            datetime(2024, 10, 27, 2, 40, fold=1, tzinfo=BERLIN),
            [_BERLIN_28TH, _BERLIN_29TH],
            id="second-pass-after-0230",
        ),
    ],
)
def test_berlin_autumn_fixed_hour_fires_in_the_first_pass_only(
    start: datetime, expected: list[datetime]
) -> None:
    got = fires(parse_schedule("30 2 * * *", BERLIN), start, 2)
    assert as_utc(got) == expected


def test_berlin_autumn_a_job_after_the_repeated_hour_fires_from_the_second_pass() -> None:
    schedule = parse_schedule("0 3 * * *", BERLIN)
    start = datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=BERLIN)
    assert schedule.next_after(start) == utc(2024, 10, 27, 2)


def test_new_york_spring_fixed_hour_fires_when_the_clocks_jump() -> None:
    got = fires(
        parse_schedule("30 2 * * *", NEW_YORK), datetime(2024, 3, 9, 12, tzinfo=NEW_YORK), 3
    )
    assert as_utc(got) == [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30), utc(2024, 3, 12, 6, 30)]
    assert got[0].replace(tzinfo=None) == datetime(2024, 3, 10, 3, 0)  # 03:00 EDT


# New York, 3 November 2024: 01:30 EDT is 05:30 UTC; the next days' 01:30 EST is 06:30 UTC.
_NEW_YORK_3RD = utc(2024, 11, 3, 5, 30)
_NEW_YORK_4TH = utc(2024, 11, 4, 6, 30)
_NEW_YORK_5TH = utc(2024, 11, 5, 6, 30)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(
            datetime(2024, 11, 2, 12, tzinfo=NEW_YORK), [_NEW_YORK_3RD, _NEW_YORK_4TH], id="before"
        ),
        pytest.param(
            datetime(2024, 11, 3, 1, 10, tzinfo=NEW_YORK),
            [_NEW_YORK_3RD, _NEW_YORK_4TH],
            id="first-pass-before-0130",
        ),
        pytest.param(
            datetime(2024, 11, 3, 1, 45, tzinfo=NEW_YORK),
            [_NEW_YORK_4TH, _NEW_YORK_5TH],
            id="first-pass-after-0130",
        ),
        pytest.param(
            datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=NEW_YORK),
            [_NEW_YORK_4TH, _NEW_YORK_5TH],
            id="second-pass-before-0130",
        ),
        pytest.param(
            datetime(2024, 11, 3, 1, 45, fold=1, tzinfo=NEW_YORK),
            [_NEW_YORK_4TH, _NEW_YORK_5TH],
            id="second-pass-after-0130",
        ),
    ],
)
def test_new_york_autumn_fixed_hour_fires_in_the_first_pass_only(
    start: datetime, expected: list[datetime]
) -> None:
    got = fires(parse_schedule("30 1 * * *", NEW_YORK), start, 2)
    assert as_utc(got) == expected


@pytest.mark.parametrize(("zone", "year"), [(BERLIN, 2023), (NEW_YORK, 2023), (BERLIN, 2024)])
@pytest.mark.parametrize("expr", ["30 2 * * *", "30 1 * * *", "0 3 * * *"])
def test_a_fixed_hour_job_fires_once_on_every_local_date(
    zone: ZoneInfo, year: int, expr: str
) -> None:
    schedule = parse_schedule(expr, zone)
    start = datetime(year, 1, 1, tzinfo=zone) - SECOND
    got = fires_until(schedule, start, datetime(year, 12, 31, 23, 59, tzinfo=zone))
    local_dates = [fire.astimezone(zone).date() for fire in got]
    days_in_year = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    assert len(got) == days_in_year
    assert len(set(local_dates)) == days_in_year
    assert_strictly_increasing(got)


# -- daylight saving: hour-wildcard jobs follow real time -----------------------------------------


def test_a_minute_wildcard_with_a_fixed_hour_list_follows_real_time() -> None:
    # cron.c: the minute field starts with "*", so this is a wildcard job.
    schedule = parse_schedule("*/15 0-23 * * *", NEW_YORK)
    got = fires_until(schedule, NEW_YORK_AUTUMN - timedelta(hours=2), NEW_YORK_AUTUMN + 2 * HOUR)
    gaps = {b - a for a, b in itertools.pairwise(got)}
    assert gaps == {timedelta(minutes=15)}, got
    assert len(got) == 16


def test_an_hour_step_follows_real_time_in_the_repeated_hour() -> None:
    # cron.c: the hour field starts with "*": 02:00 fires in both passes of Berlin's autumn.
    schedule = parse_schedule("0 */2 * * *", BERLIN)
    got = fires_until(schedule, utc(2024, 10, 26, 21, 30), utc(2024, 10, 27, 2, 30))
    assert got == [utc(2024, 10, 26, 22), utc(2024, 10, 27, 0), utc(2024, 10, 27, 1)]
    assert [f.astimezone(BERLIN).hour for f in got] == [0, 2, 2]


def test_a_wildcard_job_has_nothing_to_fire_in_the_skipped_hour() -> None:
    # "* 2 * * *" is a wildcard job for cron.c (its minute field starts with "*").
    schedule = parse_schedule("* 2 * * *", BERLIN)
    got = fires_until(schedule, utc(2024, 3, 29, 12), utc(2024, 4, 1, 12))
    assert got[0] == utc(2024, 3, 30, 1) and got[59] == utc(2024, 3, 30, 1, 59)
    assert got[60] == utc(2024, 4, 1, 0) and len(got) == 120


HOUR = timedelta(hours=1)


def test_berlin_autumn_quarter_hours_fire_in_both_passes() -> None:
    schedule = parse_schedule("*/15 * * * *", BERLIN)
    got = fires(schedule, datetime(2024, 10, 27, 2, 40, tzinfo=BERLIN), 6)
    assert [(f.hour, f.minute, f.fold) for f in got] == [
        (2, 45, 0),
        (2, 0, 1),
        (2, 15, 1),
        (2, 30, 1),
        (2, 45, 1),
        (3, 0, 0),
    ]
    assert [f.utcoffset() for f in got] == [timedelta(hours=2)] + [timedelta(hours=1)] * 5
    assert_strictly_increasing(got)


def test_berlin_autumn_starting_in_the_second_pass() -> None:
    schedule = parse_schedule("*/15 * * * *", BERLIN)
    got = fires(schedule, datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=BERLIN), 4)
    assert as_utc(got) == [
        utc(2024, 10, 27, 1, 15),
        utc(2024, 10, 27, 1, 30),
        utc(2024, 10, 27, 1, 45),
        utc(2024, 10, 27, 2, 0),
    ]


def test_berlin_spring_hourly_skips_the_missing_hour() -> None:
    schedule = parse_schedule("0 * * * *", BERLIN)
    got = fires(schedule, datetime(2024, 3, 31, 0, 30, tzinfo=BERLIN), 3)
    assert [f.replace(tzinfo=None).hour for f in got] == [1, 3, 4]
    assert as_utc(got) == [utc(2024, 3, 31, 0), utc(2024, 3, 31, 1), utc(2024, 3, 31, 2)]


def test_new_york_autumn_hourly_fires_in_both_passes() -> None:
    schedule = parse_schedule("@hourly", NEW_YORK)
    got = fires(schedule, datetime(2024, 11, 3, 0, 30, tzinfo=NEW_YORK), 3)
    assert as_utc(got) == [utc(2024, 11, 3, 5), utc(2024, 11, 3, 6), utc(2024, 11, 3, 7)]
    assert [(f.hour, f.fold) for f in got] == [(1, 0), (1, 1), (2, 0)]


def test_new_york_spring_every_second_has_nothing_in_the_gap() -> None:
    schedule = parse_schedule("* * * * * *", NEW_YORK)
    start = NEW_YORK_SPRING - timedelta(seconds=2)
    got = fires(schedule, start, 4)
    assert as_utc(got) == [NEW_YORK_SPRING + n * SECOND for n in (-1, 0, 1, 2)]
    assert [f.replace(tzinfo=None).time().isoformat() for f in got[:2]] == ["01:59:59", "03:00:00"]


@pytest.mark.parametrize(("zone", "transition"), TRANSITIONS)
def test_ten_thousand_seconds_fires_across_a_transition(
    zone: ZoneInfo, transition: datetime
) -> None:
    expr = "*/7 * * * * *"
    start = transition - timedelta(hours=6)
    got = fires(parse_schedule(expr, zone), start, 10_000)
    assert_strictly_increasing(got)
    assert got[-1] > transition  # the sequence does cross the transition
    expected = Reference.parse(expr).fires_between(zone, start, got[-1].astimezone(UTC), SECOND)
    assert as_utc(got) == expected


@pytest.mark.parametrize(("zone", "transition"), TRANSITIONS)
@pytest.mark.parametrize(
    "expr",
    [
        "30 2 * * *",
        "30 1 * * *",
        "0 3 * * *",
        "*/15 * * * *",
        "0 * * * *",
        "0,30 1-3 * * *",
        "* 2 * * *",
        "45 */2 * * *",
        "59 1 * * *",
        "0 0 * * *",
    ],
)
@pytest.mark.parametrize("offset_minutes", [-600, -61, -30, 0, 15, 59, 75, 120])
def test_transitions_match_the_reference(
    zone: ZoneInfo, transition: datetime, expr: str, offset_minutes: int
) -> None:
    """Start before, at, inside the first and inside the second pass of each transition."""
    start = transition + timedelta(minutes=offset_minutes)
    end = transition + timedelta(hours=26)
    got = fires_until(parse_schedule(expr, zone), start.astimezone(zone), end)
    assert got == Reference.parse(expr).fires_between(zone, start, end, MINUTE)
    assert_strictly_increasing(got)


# -- random expressions against the reference -----------------------------------------------------


def _random_field(rng: random.Random, low: int, high: int) -> str:
    kind = rng.random()
    if kind < 0.25:
        return "*"
    if kind < 0.4:
        return f"*/{rng.randint(1, high - low + 1)}"
    if kind < 0.6:
        return str(rng.randint(low, high))
    if kind < 0.75:
        first = rng.randint(low, high)
        return f"{first}-{rng.randint(first, high)}"
    if kind < 0.85:
        first = rng.randint(low, high)
        return f"{first}-{rng.randint(first, high)}/{rng.randint(1, 4)}"
    values = sorted(rng.sample(range(low, high + 1), rng.randint(2, 4)))
    return ",".join(map(str, values))


def _random_expression(rng: random.Random) -> str:
    fields = [
        _random_field(rng, 0, 59),
        _random_field(rng, 0, 23),
        _random_field(rng, 1, 31),
        _random_field(rng, 1, 12),
        _random_field(rng, 0, 7),
    ]
    return " ".join(fields)


def test_random_expressions_match_the_reference_in_utc() -> None:
    rng = random.Random(20240331)
    checked = 0
    for _ in range(400):
        expr = _random_expression(rng)
        reference = Reference.parse(expr)
        try:
            schedule = parse_schedule(expr, "UTC")
        except InvalidScheduleError as exc:
            # Only a date that exists in no month ("31 in April") may be refused.
            assert "never fires" in str(exc), expr
            assert reference.next_utc(utc(2024, 1, 1)) is None, expr
            continue
        after = utc(2020, 1, 1) + timedelta(seconds=rng.randrange(10 * 365 * 86400))
        for _ in range(3):
            fire = schedule.next_after(after)
            assert fire == reference.next_utc(after), (expr, after)
            assert fire is not None
            after = fire
            checked += 1
    assert checked > 1000


def test_random_expressions_match_the_reference_across_transitions() -> None:
    rng = random.Random(20241027)
    transitions = [
        (BERLIN, BERLIN_SPRING),
        (BERLIN, BERLIN_AUTUMN),
        (NEW_YORK, NEW_YORK_SPRING),
        (NEW_YORK, NEW_YORK_AUTUMN),
    ]
    for _ in range(120):
        zone, transition = rng.choice(transitions)
        local_day = transition.astimezone(zone).day
        hour = rng.choice(["*", "1", "2", "3", "1-3", "2,3", "*/2", _random_field(rng, 0, 23)])
        around = f"{max(local_day - 1, 1)}-{min(local_day + 1, 31)}"
        dom = rng.choice(["*", "*", str(local_day), around])
        dow = rng.choice(["*", "*", "0", "1-5", "6,0"])
        expr = f"{_random_field(rng, 0, 59)} {hour} {dom} * {dow}"
        start = transition + timedelta(minutes=rng.randint(-150, 150), seconds=rng.choice([0, 30]))
        end = transition + timedelta(hours=26)
        got = fires_until(parse_schedule(expr, zone), start.astimezone(zone), end)
        assert got == Reference.parse(expr).fires_between(zone, start, end, MINUTE), (expr, start)


def test_workers_on_one_schedule_share_it_and_its_answers() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from goworker_py.schedule import shared_schedule

    zone = ZoneInfo("Europe/Berlin")
    shared = shared_schedule("*/7 * * * * *", zone)
    assert shared is shared_schedule("*/7 * * * * *", zone)
    assert shared is not shared_schedule("*/7 * * * * *", ZoneInfo("UTC"))
    fresh = parse_schedule("*/7 * * * * *", zone)
    start = datetime(2026, 10, 25, 0, 59, 50, tzinfo=timezone.utc)  # around a DST change
    instants = [start + timedelta(seconds=3 * i) for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(shared.next_after, instants * 4))
    assert answers == [fresh.next_after(t) for t in instants] * 4


# -- differential test: cron.c's main loop, simulated minute by minute ----------------------------

#: The zones of the differential test: none, 1-hour DST both hemispheres, Lord Howe's 30-minute
#: DST, Dublin's "negative" DST (winter time is the DST period in tzdata), Santiago's changes at
#: midnight (a skipped or repeated hour across a date boundary).
DIFFERENTIAL_ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "America/Santiago",
)
_MONTH_NAMES = tuple(_MONTHS)
_EPOCH_WALL = datetime(1970, 1, 1)


def _wall_minute(instant: datetime, zone: tzinfo) -> int:
    """cron.c's ``clockTime``: the local wall time, in whole minutes since the epoch."""
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return (int(instant.timestamp()) + int(offset.total_seconds())) // 60


def cron_c_fires(ref: Reference, zone: tzinfo, start: datetime, end: datetime) -> list[datetime]:
    """Fire instants in (start, end] of a 5-field job, as cron.c's main loop runs it.

    Written from Vixie cron's ``cron.c``: every real minute the daemon compares the wall clock
    (``timeRunning``) with its virtual clock and runs ``find_jobs`` -- wildcard jobs (minute or
    hour field starting with ``*``), fixed-time jobs, or both -- as its four cases say. A job
    that several virtual minutes select in the same real minute fires once: a schedule yields
    instants. The simulation starts four hours early, so its state is the daemon's own. It
    steps real minutes, which are the wall clock's minutes in any zone whose offsets are whole
    minutes (every zone today; not Dublin's 1916 -0:25:21).
    """

    def due(virtual: int, wild: bool, fixed: bool) -> bool:
        return (wild if ref.wildcard else fixed) and ref.matches(
            _EPOCH_WALL + timedelta(minutes=virtual)
        )

    moment = datetime.fromtimestamp(int(start.timestamp()) // 60 * 60, UTC) - timedelta(hours=4)
    virtual = _wall_minute(moment, zone)
    out: list[datetime] = []
    while moment < end:
        moment += MINUTE
        running = _wall_minute(moment, zone)
        diff = running - virtual
        fired = False
        if diff == 1:  # the usual case
            virtual = running
            fired = due(running, True, True)
        elif 0 < diff <= 5:  # woke up late: every job of every virtual minute
            while virtual < running:
                virtual += 1
                fired = due(virtual, True, True) or fired
        elif 5 < diff <= 180:  # DST begins: wildcards now, fixed-time jobs of skipped minutes
            fired = due(running, True, False)
            while virtual < running:
                virtual += 1
                fired = due(virtual, False, True) or fired
        elif -180 <= diff <= 0:  # DST ends: wildcards only until the virtual clock is reached
            fired = due(running, True, False)
        else:  # the clock jumped a lot
            virtual = running
            fired = due(running, True, True)
        if fired and start < moment <= end:
            out.append(moment)
    return out


def offset_changes(zone: tzinfo, year: int) -> list[datetime]:
    """The instants of ``year`` at which ``zone``'s UTC offset changes (probe, then bisect)."""
    out: list[datetime] = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    while moment.year == year:
        later = moment + timedelta(hours=6)
        if later.astimezone(zone).utcoffset() != moment.astimezone(zone).utcoffset():
            low, high = int(moment.timestamp()), int(later.timestamp())
            before = moment.astimezone(zone).utcoffset()
            while high - low > 1:
                mid = (low + high) // 2
                if datetime.fromtimestamp(mid, zone).utcoffset() == before:
                    low = mid
                else:
                    high = mid
            out.append(datetime.fromtimestamp(high, UTC))
        moment = later
    return out


def test_offset_changes_finds_the_real_transitions() -> None:
    assert offset_changes(BERLIN, 2024) == [BERLIN_SPRING, BERLIN_AUTUMN]
    assert offset_changes(ZoneInfo("Australia/Lord_Howe"), 2024) == [
        utc(2024, 4, 6, 15),  # 02:00 +11 -> 01:30 +10:30
        utc(2024, 10, 5, 15, 30),  # 02:00 +10:30 -> 02:30 +11
    ]
    assert offset_changes(ZoneInfo("UTC"), 2024) == []


def test_the_cron_c_reference_agrees_with_known_fire_times() -> None:
    start, end = NEW_YORK_AUTUMN - 3 * HOUR, NEW_YORK_AUTUMN + 3 * HOUR
    assert cron_c_fires(Reference.parse("30 1 * * *"), NEW_YORK, start, end) == [
        utc(2024, 11, 3, 5, 30)
    ]
    assert cron_c_fires(Reference.parse("30 * * * *"), NEW_YORK, start, end) == [
        NEW_YORK_AUTUMN + (n - 3) * HOUR + 30 * MINUTE for n in range(6)
    ]
    start, end = NEW_YORK_SPRING - 3 * HOUR, NEW_YORK_SPRING + 3 * HOUR
    assert cron_c_fires(Reference.parse("0,30 2 * * *"), NEW_YORK, start, end) == [NEW_YORK_SPRING]
    assert cron_c_fires(Reference.parse("*/30 2 * * *"), NEW_YORK, start, end) == []


def _pick_range(rng: random.Random, low: int, high: int, width: int) -> tuple[int, int]:
    first = rng.randint(low, high)
    return first, min(high, first + rng.randint(0, width))


def _month_field(rng: random.Random, month: int) -> str:
    """A month field, most of the time naming ``month``, with names in ranges and steps."""

    def name(value: int) -> str:
        text = _MONTH_NAMES[value - 1]
        return rng.choice([text, text.upper(), text.title(), str(value)])

    first, last = max(1, month - rng.randint(0, 3)), min(12, month + rng.randint(0, 3))
    odd_or_even = "jan-dec/2" if month % 2 else "feb-dec/2"
    choices = {
        "*": 3,
        name(month): 2,
        f"{name(first)}-{name(last)}": 3,
        f"{name(month)}-{name(12)}/{rng.randint(1, 5)}": 2,
        f"{name(first)}/{rng.randint(1, 3)}": 1,  # the seed's "a/n"
        odd_or_even: 1,
        f"*/{rng.randint(1, 4)}": 1,
        f"{name(first)},{name(month)}": 1,
        _MONTH_NAMES[(month + 5) % 12]: 1,  # elsewhere in the year
    }
    return rng.choices(list(choices), weights=list(choices.values()))[0]


def _dow_field(rng: random.Random, weekday: int) -> str:
    """A day-of-week field (0 = Sunday), most of the time naming ``weekday``, names in ranges."""

    def name(value: int) -> str:
        if value == 7:
            return "7"
        text = _WEEKDAY_NAMES[value]
        return rng.choice([text, text.upper(), str(value)])

    first = max(0, weekday - rng.randint(0, 3))
    last = min(7, weekday + rng.randint(0, 3))
    sunday = "sat-7" if weekday == 0 else f"{name(weekday)}-{name(rng.randint(weekday, 7))}"
    choices = {
        "*": 4,
        name(weekday): 2,
        f"{name(first)}-{name(last)}": 3,
        f"{name(first)}-{name(7)}/{rng.randint(1, 3)}": 1,
        sunday: 1,
        "mon-fri": 1,
        "sun-sat/2": 1,
        f"*/{rng.randint(2, 7)}": 1,
    }
    return rng.choices(list(choices), weights=list(choices.values()))[0]


def _differential_expression(rng: random.Random, near: datetime) -> str:
    """A 5-field expression whose fire times cluster around the local wall time ``near``."""
    hour, day = near.hour, near.day
    first, last = _pick_range(rng, 0, 59, 40)
    minutes = {
        "*": 2,
        f"*/{rng.randint(2, 30)}": 2,
        str(rng.choice([0, 15, 30, 45, rng.randint(0, 59)])): 3,
        "0,30": 1,
        f"{first}-{last}": 1,
        f"{first}-{last}/{rng.randint(2, 20)}": 1,
        _random_field(rng, 0, 59): 1,
    }
    minute = rng.choices(list(minutes), weights=list(minutes.values()))[0]
    hour_choices = {
        "*": 2,
        str(hour): 2,
        str((hour + 1) % 24): 3,  # the skipped or repeated hour when ``near`` precedes a change
        f"{max(hour - 1, 0)}-{min(hour + 1, 23)}": 2,
        f"*/{rng.randint(2, 6)}": 1,
        "0-23": 1,
        f"{hour},{(hour + 12) % 24}": 1,
        _random_field(rng, 0, 23): 1,
    }
    hours = rng.choices(list(hour_choices), weights=list(hour_choices.values()))[0]
    doms = {"*": 4, str(day): 2, f"{max(day - 1, 1)}-{min(day + 1, 31)}": 2, "*/2": 1, "1-15": 1}
    dom = rng.choices(list(doms), weights=list(doms.values()))[0]
    month = _month_field(rng, near.month)
    dow = _dow_field(rng, near.isoweekday() % 7)
    return f"{minute} {hours} {dom} {month} {dow}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zone_name", DIFFERENTIAL_ZONES)
def test_differential_against_cron_c(zone_name: str) -> None:
    """Random expressions, names in ranges and steps, around every offset change of two years.

    The schedule's fire times in a window must be exactly the simulated cron.c daemon's. UTC
    has no change: its windows lie at random instants of the two years.
    """
    zone = ZoneInfo(zone_name)
    rng = random.Random(f"differential-{zone_name}")
    changes = offset_changes(zone, 2024) + offset_changes(zone, 2025)
    if not changes:
        changes = [
            utc(2024, 1, 1) + timedelta(minutes=rng.randrange(2 * 525_600)) for _ in range(4)
        ]
    assert len(changes) >= 4
    compared = fired = 0
    for change in changes:
        for _ in range(24):
            near = (change - timedelta(seconds=rng.choice([1, 1800, 3600]))).astimezone(zone)
            expr = _differential_expression(rng, near)
            start = change + timedelta(minutes=rng.randint(-300, 150), seconds=rng.choice([0, 30]))
            end = change + timedelta(hours=rng.choice([4, 8]))
            try:
                schedule = parse_schedule(expr, zone)
            except InvalidScheduleError as exc:
                assert "never fires" in str(exc), expr
                continue
            expected = cron_c_fires(Reference.parse(expr), zone, start, end)
            got = fires_until(schedule, start.astimezone(zone), end)
            assert got == expected, (expr, zone_name, start)
            compared += 1
            fired += len(got)
    assert compared >= 4 * 20
    assert fired > 500


def test_random_expressions_with_names_match_the_reference_in_utc() -> None:
    """Next fire times from random instants, names in ranges and steps, against a day scan."""
    rng = random.Random(20240229)
    checked = 0
    for _ in range(300):
        near = utc(2000, 1, 1) + timedelta(minutes=rng.randrange(60 * 525_600))
        expr = _differential_expression(rng, near)
        if rng.random() < 0.3:  # dates that some months lack
            parts = expr.split()
            parts[2] = rng.choice(["29", "30", "31", "30,31", "*/29", "31-31"])
            expr = " ".join(parts)
        reference = Reference.parse(expr)
        try:
            schedule = parse_schedule(expr, "UTC")
        except InvalidScheduleError as exc:
            assert "never fires" in str(exc), expr
            assert reference.next_utc(utc(2000, 1, 1), years=400) is None, expr
            continue
        after = near - timedelta(seconds=rng.randrange(86400 * 60))
        for _ in range(3):
            fire = schedule.next_after(after)
            assert fire == reference.next_utc(after, years=60), (expr, after)
            assert fire is not None
            after = fire
            checked += 1
    assert checked > 600


@pytest.mark.parametrize("zone_name", DIFFERENTIAL_ZONES[1:])
def test_every_zone_s_changes_match_cron_c_from_every_start(zone_name: str) -> None:
    """Jobs in, before and after each skipped or repeated stretch of 2024, from 12 starts.

    Fixed-time jobs in a skipped stretch fire as the clocks jump; in a repeated one, only in its
    first pass; wildcard jobs follow real time. Starts lie before the change, in either pass,
    on the change itself, and between whole seconds.
    """
    zone = ZoneInfo(zone_name)
    jumps = 0
    for change in offset_changes(zone, 2024):
        before = (change - SECOND).astimezone(zone)  # the last wall time before the change
        hour, following = before.hour, (before.hour + 1) % 24
        exprs = [f"{minute} {following} * * *" for minute in (0, 15, 29, 30, 45, 59)]
        exprs += [f"{minute} {hour} * * *" for minute in (0, 30, 59)]
        exprs += [
            f"0,20,40 {hour},{following} * * *",
            f"*/10 {following} * * *",
            f"* {hour} * * *",
            "*/15 * * * *",
            "0 */2 * * *",
            f"30 {following} {before.day} {_MONTH_NAMES[before.month - 1]} *",
        ]
        low, high = change - 4 * HOUR, change + 3 * HOUR
        for expr in exprs:
            schedule = parse_schedule(expr, zone)
            expected = cron_c_fires(Reference.parse(expr), zone, low, high)
            jumps += change in expected and not Reference.parse(expr).matches(
                change.astimezone(zone).replace(tzinfo=None)
            )
            for minutes in (-150, -61, -30, -1, 0, 1, 15, 29, 30, 59, 75, 119):
                start = change + timedelta(minutes=minutes, seconds=minutes % 2 * 30)
                got = fires_until(schedule, start.astimezone(zone), high)
                assert got == [fire for fire in expected if fire > start], (expr, start)
    assert jumps >= 4  # fixed-time jobs in the skipped stretch did fire as the clocks jumped
