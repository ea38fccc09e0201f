"""Shared code of the cron-lateness benchmarks (B2): N jobs firing every second, three ways.

- ``goworker``: N ``Worker``\\ s on ``*/1 * * * * *`` (one shard thread each), lateness =
  ``do`` entry ``time.time()`` - ``ctx.scheduled_time.timestamp()``; loguru configured with an
  INFO sink to a file (``_common.quiet_logging``). ``do`` keeps ``ctx.scheduled_time`` as it
  is, converted after the window: a zoned datetime's ``timestamp()`` is the handler's own work
  (a few microseconds in a herd, on a cold cache) and would delay every shard behind it,
  where the floor's record has its slot at hand;
- ``goworker_default``: the same with the logging defaults a user gets when configuring none:
  loguru's default sink (DEBUG and up, to stderr). The child's stderr is a file in /tmp
  (:func:`run_contender`), so a terminal's speed is not what is measured; the lines it got are
  counted (``stderr_lines``);
- ``apscheduler``: one APScheduler 3 ``BackgroundScheduler`` holding N jobs with
  ``CronTrigger(second='*')`` and its defaults (10-thread pool, ``misfire_grace_time`` 1 s,
  ``coalesce``); APScheduler does not tell a job its scheduled time, so the slot is the entry
  time rounded down to the second (valid because a run more than 1 s late is dropped as a
  misfire, and counted missed here);
- ``floor``: N bare threads, each ``Event.wait``-ing for the next whole second (its own
  ``Event``) — the floor of a thread-per-job design (:class:`FloorThreads`).

APScheduler runs with the standard library's logging unconfigured, so it writes no line per
run, with either goworker-py variant (the stricter comparison). With 100 and more jobs
:func:`compare_main` adds issue #12's goals: goworker-py's p50 and p99 within 1.5x the floor's,
and ahead of APScheduler's (ratios, printed, never asserted).

Each configuration runs in a fresh interpreter (``--child``). Slots before every job is set
up, plus ``warmup`` slots, are not measured; a slot's run that never came is counted missed.
The measurement ends 0.95 s after the last measured slot, or as soon as every run of the
measured slots has come (no idle tail: a run is at most a second late, and usually every run
is in within tens of milliseconds).
While a child runs, its idle parent runs a noise witness (``_common.timer_witness``): timer
lateness at the tenths of a second between the fires, telling a slow scheduler from a busy
machine.

Load conditions (``LOADS``): see ``_load.py``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from _common import (
    Report,
    WitnessThread,
    calibrate,
    cpu_seconds,
    fmt_stats,
    quiet_logging,
    remove_file,
    run_child,
    stats,
)
from _load import LOAD_LABELS, LOADS, in_process_load, parent_load

SCHEDULERS = ("goworker", "apscheduler", "floor")
#: Every contender; the herd benchmarks (100 and 1,000 jobs) add ``goworker_default``.
CONTENDERS = ("goworker", "goworker_default", "apscheduler", "floor")
LABELS = {
    "goworker": "goworker-py",
    "goworker_default": "goworker-py, default logging",
    "apscheduler": "APScheduler 3 BackgroundScheduler",
    "floor": "bare Event.wait threads (floor)",
}
#: (slot, wall-clock entry, monotonic entry) of every run; goworker-py's slot is the run's
#: ``ctx.scheduled_time`` as it came (see :func:`_slot`).
Sample = tuple[float | datetime, float, float]

# -- the three contenders -----------------------------------------------------------------------


def _wait_until(wall: float) -> None:
    """Sleep until wall-clock time ``wall`` (the main thread, between measurements)."""
    pause = threading.Event()
    while (remaining := wall - time.time()) > 0:
        pause.wait(remaining)


def _slot(slot: float | datetime) -> float:
    """A sample's slot as a timestamp."""
    return slot if isinstance(slot, float) else slot.timestamp()


def _all_in(samples: list[Sample], first_slot: float, expected: int) -> bool:
    """Has every run of the measured slots come? (a cheap length test first)

    Counted by entry time, a float for every contender (goworker-py's slots are datetimes,
    converted only once the window is over): a run entering before ``first_slot`` belongs to
    an earlier slot. One of an earlier slot entering over a second late would end the window
    early; the run still missing then counts missed (never the other way round).
    """
    if len(samples) < expected:
        return False
    return sum(1 for s in list(samples) if s[1] >= first_slot) >= expected


