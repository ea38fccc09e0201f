"""Schedules: when a worker's runs fire.

Accepted expressions (``validate_schedule`` checks them, ``Schedule.parse`` builds them):

- 5 fields, read exactly as crontab reads them: ``minute hour day-of-month month day-of-week``.
  Day-of-week ``0`` and ``7`` are Sunday, names ``sun..sat`` and ``jan..dec`` work, as do
  ``*/n``, ``a-b``, ``a-b/n`` and lists. When both day-of-month and day-of-week are restricted
  (neither starts with ``*``) a day matching **either** fires — cron's rule, not APScheduler's.
- 6 fields: a leading seconds field, then the 5 above.
- ``@yearly @annually @monthly @weekly @daily @midnight @hourly`` and ``@every <duration>``
  (``1h30m``, ``45s``, ``500ms``; an absolute interval, unaffected by time zones).
- An optional ``TZ=Area/City`` (or ``CRON_TZ=``) prefix; otherwise the zone given to
  ``Schedule.parse`` or the machine's local zone, like cron.

Fire times are computed by APScheduler's ``CronTrigger`` over *wall-clock* time (the trigger
runs in UTC, where no daylight-saving change exists); this module then maps wall-clock times
onto real instants in the schedule's zone. That mapping is where DST is handled, the way
Vixie cron handles it:

- A job with a fixed hour (``30 2 * * *``) fires once per day whatever the clocks do: a fire
  time that falls into the hour skipped in spring fires right when the clocks jump (03:00), and
  the repeated hour in autumn does not fire it a second time.
- A job whose hour field is ``*`` (``*/15 * * * *``, every second, ``@hourly``) follows real
  time: it fires in both passes of a repeated hour and has nothing to fire in a skipped one.

An expression that can never fire (``0 0 30 2 *``) is rejected.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from goworker_py.errors import InvalidScheduleError

#: Returned by :func:`get_backoff_for_next_schedule` when there is no next fire time.
NO_CRON_BACKOFF = -1.0

#: The seed's ``NoCronExpress``: no schedule, run once.
NO_CRON_EXPRESSION = ""

_UTC = timezone.utc
_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_FIELD_CHARS = re.compile(r"^[0-9A-Za-z*,/-]+$")
_NUMERIC_LIMITS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12))
_STEPPED_ITEM = re.compile(r"^(\*|\d+)(?:-(\d+))?/(\d+)$")
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Longer than any daylight-saving shift: the search for a zone's next offset change steps by it.
_PROBE_STEP = timedelta(days=1)


class Schedule(Protocol):
    """A parsed schedule: the fire times after a given instant."""

    expression: str

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after`` (aware), or ``None`` if there is none."""


def _zone(name: str | tzinfo | None) -> tzinfo:
    if name is None:
        from tzlocal import get_localzone

        return get_localzone()
    if isinstance(name, tzinfo):
        return name
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidScheduleError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from exc


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``1h30m``, ``45s``, ``500ms``, ``1.5h``) into seconds."""
    compact = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise InvalidScheduleError(
            f"invalid duration {text!r}: write it like '1h30m', '45s' or '500ms' "
            "(units h, m, s, ms)"
        )
    if total <= 0:
        raise InvalidScheduleError(f"invalid duration {text!r}: it must be longer than zero")
    return total


def _dow_value(token: str, expr: str) -> int:
    lowered = token.lower()
    if lowered in _DOW_NAMES:
        return _DOW_NAMES.index(lowered)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token)
    raise InvalidScheduleError(
        f"invalid day-of-week {token!r} in {expr!r}: use 0-7 (0 and 7 are Sunday) or sun..sat"
    )


def _translate_day_of_week(value: str, expr: str) -> str:
    """Turn a crontab day-of-week field (0 = Sunday) into an APScheduler one (0 = Monday).

    The field is expanded to the set of days it names and written back as day names, so
    ranges and steps keep crontab's meaning (``*/2`` is Sunday, Tuesday, Thursday, Saturday).
    """
    days: set[int] = set()
    for item in value.split(","):
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidScheduleError(f"invalid step {item!r} in day-of-week of {expr!r}")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, _, high = base.partition("-")
            first, last = _dow_value(low, expr), _dow_value(high, expr)
            if first > last:
                raise InvalidScheduleError(
                    f"invalid day-of-week range {base!r} in {expr!r}: the first day must not "
                    "come after the last (write 'fri-sat,sun' instead of 'fri-sun')"
                )
        else:
            first = _dow_value(base, expr)
            last = 6 if step_text else first
        days.update(day % 7 for day in range(first, last + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_DOW_NAMES[day] for day in sorted(days))


def _narrow_steps(value: str, low: int, high: int) -> str:
    """Write numeric steps wider than their range (``*/60``, ``9-17/10``) as their one value.

    crontab and the seed accept them (only the first value of the range fires); APScheduler
    rejects a step larger than its range, so such items are spelled out for it.
    """
    items = []
    for item in value.split(","):
        match = _STEPPED_ITEM.match(item)
        if match:
            start_text, end_text, step_text = match.groups()
            if not (start_text == "*" and end_text is not None):
                first = low if start_text == "*" else int(start_text)
                last = int(end_text) if end_text is not None else high
                if int(step_text) > 0 and first <= last < first + int(step_text):
                    item = str(first)
        items.append(item)
    return ",".join(items)


_UTC_NAMES = frozenset(
    ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/GMT", "GMT", "Etc/Universal", "Universal", "Zulu")
)


def _fixed_offset(zone: tzinfo) -> timedelta | None:
    """The zone's constant UTC offset, or None if it may change (daylight saving, history)."""
    if isinstance(zone, timezone):
        return zone.utcoffset(None)
    if isinstance(zone, ZoneInfo) and zone.key in _UTC_NAMES:
        return timedelta(0)
    return None


