"""Shared code of the cron-lateness benchmarks (B2): N jobs firing every second, three ways.

- ``goworker``: N ``Worker``\\ s on ``*/1 * * * * *`` (one shard thread each), lateness =
  ``do`` entry ``time.time()`` - ``ctx.scheduled_time.timestamp()``;
- ``apscheduler``: one APScheduler 3 ``BackgroundScheduler`` holding N jobs with
  ``CronTrigger(second='*')`` and its defaults (10-thread pool, ``misfire_grace_time`` 1 s,
  ``coalesce``); APScheduler does not tell a job its scheduled time, so the slot is the entry
  time rounded down to the second (valid because a run more than 1 s late is dropped as a
  misfire, and counted missed here);
- ``floor``: N bare threads, each ``Event.wait``-ing for the next whole second (its own
  ``Event``) — the floor of a thread-per-job design.

Each configuration runs in a fresh interpreter (``--child``). Slots before every job is set
up, plus ``warmup`` slots, are not measured; a slot's run that never came is counted missed.
While a child runs, its idle parent runs a noise witness (``_common.timer_witness``): timer
lateness at the tenths of a second between the fires, telling a slow scheduler from a busy
machine.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import threading
import time
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

SCHEDULERS = ("goworker", "apscheduler", "floor")
LABELS = {
    "goworker": "goworker-py",
    "apscheduler": "APScheduler 3 BackgroundScheduler",
    "floor": "bare Event.wait threads (floor)",
}
#: (slot, wall-clock entry, monotonic entry) of every run.
Sample = tuple[float, float, float]


def _wait_until(wall: float) -> None:
    """Sleep until wall-clock time ``wall`` (the main thread, between measurements)."""
    pause = threading.Event()
    while (remaining := wall - time.time()) > 0:
        pause.wait(remaining)


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
    kept = [s for s in samples if first_slot <= s[0] <= last_slot]
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
        "first_slot": first_slot,
    }


def run_goworker(workers: int, fires: int, warmup: int = 1, split: bool = False) -> dict[str, Any]:
    """N goworker-py workers on ``*/1 * * * * *``; lateness measured in ``do``.

    ``split``: inject a clock that notes when each shard thread's wait returned, to split the
    lateness into the timer's own lateness (wait returns - fire time) and the framework's
    path from that wake-up to ``do`` (costs one ``time.time()`` and a dict store per wait).
    """
    from goworker_py import Context, Handler, Worker
    from goworker_py.clock import SystemClock

    log_path = quiet_logging("INFO")
    samples: list[Sample] = []
    wakes: dict[int, float] = {}
    splits: list[tuple[float, float, float]] = []

    class WakeClock(SystemClock):
        def wait(self, event: threading.Event, timeout: float | None) -> bool:
            fired = event.wait(timeout)
            wakes[threading.get_ident()] = time.time()
            return fired

    class Probe(Handler):
        def do(self, ctx: Context) -> None:
            wall, mono = time.time(), time.monotonic()
            slot = ctx.scheduled_time.timestamp()
            samples.append((slot, wall, mono))
            if split:
                splits.append((slot, wakes.get(threading.get_ident(), math.nan), wall))

    clock = WakeClock() if split else None
    started = time.perf_counter()
    pool = [
        Worker(Probe, cron="*/1 * * * * *", handle_signals=False, name=f"lat{i}", clock=clock)
        for i in range(workers)
    ]
    for worker in pool:
        worker.run()
    setup_s = time.perf_counter() - started
    first_slot = float(math.floor(time.time()) + 1 + warmup)
    last_slot = first_slot + fires - 1
    _wait_until(first_slot - 0.5)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    _wait_until(last_slot + 0.95)
    cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
    stop_started = time.perf_counter()
    for worker in pool:
        worker.cancel()
    for worker in pool:
        worker.wait(60)
    stop_s = time.perf_counter() - stop_started
    remove_file(log_path)
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    if split:
        kept_splits = [row for row in splits if first_slot <= row[0] <= last_slot]
        result["timer_lateness_ms"] = stats([w - s for s, w, _ in kept_splits], 1e3)
        result["wake_to_do_ms"] = stats([e - w for _, w, e in kept_splits], 1e3)
    # Cross-check against the monotonic clock: wall-clock lateness vs the same instant measured
    # on CLOCK_MONOTONIC (they differ only if the wall clock was stepped or slewed meanwhile).
    kept = sorted(s for s in samples if first_slot <= s[0] <= last_slot)
    if workers == 1 and len(kept) > 1:
        offset = kept[0][1] - kept[0][2]
        drift = [abs((mono + offset) - wall) for _, wall, mono in kept]
        result["wall_vs_monotonic_max_us"] = round(max(drift) * 1e6, 1)
        intervals = [abs(b[2] - a[2] - (b[0] - a[0])) for a, b in itertools.pairwise(kept)]
        result["interval_jitter_ms"] = stats(intervals, 1e3)
    return result


def run_apscheduler(workers: int, fires: int, warmup: int = 1) -> dict[str, Any]:
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
    first_slot = float(math.floor(time.time()) + 1 + warmup)
    last_slot = first_slot + fires - 1
    _wait_until(first_slot - 0.5)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    _wait_until(last_slot + 0.95)
    cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
    stop_started = time.perf_counter()
    scheduler.shutdown(wait=True)
    stop_s = time.perf_counter() - stop_started
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    return result


def run_floor(workers: int, fires: int, warmup: int = 1) -> dict[str, Any]:
    """N threads, each waiting on its own Event for the next whole second."""
    samples: list[Sample] = []
    stop = threading.Event()
    stops = [threading.Event() for _ in range(workers)]

    def loop(own: threading.Event) -> None:
        slot = float(math.floor(time.time()) + 1)
        while not stop.is_set():
            while (remaining := slot - time.time()) > 0:
                if own.wait(remaining):
                    return
            wall, mono = time.time(), time.monotonic()
            samples.append((slot, wall, mono))
            slot += 1.0

    started = time.perf_counter()
    threads = [
        threading.Thread(target=loop, args=(own,), name=f"floor{i}", daemon=True)
        for i, own in enumerate(stops)
    ]
    for thread in threads:
        thread.start()
    setup_s = time.perf_counter() - started
    first_slot = float(math.floor(time.time()) + 1 + warmup)
    last_slot = first_slot + fires - 1
    _wait_until(first_slot - 0.5)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    _wait_until(last_slot + 0.95)
    cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
    stop_started = time.perf_counter()
    stop.set()
    for own in stops:
        own.set()
    for thread in threads:
        thread.join(30)
    stop_s = time.perf_counter() - stop_started
    result = _summarise(samples, workers, first_slot, fires, setup_s, cpu_s, wall_s)
    result["stop_s"] = round(stop_s, 3)
    return result


RUNNERS = {"goworker": run_goworker, "apscheduler": run_apscheduler, "floor": run_floor}


def child_main(scheduler: str, workers: int, fires: int) -> None:
    """Run one configuration and print its result as the last (JSON) line."""
    import json

    gc.collect()
    result = RUNNERS[scheduler](workers, fires)
    result["scheduler"] = scheduler
    print(json.dumps(result), flush=True)


def describe(result: dict[str, Any]) -> str:
    """One line for a configuration's result."""
    return (
        f"{LABELS[result['scheduler']]}, {result['workers']} job(s): lateness "
        f"{fmt_stats(result['lateness_ms'], 'ms')}; missed {result['missed']}; "
        f"CPU while firing {result['cpu_percent_while_firing']} %; set-up {result['setup_s']} s"
    )