def _fire_window(
    samples: list[Sample], workers: int, fires: int, warmup: int, load: str
) -> tuple[float, float, float, dict[str, float]]:
    """Sleep through ``warmup`` + ``fires`` slots under the in-process part of ``load``.

    Called right after set-up. The measured window starts half a second before the first
    measured slot and ends 0.95 s after the last one (a run later than that counts missed) or
    as soon as every run of the measured slots has come (checked every 50 ms from 50 ms after
    the last slot): there is no idle tail to wait out. Returns (first measured slot, CPU
    seconds and wall seconds of this process over the window, the load's info).
    """
    first_slot = float(math.floor(time.time()) + 1 + warmup)
    last_slot = first_slot + fires - 1
    expected = workers * fires
    pause = threading.Event()
    with in_process_load(load) as info:
        _wait_until(first_slot - 0.5)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        _wait_until(last_slot + 0.05)
        while not _all_in(samples, first_slot, expected):
            remaining = last_slot + 0.95 - time.time()
            if remaining <= 0:
                break
            pause.wait(min(remaining, 0.05))
        cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
    return first_slot, cpu_s, wall_s, info


def _summarise(
    samples: list[Sample],
    workers: int,
    first_slot: float,
    fires: int,
    setup_s: float,
    cpu_s: float,
    wall_s: float,
) -> dict[str, Any]:
    last_slot = first_slot + fires - 1
    kept = [
        (slot, entry, mono)
        for slot, entry, mono in ((_slot(s[0]), s[1], s[2]) for s in samples)
        if first_slot <= slot <= last_slot
    ]
    lateness = [entry - slot for slot, entry, _ in kept]
    per_slot: dict[float, list[float]] = {}
    for slot, entry, _ in kept:
        per_slot.setdefault(slot, []).append(entry - slot)
    return {
        "workers": workers,
        "fires": fires,
        "expected_runs": workers * fires,
        "runs": len(kept),
        "missed": workers * fires - len(kept),
        "lateness_ms": stats(lateness, 1e3),
        # The last run of a slot: how long N simultaneous runs take to all start.
        "slot_last_entry_ms": stats([max(v) for v in per_slot.values()], 1e3),
        "setup_s": round(setup_s, 3),
        "cpu_percent_while_firing": round(cpu_s / wall_s * 100, 2) if wall_s > 0 else None,
        # CPU of the whole process over the window per run: a framework's cost per fire
        # (with the floor's, what the kernel and the GIL's hand-offs cost each run).
        "cpu_us_per_run": round(cpu_s / len(kept) * 1e6, 1) if kept else None,
        "first_slot": first_slot,
    }


