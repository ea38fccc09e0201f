"""Schedules: when a worker's runs fire.

Accepted expressions (``validate_schedule`` checks them, ``parse_schedule`` builds them):

- 5 fields, read exactly as crontab reads them: ``minute hour day-of-month month day-of-week``.
  Day-of-week ``0`` and ``7`` are Sunday; names ``sun..sat`` and ``jan..dec`` work wherever a
  value does (``jan-jun``, ``mon-fri``, ``jan-dec/2``); so do ``*/n``, ``a-b``, ``a-b/n`` and
  lists. When both day-of-month and day-of-week are restricted (neither starts with ``*``) a
  day matching **either** fires -- cron's rule. :mod:`goworker_py.cron` parses the fields.
- 6 fields: a leading seconds field, then the 5 above.
- ``@yearly @annually @monthly @weekly @daily @midnight @hourly`` and ``@every <duration>``
  (``1h30m``, ``45s``, ``500ms``; an absolute interval, unaffected by time zones; at least 1ms).
- An optional ``TZ=Area/City`` (or ``CRON_TZ=``) prefix; otherwise the zone given to
  ``parse_schedule`` or the machine's local zone, like cron.

Fire times are found over *wall-clock* time (:class:`goworker_py.cron.CronFields`); this module
maps wall-clock times onto real instants in the schedule's zone. Across daylight-saving changes
it follows cron.c (Vixie cron's main loop):

- A *wildcard* job -- its minute or its hour field starts with ``*`` (``*/15 * * * *``,
  ``* 2 * * *``, ``0 */2 * * *``, ``@hourly``, every second) -- follows real time: it fires at
  every matching instant, in both passes of a repeated hour, and has nothing to fire in a
  skipped one.
- Any other job (``30 2 * * *``) fires once per wall-clock time whatever the clocks do: a time
  that falls into a skipped stretch fires right when the clocks jump (once, however many of
  its times the stretch held), and the second pass of a repeated stretch fires nothing.
  (cron.c treats a jump of more than 3 hours as a clock reset and drops those skipped runs, as
  when Samoa skipped 30 December 2011; here they still fire once, at the jump.)

No fire is lost however far ahead it lies: the search needs no list of the zone's changes, only
the zone's offsets around the fire time it found. An expression that can never fire
(``0 0 30 2 *``) is rejected.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from goworker_py.cron import CronFields, parse_fields, shown
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
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|h|m|s)", re.ASCII)
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
#: The shortest ``@every`` interval: below it, fire times would repeat (microsecond clock).
_MIN_INTERVAL = 0.001
_MAX_INTERVAL = timedelta.max.total_seconds()
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)


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
    """Parse a Go-style duration (``1h30m``, ``45s``, ``500ms``, ``1.5h``) into seconds.

    ASCII digits only, and at least 1ms: a shorter interval would give fire times the
    microsecond clock cannot tell apart (a worker spinning on the same instant).
    """
    compact = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise InvalidScheduleError(
            f"invalid duration {shown(text)}: write it like '1h30m', '45s' or '500ms' "
            "(digits 0-9, units h, m, s, ms)"
        )
    if total <= 0:
        raise InvalidScheduleError(f"invalid duration {shown(text)}: it must be longer than zero")
    if total < _MIN_INTERVAL:
        raise InvalidScheduleError(f"invalid duration {shown(text)}: it must be at least 1ms")
    return total


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


def _second_after(wall: datetime) -> datetime:
    """The first whole second strictly after ``wall``: fire times are whole seconds."""
    return wall.replace(microsecond=0) + _SECOND


#: Answers of ``CronSchedule.next_after`` remembered per schedule.
_MEMO_SIZE = 16


@dataclass
class CronSchedule:
    """A crontab expression (5 or 6 fields) in a time zone. See the module docstring."""

    expression: str
    zone: tzinfo
    cron: CronFields
    _fixed: timedelta | None = field(init=False, repr=False)
    _memo: dict[datetime, datetime | None] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._fixed = _fixed_offset(self.zone)

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``; a naive ``after`` is a wall time here."""
        try:
            if after.tzinfo is None:
                after = after.replace(tzinfo=self.zone)
            # The instant (a naive UTC datetime, not a float timestamp, which loses the
            # microseconds by the year 3000) is both the search's start and the memo's key. Fire
            # times are whole seconds, so the fire time after ``after`` is the one after its
            # whole second: workers starting in the same second share one answer.
            start = after.astimezone(_UTC).replace(tzinfo=None, microsecond=0)
        except OverflowError:
            return None
        # Many shards (and workers) share one parsed schedule and ask for the fire time after
        # the same instant: remember the last few answers.
        memo = self._memo
        try:
            return memo[start]
        except KeyError:
            pass
        try:
            found = self._search(start)
            result = None if found is None else found.replace(tzinfo=_UTC).astimezone(self.zone)
        except OverflowError:  # the next fire time would lie past the year 9999
            result = None
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[start] = result
        return result

    # -- mapping wall-clock times onto instants (naive UTC datetimes) ------------------------------

    def _offsets(self, wall: datetime) -> tuple[timedelta, timedelta]:
        """The UTC offsets of naive ``wall`` with fold 0 and fold 1 (PEP 495).

        Equal: ``wall`` exists once. First larger: it exists twice (the clocks went back; fold 0
        is the first pass). First smaller: it does not exist (the clocks jumped over it).
        """
        zero = timedelta(0)
        first = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        return first or zero, second or zero

    def _offset_at(self, instant: datetime) -> timedelta | None:
        return instant.replace(tzinfo=_UTC).astimezone(self.zone).utcoffset()

    def _change(self, low: datetime, high: datetime, before: timedelta) -> datetime:
        """The instant in (low, high] at which the offset stops being ``before``.

        ``low`` has the offset ``before``, ``high`` the next one; the two are at most one
        daylight-saving shift apart, so bisecting whole seconds takes about a dozen steps.
        """
        lo = (low - _EPOCH) // _SECOND
        hi = -((_EPOCH - high) // _SECOND)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._offset_at(_EPOCH + mid * _SECOND) != before:
                hi = mid
            else:
                lo = mid
        return _EPOCH + hi * _SECOND

    def _search(self, start: datetime) -> datetime | None:
        """The first fire instant strictly after ``start`` (both naive UTC)."""
        cron = self.cron
        if self._fixed is not None:
            # A zone without daylight saving: wall time and instants map one to one.
            found = cron.next_match(_second_after(start + self._fixed))
            return None if found is None else found - self._fixed
        local = start.replace(tzinfo=_UTC).astimezone(self.zone)
        wall = local.replace(tzinfo=None, fold=0)
        first_offset, second_offset = self._offsets(wall)
        if first_offset <= second_offset:
            return self._walk(_second_after(wall))
        # ``start`` lies in a stretch of wall time the clocks repeat, [repeat_from, repeat_end):
        # walking on in wall time would skip or revisit part of it.
        change = self._change(wall - first_offset, wall - second_offset, first_offset)
        repeat_from, repeat_end = change + second_offset, change + first_offset
        found = cron.next_match(_second_after(wall))
        if local.fold == 0:  # in the first pass: the rest of it, then (wildcards) the second
            if found is not None and found < repeat_end:
                return found - first_offset
            if cron.wildcard:
                found = cron.next_match(repeat_from)
                if found is not None and found < repeat_end:
                    return found - second_offset
        elif cron.wildcard and found is not None and found < repeat_end:
            return found - second_offset  # in the second pass: only wildcards fire again
        return self._walk(repeat_end)

    def _walk(self, wall: datetime) -> datetime | None:
        """The first fire instant whose wall time is at or after ``wall``, met in wall order.

        The caller starts outside any repeated stretch, so a wall time met twice is met in its
        first pass (fold 0). A wall time the clocks skip is a fire at the jump for a fixed-time
        job; a wildcard job has nothing there and the walk goes on after the jump.
        """
        cron = self.cron
        while True:
            found = cron.next_match(wall)
            if found is None:
                return None
            first_offset, second_offset = self._offsets(found)
            if first_offset >= second_offset:
                return found - first_offset
            change = self._change(found - second_offset, found - first_offset, first_offset)
            if not cron.wildcard:
                return change
            wall = change + second_offset


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
        word, *others = text.split(None, 1)
        rest = others[0] if others else ""
        if word == "@every":
            interval = parse_duration(rest)
            if not interval <= _MAX_INTERVAL:
                raise InvalidScheduleError(
                    f"schedule {shown(expr)} never fires: its interval is longer than "
                    "any date can reach"
                )
            return IntervalSchedule(expression=expr, interval=interval)
        if word not in _DESCRIPTORS or rest.strip():
            raise InvalidScheduleError(
                f"unknown descriptor {shown(text)}: use one of {', '.join(_DESCRIPTORS)} "
                "or '@every 1h30m'"
            )
        text = _DESCRIPTORS[word]
    parts = text.split()
    if len(parts) == 5:
        parts.insert(0, "0")
    if len(parts) != 6:
        raise InvalidScheduleError(
            f"invalid cron expression {shown(expr)}: expected 5 fields (minute hour day-of-month "
            f"month day-of-week) or 6 (a leading seconds field), got {len(parts)}"
        )
    return CronSchedule(expression=expr, zone=_zone(zone), cron=parse_fields(tuple(parts), expr))


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