def compare_main(workers: int, script: str, doc: str) -> None:
    """B2 for one job count: goworker-py vs APScheduler vs the floor, one child each."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 fires per scheduler")
    parser.add_argument("--fires", type=int, default=None, help="measured fires per scheduler")
    parser.add_argument("--child", choices=SCHEDULERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    fires = args.fires or (3 if args.quick else 15)
    if args.child:
        child_main(args.child, workers, fires)
        return
    name = os.path.splitext(os.path.basename(script))[0]
    report = Report(name, "B2", args.quick)
    report.calibration = calibrate(quick=True)
    print(f"{workers} job(s) firing every second, {fires} measured fires per scheduler")
    results: dict[str, Any] = {}
    for scheduler in SCHEDULERS:
        timeout = 60 + fires * 3
        with WitnessThread() as witness:
            result = run_child(
                script, ["--child", scheduler, "--fires", str(fires)], timeout=timeout
            )
        result["witness_ms"] = witness.result
        results[scheduler] = result
        print(describe(result), flush=True)
        print(f"  meanwhile (noise witness): {fmt_stats(witness.result, 'ms')}", flush=True)
    for scheduler in SCHEDULERS:
        result = results[scheduler]
        s = result["lateness_ms"]
        label = f"{workers} job(s), {LABELS[scheduler]}"
        one = workers == 1 and scheduler == "goworker"
        report.add(f"lateness p50, {label}", s.get("p50"), "ms", 1.0 if one else None)
        report.add(f"lateness p99, {label}", s.get("p99"), "ms", 5.0 if one else None)
        report.add(f"lateness max, {label}", s.get("max"), "ms")
        report.add(f"missed runs, {label}", result["missed"], "runs")
        report.add(f"CPU while firing, {label}", result["cpu_percent_while_firing"], "% of a core")
        report.add(
            f"noise witness: Event.wait lateness p99, during {label}",
            result["witness_ms"].get("p99"),
            "ms",
        )
    report.details = results
    report.emit()