def run_goworker(
    workers: int,
    fires: int,
    warmup: int = 1,
    split: bool = False,
    load: str = "idle",
    default_logging: bool = False,
) -> dict[str, Any]:
    """N goworker-py workers on ``*/1 * * * * *``; lateness measured in ``do``.

    ``default_logging``: leave loguru as it comes (its default stderr sink), else an INFO
    sink to a file. ``split``: inject a clock that notes when each shard thread's wait
    returned, to split the lateness into the timer's own lateness (wait returns - fire time)
    and the framework's path from that wake-up to ``do`` (costs one ``time.time()`` and a dict
    store per wait). An injected clock turns parking and the chime off (every shard then
    sleeps on a timer of its own, see ``goworker_py.runner``): the split describes that
    path, not the one a herd takes with the system clock.
    """
    from goworker_py import Context, Handler, Worker
    from goworker_py.clock import SystemClock

    log_path = None if default_logging else quiet_logging("INFO")
    samples: list[Sample] = []
    wakes: dict[int, float] = {}
    splits: list[tuple[datetime, float, float]] = []

    class WakeClock(SystemClock):
        def wait(self, event: threading.Event, timeout: float | None) -> bool:
            fired = event.wait(timeout)
            wakes[threading.get_ident()] = time.time()
            return fired

    class Probe(Handler):
        def do(self, ctx: Context) -> None:
            wall, mono = time.time(), time.monotonic()
            samples.append((ctx.scheduled_time, wall, mono))
            if split:
                splits.append(
                    (ctx.scheduled_time, wakes.get(threading.get_ident(), math.nan), wall)
                )

    clock = WakeClock() if split else None
    started = time.perf_counter()
    pool = [
        Worker(Probe, cron="*/1 * * * * *", handle_signals=False, name=f"lat{i}", clock=clock)
        for i in range(workers)
    ]
    for worker in pool:
        worker.run()
    setup_s = time.perf_counter() - started
    first_slot, cpu_s, wall_s, load_info = _fire_window(samples, workers, fires, warmup, load)
    last_slot = first_slot + fires - 1
    stop_started = time.perf_counter()
    for worker in pool:
        worker.cancel()
    for worker in pool:
        worker.wait(60)
    stop_s = time.perf_counter() - stop_started
    if log_path is not None:
        remove_file(log_path)
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    result.update(load=load, logging="loguru default (stderr)" if default_logging else "INFO file")
    result.update(load_info)
    if split:
        kept_splits = [
            (slot, w, e)
            for slot, w, e in ((d.timestamp(), w, e) for d, w, e in splits)
            if first_slot <= slot <= last_slot
        ]
        result["timer_lateness_ms"] = stats([w - s for s, w, _ in kept_splits], 1e3)
        result["wake_to_do_ms"] = stats([e - w for _, w, e in kept_splits], 1e3)
    # Cross-check against the monotonic clock: wall-clock lateness vs the same instant measured
    # on CLOCK_MONOTONIC (they differ only if the wall clock was stepped or slewed meanwhile).
    kept = sorted(
        (slot, w, m)
        for slot, w, m in ((_slot(s[0]), s[1], s[2]) for s in samples)
        if first_slot <= slot <= last_slot
    )
    if workers == 1 and len(kept) > 1:
        offset = kept[0][1] - kept[0][2]
        drift = [abs((mono + offset) - wall) for _, wall, mono in kept]
        result["wall_vs_monotonic_max_us"] = round(max(drift) * 1e6, 1)
        intervals = [abs(b[2] - a[2] - (b[0] - a[0])) for a, b in itertools.pairwise(kept)]
        result["interval_jitter_ms"] = stats(intervals, 1e3)
    return result


def run_apscheduler(
    workers: int, fires: int, warmup: int = 1, load: str = "idle"
) -> dict[str, Any]:
    """One BackgroundScheduler with N ``CronTrigger(second='*')`` jobs (its defaults)."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    samples: list[Sample] = []

    def job() -> None:
        wall, mono = time.time(), time.monotonic()
        samples.append((float(math.floor(wall)), wall, mono))

    started = time.perf_counter()
    scheduler = BackgroundScheduler()
    for i in range(workers):
        scheduler.add_job(job, CronTrigger(second="*"), id=f"lat{i}")
    scheduler.start()
    setup_s = time.perf_counter() - started
    first_slot, cpu_s, wall_s, load_info = _fire_window(samples, workers, fires, warmup, load)
    stop_started = time.perf_counter()
    scheduler.shutdown(wait=True)
    stop_s = time.perf_counter() - stop_started
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    result.update(load=load, **load_info)
    return result


class FloorThreads:
    """``count`` bare threads, each ``Event.wait``-ing (on an Event of its own) for the next
    whole second, then calling ``record(slot)``: the floor of a thread-per-job design."""

    def __init__(self, count: int, record: Callable[[float], None]) -> None:
        self._record = record
        self._stop = threading.Event()
        self._own = [threading.Event() for _ in range(count)]
        self._threads: list[threading.Thread] = []

    def _loop(self, own: threading.Event) -> None:
        slot = float(math.floor(time.time()) + 1)
        while not self._stop.is_set():
            while (remaining := slot - time.time()) > 0:
                if own.wait(remaining):
                    return
            self._record(slot)
            slot += 1.0

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._loop, args=(own,), name=f"floor{i}", daemon=True)
            for i, own in enumerate(self._own)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Wake every thread to end, and wait for them."""
        self._stop.set()
        for own in self._own:
            own.set()
        for thread in self._threads:
            thread.join(30)