#: Answers of ``CronSchedule.next_after`` remembered per schedule.
_MEMO_SIZE = 16


@dataclass
class CronSchedule:
    """A crontab expression (5 or 6 fields) in a time zone. See the module docstring."""

    expression: str
    zone: tzinfo
    fields: tuple[str, str, str, str, str, str]
    _triggers: list[CronTrigger] = field(init=False, repr=False)
    _fixed_hour: bool = field(init=False, repr=False)
    _memo: dict[object, datetime | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        _, _, hour, dom, _, dow = self.fields
        for name, value in zip(_FIELD_NAMES, self.fields, strict=True):
            if not _FIELD_CHARS.match(value):
                raise InvalidScheduleError(
                    f"invalid {name} field {value!r} in {self.expression!r}: use numbers, names, "
                    "'*', ranges 'a-b', steps '/n' and lists 'a,b'"
                )
        aps_dow = _translate_day_of_week(dow, self.expression)
        aps_second, aps_minute, aps_hour, aps_dom, aps_month = (
            _narrow_steps(value, low, high)
            for value, (low, high) in zip(self.fields[:5], _NUMERIC_LIMITS, strict=True)
        )
        common = {"second": aps_second, "minute": aps_minute, "hour": aps_hour, "month": aps_month}
        # cron's rule: with both day fields restricted, a day matching either one fires.
        if not dom.startswith("*") and not dow.startswith("*"):
            variants = [(aps_dom, "*"), ("*", aps_dow)] if aps_dow != "*" else [("*", "*")]
        else:
            variants = [(aps_dom, aps_dow)]
        try:
            self._triggers = [
                CronTrigger(year="*", day=day, day_of_week=weekday, timezone=_UTC, **common)
                for day, weekday in variants
            ]
        except ValueError as exc:
            raise InvalidScheduleError(
                f"invalid cron expression {self.expression!r}: {exc}"
            ) from exc
        if len(self._triggers) > 1:
            # A day-of-month variant that never fires ("30 in February") would make every
            # search scan to year 9999 (~0.1 s); the day-of-week variant always fires.
            epoch = datetime(1970, 1, 1, tzinfo=_UTC)
            self._triggers = [
                trigger
                for trigger in self._triggers
                if trigger.get_next_fire_time(None, epoch) is not None
            ]
        self._fixed_hour = hour not in ("*", "*/1")
        self._fixed_offset = _fixed_offset(self.zone)

    # -- wall-clock matching (APScheduler, in UTC where no DST exists) ---------------------------

    def _match(self, wall: datetime, strict: bool) -> datetime | None:
        """First matching wall-clock time at or after (or strictly after) naive ``wall``."""
        start = wall.replace(tzinfo=_UTC)
        if strict:
            start += timedelta(microseconds=1)
        best: datetime | None = None
        for trigger in self._triggers:
            found = trigger.get_next_fire_time(None, start)
            if found is not None and (best is None or found < best):
                best = found
        return None if best is None else best.replace(tzinfo=None)

    # -- mapping wall-clock times onto instants ------------------------------------------------

    def _offset(self, instant: datetime) -> timedelta:
        offset = instant.astimezone(self.zone).utcoffset()
        return offset if offset is not None else timedelta(0)

    def _offset_change(self, start: datetime, end: datetime) -> datetime | None:
        """The first instant in (start, end] whose UTC offset differs from ``start``'s."""
        base = self._offset(start)
        low = start
        while low < end:
            high = min(low + _PROBE_STEP, end)
            if self._offset(high) != base:
                lo_s, hi_s = math.floor(low.timestamp()), math.ceil(high.timestamp())
                while hi_s - lo_s > 1:
                    mid = (lo_s + hi_s) // 2
                    if self._offset(datetime.fromtimestamp(mid, _UTC)) != base:
                        hi_s = mid
                    else:
                        lo_s = mid
                return datetime.fromtimestamp(hi_s, _UTC)
            low = high
        return None

    def _repeat_end(self, instant: datetime) -> datetime | None:
        """The wall time ending the repeated (autumn) hour whose second pass holds ``instant``."""
        offset = self._offset(instant)
        earlier = instant - _PROBE_STEP
        if self._offset(earlier) <= offset:
            return None
        change = self._offset_change(earlier, instant)
        if change is None:
            return None
        end_wall = (change + self._offset(earlier)).replace(tzinfo=None)
        return end_wall if (instant + offset).replace(tzinfo=None) < end_wall else None

    def next_after(self, after: datetime) -> datetime | None:
        # Many shards (and workers) share one parsed schedule and ask for the fire time after
        # the same instant: remember the last few answers.
        key: object = (after, after.fold) if after.tzinfo is None else after.timestamp()
        memo = self._memo
        try:
            return memo[key]
        except KeyError:
            pass
        try:
            result = self._next_after(after)
        except OverflowError:  # the next fire time would lie past the year 9999
            result = None
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[key] = result
        return result

    def _next_after(self, after: datetime) -> datetime | None:
        if after.tzinfo is None:
            after = after.replace(tzinfo=self.zone)
        if self._fixed_offset is not None:
            # A zone without daylight saving: wall time and instants map one to one.
            offset = self._fixed_offset
            wall = (after.astimezone(_UTC) + offset).replace(tzinfo=None)
            found = self._match(wall, strict=True)
            if found is None:
                return None
            return (found.replace(tzinfo=_UTC) - offset).astimezone(self.zone)
        segment_start = after.astimezone(_UTC)
        strict = True
        repeat_end = self._repeat_end(segment_start) if self._fixed_hour else None
        # Each pass handles one stretch of constant UTC offset; a year holds few of them.
        for _ in range(64):
            offset = self._offset(segment_start)
            wall = (segment_start + offset).replace(tzinfo=None)
            candidate = self._match(wall, strict)
            if candidate is not None and repeat_end is not None and candidate < repeat_end:
                candidate = self._match(repeat_end, strict=False)
            if candidate is None:
                return None
            instant = candidate.replace(tzinfo=_UTC) - offset
            change = self._offset_change(segment_start, instant)
            if change is None:
                return instant.astimezone(self.zone)
            new_offset = self._offset(change)
            gap_from = (change + offset).replace(tzinfo=None)
            gap_to = (change + new_offset).replace(tzinfo=None)
            if new_offset > offset:
                # Spring forward: wall times in [gap_from, gap_to) do not exist. A fixed-hour job
                # due in the gap fires when the clocks jump, so that day's run is not lost.
                if self._fixed_hour:
                    due = self._match(gap_from, strict=False)
                    if due is not None and due < gap_to:
                        return change.astimezone(self.zone)
                repeat_end = None
            else:
                # Fall back: wall times in [gap_to, gap_from) come round again; a fixed-hour
                # job already fired them in the first pass.
                repeat_end = gap_from if self._fixed_hour else None
            segment_start, strict = change, False
        return None


@dataclass
class IntervalSchedule:
    """``@every <duration>``: fires every ``interval`` seconds, counted in real time."""

    expression: str
    interval: float

    def next_after(self, after: datetime) -> datetime | None:
        if after.tzinfo is None:
            after = after.astimezone()
        try:
            # Add in UTC: aware arithmetic in a DST zone adds wall-clock time, not real time.
            instant = after.astimezone(_UTC) + timedelta(seconds=self.interval)
            return instant.astimezone(after.tzinfo)
        except OverflowError:  # past the year 9999
            return None


@functools.lru_cache(maxsize=256)
def shared_schedule(expr: str, zone: tzinfo) -> Schedule:
    """:func:`parse_schedule`, one object per (expression, zone) in the process.

    Workers on the same schedule share it, and with it the answers it remembers: a thousand
    workers firing together compute their next fire time once, not a thousand times.
    """
    return parse_schedule(expr, zone)


def parse_schedule(expr: str, zone: str | tzinfo | None = None) -> Schedule:
    """Parse ``expr`` into a :class:`Schedule`; raise :class:`InvalidScheduleError` if it is bad.

    ``zone`` is the default time zone (an IANA name or a ``tzinfo``); a ``TZ=`` / ``CRON_TZ=``
    prefix in the expression wins over it; ``None`` means the machine's local zone.
    """
    if not isinstance(expr, str):
        raise InvalidScheduleError(f"a schedule must be a string, got {type(expr).__name__}")
    text = expr.strip()
    prefix = re.match(r"^(?:CRON_)?TZ=(\S+)\s+", text)
    if prefix:
        zone = prefix.group(1)
        text = text[prefix.end() :]
    if not text:
        raise InvalidScheduleError(f"empty schedule {expr!r}: give a cron expression or omit it")
    if text.startswith("@"):
        word, _, rest = text.partition(" ")
        if word == "@every":
            return IntervalSchedule(expression=expr, interval=parse_duration(rest))
        if word not in _DESCRIPTORS or rest.strip():
            raise InvalidScheduleError(
                f"unknown descriptor {text!r}: use one of {', '.join(_DESCRIPTORS)} "
                "or '@every 1h30m'"
            )
        text = _DESCRIPTORS[word]
    parts = text.split()
    if len(parts) == 5:
        parts.insert(0, "0")
    if len(parts) != 6:
        raise InvalidScheduleError(
            f"invalid cron expression {expr!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week) or 6 (a leading seconds field), got {len(parts)}"
        )
    schedule = CronSchedule(
        expression=expr,
        zone=_zone(zone),
        fields=tuple(parts),  # type: ignore[arg-type]
    )
    if schedule.next_after(datetime(1970, 1, 1, tzinfo=_UTC)) is None:
        raise InvalidScheduleError(
            f"cron expression {expr!r} never fires (no date matches it): check day and month"
        )
    return schedule


def validate_schedule(expr: str) -> None:
    """Raise :class:`InvalidScheduleError` unless ``expr`` is a schedule that can fire."""
    parse_schedule(expr, _UTC)


def next_fire_time(expr: str, after: datetime | None = None) -> datetime | None:
    """The first fire time of ``expr`` strictly after ``after`` (default: now)."""
    schedule = parse_schedule(expr)
    return schedule.next_after(after if after is not None else datetime.now(_UTC))


def get_backoff_for_next_schedule(expr: str, now: datetime | None = None) -> float:
    """Seconds from ``now`` until ``expr`` next fires; :data:`NO_CRON_BACKOFF` if it never will.

    An empty expression (no schedule) also gives :data:`NO_CRON_BACKOFF`, as in the seed;
    a malformed one raises :class:`InvalidScheduleError` instead of hiding the mistake.
    """
    if not expr or not expr.strip():
        return NO_CRON_BACKOFF
    current = now if now is not None else datetime.now(_UTC)
    schedule = parse_schedule(expr)
    if current.tzinfo is None:
        # A naive "now" is a wall time in the schedule's zone, as next_after reads it.
        zone = getattr(schedule, "zone", None)
        current = current.replace(tzinfo=zone) if zone is not None else current.astimezone()
    fire = schedule.next_after(current)
    if fire is None:
        return NO_CRON_BACKOFF
    # Timestamps, not ``fire - current``: two datetimes in the same zone subtract as wall
    # times, which is an hour off across a daylight-saving change.
    return max(fire.timestamp() - current.timestamp(), 0.0)
