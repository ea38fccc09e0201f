"""B-cron bench_cron_calc: the cost of computing fire times and of rejecting a bad schedule.

Issue #10 §1.7 sets the goals: at most 1 ms per ``next_fire_time`` call for any valid
expression, at most 50 ms to reject one that can never fire. Measured here, through the public
API only (so the same script measures any version of ``goworker_py.schedule``):

- ``next_fire_time(expr, after)`` per call (it parses the expression, then searches), for a set
  of hard expressions -- rare dates, impossible day-of-month halves, far fires in DST zones --
  and for random valid expressions in six zones, from random instants between 1900 and 2400;
  the first call of each expression is reported apart (it loads the time zone), and so are
  calls that parse anew with the parse cache cleared;
- ``Schedule.next_after`` per call on a parsed schedule (what a worker calls per fire);
- ``validate_schedule`` per call on expressions that never fire.

Each call is timed 5 times and costs its fastest run (as ``timeit`` reports: a pause of the
process on a busy machine is not the calculation's cost); figures are medians and maxima of
those per-call costs, in ms. About 5 s with the current code (``--quick``: about 1 s); a
version that scans towards the year 9999 takes minutes.

Run: ``.venv/bin/python benchmarks/bench_cron_calc.py [--quick]``
"""

from __future__ import annotations

import math
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

from _common import Report, parse_args

import goworker_py.schedule as schedule_module
from goworker_py.errors import InvalidScheduleError
from goworker_py.schedule import next_fire_time, parse_schedule, validate_schedule

UTC = timezone.utc
ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "America/Santiago",
)
#: Expressions that are slow to search: rare or impossible dates, far fires in DST zones.
HARD = (
    "0 0 30 2 1",  # never the 30th of February, but February's Mondays (cron's OR rule)
    "0 0 29 2 *",
    "TZ=America/New_York 0 0 29 2 */7",  # 29 February on a Sunday: up to 40 years apart
    "TZ=Europe/Berlin 30 2 29 2 sun",
    "0 0 31 2,4,6,9,11 1",
    "TZ=Australia/Lord_Howe */15 2 * * *",
    "TZ=America/Santiago 0 0 * * *",
    "*/7 * * * * *",
    "0 9 * * mon-fri",
    "@every 1h30m",
)
#: Each call is timed this many times; its cost is the fastest (see ``timed_ms``).
REPEAT = 5
NEVER = (
    "0 0 30 2 *",
    "0 0 31 2,4,6,9,11 *",
    "0 0 30,31 feb *",
    "* * 31 2 */7",
    "0 0 31 apr-jun/2,sep,nov *",
)


def _field(rng: random.Random, low: int, high: int) -> str:
    kind = rng.random()
    if kind < 0.3:
        return "*"
    if kind < 0.45:
        return f"*/{rng.randint(1, high - low + 1)}"
    if kind < 0.65:
        return str(rng.randint(low, high))
    first = rng.randint(low, high)
    last = rng.randint(first, high)
    if kind < 0.85:
        return f"{first}-{last}"
    return f"{first}-{last}/{rng.randint(1, 4)}"


def random_expressions(rng: random.Random, count: int) -> list[str]:
    """Valid random 5-field expressions in random zones."""
    out: list[str] = []
    while len(out) < count:
        fields = [_field(rng, 0, 59), _field(rng, 0, 23), _field(rng, 1, 31)]
        fields += [_field(rng, 1, 12), _field(rng, 0, 7)]
        expr = f"TZ={rng.choice(ZONES)} " + " ".join(fields)
        try:
            validate_schedule(expr)
        except InvalidScheduleError:
            continue
        out.append(expr)
    return out


def random_instant(rng: random.Random) -> datetime:
    start = datetime(1900, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=rng.randrange(500 * 365 * 86400))


def timed_ms(call: object, *args: object, repeat: int = REPEAT) -> float:
    """The call's cost in ms: the fastest of ``repeat`` runs (as ``timeit`` reports), so that
    a pause of the process on a busy machine is not counted as the calculation's cost."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        call(*args)  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report = Report("bench_cron_calc", "B-cron", args.quick)
    rng = random.Random(20260510)
    calls = 5 if args.quick else 40
    first: list[float] = []
    later: list[float] = []
    worst: dict[str, float] = {}
    for expr in HARD:
        instants = [random_instant(rng) for _ in range(calls + 1)]
        first.append(timed_ms(next_fire_time, expr, instants[0], repeat=1))
        times = [timed_ms(next_fire_time, expr, moment) for moment in instants[1:]]
        later += times
        worst[expr] = max(times)
        print(f"  {expr!r}: median {statistics.median(times):.3f} ms, max {max(times):.3f} ms")
    report.add("next_fire_time, hard expressions, median per call", statistics.median(later), "ms")
    report.add("next_fire_time, hard expressions, max per call", max(later), "ms", target=1.0)
    report.add("next_fire_time, hard expressions, first call max", max(first), "ms")
    clear = getattr(getattr(schedule_module, "parse_fields", None), "cache_clear", None)
    if clear is not None:  # versions with a parse cache: the cost of a call that parses
        cold = []
        for expr in HARD:
            for _ in range(calls):

                def uncached(moment: datetime, expr: str = expr) -> None:
                    clear()
                    next_fire_time(expr, moment)

                cold.append(timed_ms(uncached, random_instant(rng)))
        report.add("next_fire_time parsing anew (no cache), max", max(cold), "ms", target=1.0)

    randoms = random_expressions(rng, 40 if args.quick else 300)
    random_times: list[float] = []
    for expr in randoms:
        for _ in range(3):
            random_times.append(timed_ms(next_fire_time, expr, random_instant(rng)))
    report.add("next_fire_time, random expressions, median", statistics.median(random_times), "ms")
    report.add("next_fire_time, random expressions, max", max(random_times), "ms", target=1.0)

    step_times: list[float] = []
    for expr in HARD:
        # Fresh objects: a parsed schedule remembers its last answers.
        schedules = [parse_schedule(expr, "UTC") for _ in range(REPEAT)]
        moment = random_instant(rng)
        for _ in range(calls):
            best = math.inf
            for schedule in schedules:
                started = time.perf_counter()
                fire = schedule.next_after(moment)
                best = min(best, time.perf_counter() - started)
            step_times.append(best * 1e3)
            moment = fire if fire is not None else random_instant(rng)
    report.add("Schedule.next_after per fire, median", statistics.median(step_times), "ms")
    report.add("Schedule.next_after per fire, max", max(step_times), "ms", target=1.0)

    reject: list[float] = []
    accepted: list[str] = []

    def validate(expr: str) -> None:
        try:
            validate_schedule(expr)
        except InvalidScheduleError:
            pass
        else:
            accepted.append(expr)

    for expr in NEVER:
        for _ in range(3 if args.quick else 10):
            reject.append(timed_ms(validate, expr))
    if accepted:
        print(f"  WRONG: accepted as valid although they never fire: {sorted(set(accepted))}")
    report.add("reject a never-firing expression, median", statistics.median(reject), "ms")
    report.add("reject a never-firing expression, max", max(reject), "ms", target=50.0)
    report.details = {
        "hard_max_ms": worst,
        "random_expressions": len(randoms),
        "never_firing_accepted": sorted(set(accepted)),
    }
    report.emit()


if __name__ == "__main__":
    main()