def run_floor(workers: int, fires: int, warmup: int = 1, load: str = "idle") -> dict[str, Any]:
    """N threads, each waiting on its own Event for the next whole second."""
    samples: list[Sample] = []
    floor = FloorThreads(
        workers, lambda slot: samples.append((slot, time.time(), time.monotonic()))
    )
    started = time.perf_counter()
    floor.start()
    setup_s = time.perf_counter() - started
    first_slot, cpu_s, wall_s, load_info = _fire_window(samples, workers, fires, warmup, load)
    stop_started = time.perf_counter()
    floor.stop()
    stop_s = time.perf_counter() - stop_started
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    result.update(load=load, **load_info)
    return result


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "goworker": run_goworker,
    "goworker_default": functools.partial(run_goworker, default_logging=True),
    "apscheduler": run_apscheduler,
    "floor": run_floor,
}


def child_main(scheduler: str, workers: int, fires: int, load: str = "idle") -> None:
    """Run one configuration and print its result as the last (JSON) line."""
    import json

    gc.collect()
    result = RUNNERS[scheduler](workers, fires, load=load)
    result["scheduler"] = scheduler
    print(json.dumps(result), flush=True)


def describe(result: dict[str, Any]) -> str:
    """One line for a configuration's result."""
    load = result.get("load", "idle")
    condition = "" if load == "idle" else f", {LOAD_LABELS[load]}"
    busy = " (with the busy thread's)" if load == "gil" else ""
    logging = f" ({result['logging']})" if result["scheduler"] == "goworker" else ""
    written = f"; {result['stderr_lines']} lines to stderr" if "stderr_lines" in result else ""
    return (
        f"{LABELS[result['scheduler']]}{logging}, {result['workers']} job(s){condition}: "
        f"lateness {fmt_stats(result['lateness_ms'], 'ms')}; missed {result['missed']}; "
        f"CPU while firing {result['cpu_percent_while_firing']} %{busy} "
        f"({result.get('cpu_us_per_run')} µs per run); "
        f"set-up {result['setup_s']} s{written}"
    )


def _parse(doc: str, fires: tuple[int, int]) -> argparse.Namespace:
    """``--quick``, ``--fires`` and the hidden ``--child``/``--load`` of a child run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{fires[0]} fires per scheduler")
    parser.add_argument(
        "--fires", type=int, default=None, help=f"measured fires per scheduler ({fires[1]})"
    )
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--load", choices=LOADS, default="idle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.fires = args.fires or (fires[0] if args.quick else fires[1])
    return args


def run_contender(script: str, scheduler: str, fires: int, load: str = "idle") -> dict[str, Any]:
    """One contender in a fresh interpreter (``script --child``), a noise witness meanwhile.

    ``goworker_default``'s stderr (loguru's default sink) goes to a file in /tmp, deleted after
    its lines were counted.
    """
    args = ["--child", scheduler, "--fires", str(fires), "--load", load]
    stderr_path = None
    if scheduler == "goworker_default":
        stderr_path = os.path.join("/tmp", f"goworker-bench-stderr-{os.getpid()}.log")
    try:
        with WitnessThread() as witness:
            result = run_child(script, args, timeout=60 + fires * 3, stderr_path=stderr_path)
        if stderr_path is not None:
            with open(stderr_path, "rb") as written:
                result["stderr_lines"] = sum(1 for _ in written)
    finally:
        if stderr_path is not None:
            remove_file(stderr_path)
    result["witness_ms"] = witness.result
    print(describe(result), flush=True)
    print(f"  meanwhile (noise witness): {fmt_stats(witness.result, 'ms')}", flush=True)
    return result


#: Issue #12's herd goals: goworker-py's lateness within this factor of the floor's, and no
#: later than APScheduler's (factor 1).
FLOOR_RATIO_TARGET = 1.5
APS_RATIO_TARGET = 1.0


def _herd_goals(report: Report, workers: int, results: dict[str, dict[str, Any]]) -> None:
    """Ratios of each goworker-py variant's p50 and p99 to the floor's and APScheduler's."""
    for mine in (c for c in ("goworker", "goworker_default") if c in results):
        label = f"{workers} job(s), {LABELS[mine]}"
        for p in ("p50", "p99"):
            value = results[mine]["lateness_ms"].get(p)
            for other, name, target in (
                ("floor", "floor's", FLOOR_RATIO_TARGET),
                ("apscheduler", "APScheduler's", APS_RATIO_TARGET),
            ):
                reference = results[other]["lateness_ms"].get(p)
                ratio = value / reference if value is not None and reference else None
                report.add(
                    f"lateness {p} / {name}, {label}",
                    None if ratio is None else round(ratio, 3),
                    "x",
                    target,
                )


def compare_main(
    workers: int,
    script: str,
    doc: str,
    fires: tuple[int, int] = (3, 10),
    contenders: Sequence[str] = SCHEDULERS,
) -> None:
    """B2 for one job count, idle: goworker-py vs APScheduler vs the floor, one child each.

    ``fires``: measured fires per contender with and without ``--quick``; ``contenders``:
    :data:`CONTENDERS` adds goworker-py with the default logging, and the herd goals.
    """
    args = _parse(doc, fires)
    if args.child:
        child_main(args.child, workers, args.fires, args.load)
        return
    name = os.path.splitext(os.path.basename(script))[0]
    report = Report(name, "B2", args.quick)
    report.calibration = calibrate(quick=True)
    print(f"{workers} job(s) firing every second, {args.fires} measured fires per scheduler")
    results = {s: run_contender(script, s, args.fires) for s in contenders}
    for scheduler in contenders:
        result = results[scheduler]
        s = result["lateness_ms"]
        label = f"{workers} job(s), {LABELS[scheduler]}"
        one = workers == 1 and scheduler == "goworker"
        report.add(f"lateness p50, {label}", s.get("p50"), "ms", 1.0 if one else None)
        report.add(f"lateness p99, {label}", s.get("p99"), "ms", 5.0 if one else None)
        report.add(f"lateness max, {label}", s.get("max"), "ms")
        report.add(f"missed runs, {label}", result["missed"], "runs")
        report.add(f"CPU while firing, {label}", result["cpu_percent_while_firing"], "% of a core")
        report.add(f"CPU per run while firing, {label}", result["cpu_us_per_run"], "µs")
        report.add(
            f"noise witness: Event.wait lateness p99, during {label}",
            result["witness_ms"].get("p99"),
            "ms",
        )
    if "goworker_default" in results:
        _herd_goals(report, workers, results)
    report.details = results
    report.emit()


def load_main(
    workers: int,
    script: str,
    doc: str,
    fires: tuple[int, int] = (2, 8),
    loads: Sequence[str] = ("gil", "hogs"),
) -> None:
    """B2 under load: every contender under every load condition, one child each.

    The conditions run one after the other; within one, the three contenders run one after
    the other, each in a fresh interpreter, under the same load (the hog processes of
    ``hogs`` run through all three). No targets: the issue sets none under load; the floor
    is the reference.
    """
    args = _parse(doc, fires)
    if args.child:
        child_main(args.child, workers, args.fires, args.load)
        return
    name = os.path.splitext(os.path.basename(script))[0]
    report = Report(name, "B2", args.quick)
    report.calibration = calibrate(quick=True)
    print(f"{workers} jobs firing every second, {args.fires} measured fires per scheduler")
    results: dict[str, dict[str, Any]] = {}
    for load in loads:
        print(f"-- {LOAD_LABELS[load]}", flush=True)
        with parent_load(load) as outside:
            results[load] = {s: run_contender(script, s, args.fires, load) for s in SCHEDULERS}
        if outside:
            print(f"  hog processes: {outside}", flush=True)
            results[load]["parent_load"] = outside
    for load in loads:
        for scheduler in SCHEDULERS:
            result = results[load][scheduler]
            s = result["lateness_ms"]
            label = f"{workers} jobs, {LOAD_LABELS[load]}, {LABELS[scheduler]}"
            report.add(f"lateness p50, {label}", s.get("p50"), "ms")
            report.add(f"lateness p99, {label}", s.get("p99"), "ms")
            report.add(f"lateness max, {label}", s.get("max"), "ms")
            report.add(f"missed runs, {label}", result["missed"], "runs")
            report.add(
                f"noise witness: Event.wait lateness p99, during {label}",
                result["witness_ms"].get("p99"),
                "ms",
            )
    report.details = results
    report.emit()
