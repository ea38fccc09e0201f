"""B12 bench_scale: 10,000 daily jobs in one process — start, idle cost, RSS, lateness, stop.

goworker-py (10,000 ``Worker``\\ s, INFO log to a file) beside APScheduler 3 (one
``BackgroundScheduler`` holding 10,000 jobs, its defaults), each in a fresh interpreter, one
after the other. Every job is *daily*: a 6-field cron at one second of the day
(``S M H * * *``; APScheduler: ``CronTrigger(hour=H, minute=M, second=S)``). A day is too long
to wait for, so the jobs' seconds are the next ``--spread`` seconds (job ``i`` at second
``first + i % spread``: 10,000 jobs over 60 s is about 167 a second) starting after the idle
window. In one child:

1. start-up: construct + ``run()`` of every worker (``add_job`` x N + ``start()``);
2. RSS (``VmRSS``, per job: minus the RSS after imports) and threads;
3. an idle window (``_idle.measure_window``: CPU, context switches and wake-ups/s of the whole
   process) that ends at least 2.5 s before the first fire time, so it holds no wake-up a fire
   time needs (goworker-py's alarm starts a shard's thread ``LEAD`` = 1 s before its fire time);
4. the fires: every job's lateness (handler entry ``time.time()`` - its fire time: goworker-py's
   ``ctx.scheduled_time``, APScheduler's passed to the job as an argument) and fires missed (no
   run 2 s after the last fire time: APScheduler drops a run more than its default
   ``misfire_grace_time`` of 1 s late), the process's peak thread count while firing (sampled
   every 100 ms) and its CPU;
5. clean stop: ``cancel()`` of every worker then ``wait()`` (``shutdown(wait=True)``).

For goworker-py this is the parked path of issue #12: an idle shard has no thread; the
process-wide alarm starts a fresh one a second before its fire time, which waits on its own
timer, fires, and parks again (the next fire is a day later). A noise witness in the idle
parent measures the machine's timer lateness meanwhile.

About 2.7 min (``--quick``: 2,000 jobs over 20 s, 5 s idle window, about 1 min).

Targets (printed, not asserted; issue #12): at most 1 wake-up/s whatever the number of
workers; RSS per idle worker <= 16 KiB. The rest is reported beside APScheduler.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--quick] [--workers N] [--spread S]
[--window S]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import (
    Report,
    WitnessThread,
    calibrate,
    cpu_seconds,
    fmt_stats,
    parse_args,
    proc_status,
    quiet_logging,
    remove_file,
    rss_mb,
    run_child,
    stats,
)
from _idle import WAKEUPS_TARGET, measure_window

RSS_PER_WORKER_TARGET_KB = 16.0
#: Planned set-up time per job (s): the first fire time leaves this much room for set-up; a
#: quicker set-up lengthens the idle window, a slower one shortens it.
SETUP_BUDGET_PER_JOB = 0.0005
#: After set-up, before the idle window: the start-up log lines written, the shards parked.
SETTLE_S = 1.0
#: Between the end of the idle window and the first fire time (goworker-py's alarm acts 1 s
#: before a fire time).
MARGIN_S = 2.5
#: After the last fire time: a run not in by then is missed.
TAIL_S = 2.0
LABELS = {"goworker": "goworker-py", "apscheduler": "APScheduler 3 BackgroundScheduler"}
#: (fire time, handler entry) wall-clock seconds of every run; goworker-py's fire time is the
#: run's ``ctx.scheduled_time`` as it came, converted after the fires (its ``timestamp()`` is
#: handler work that would delay the jobs firing in the same second).
Sample = tuple[float | dt.datetime, float]


def _plan(workers: int, spread: int, window: float) -> tuple[float, list[dt.datetime]]:
    """The first fire time, and each job's fire time (local time, whole seconds)."""
    budget = workers * SETUP_BUDGET_PER_JOB
    first = float(math.ceil(time.time() + budget + SETTLE_S + window + MARGIN_S))
    return first, [dt.datetime.fromtimestamp(first + i % spread) for i in range(workers)]


def _wait_until(wall: float) -> None:
    pause = threading.Event()
    while (remaining := wall - time.time()) > 0:
        pause.wait(remaining)


def _fires(samples: list[Sample], workers: int, first: float, last: float) -> dict[str, Any]:
    """Wait through the fire times (until every run came, or ``TAIL_S`` after the last)."""
    pause = threading.Event()
    peak = proc_status("Threads")
    _wait_until(first - 1.5)
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    while len(samples) < workers and time.time() < last + TAIL_S:
        pause.wait(0.1)
        peak = max(peak, proc_status("Threads"))
    cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
    fires = [(f if isinstance(f, float) else f.timestamp(), entry) for f, entry in samples]
    lateness = [entry - fire for fire, entry in fires if first <= fire <= last]
    return {
        "runs": len(lateness),
        "missed": workers - len(lateness),
        "lateness_ms": stats(lateness, 1e3),
        "peak_threads_while_firing": peak,
        "cpu_percent_while_firing": round(cpu_s / wall_s * 100, 2),
        "firing_s": round(wall_s, 2),
    }


def _measure(
    workers: int,
    spread: int,
    window: float,
    start: Callable[[list[dt.datetime], list[Sample]], None],
    stop: Callable[[], None],
) -> dict[str, Any]:
    """The common steps of both children (``start`` sets the jobs up, ``stop`` ends them)."""
    samples: list[Sample] = []
    base_rss, base_threads = rss_mb(), proc_status("Threads")
    first, fire_times = _plan(workers, spread, window)
    last = first + min(spread, workers) - 1
    started = time.perf_counter()
    start(fire_times, samples)
    startup_s = time.perf_counter() - started
    time.sleep(SETTLE_S)
    rss_started, threads = rss_mb(), proc_status("Threads")
    idle = measure_window(max(first - MARGIN_S - time.time(), 0.5))
    rss_idle = rss_mb()
    fired = _fires(samples, workers, first, last)
    stop_started = time.perf_counter()
    stop()
    stop_s = time.perf_counter() - stop_started
    return {
        "workers": workers,
        "spread_s": spread,
        "first_fire": first,
        "startup_s": round(startup_s, 3),
        "threads": threads,
        "threads_before": base_threads,
        "rss_mb_before": round(base_rss, 1),
        "rss_mb_started": round(rss_started, 1),
        "rss_mb_after_idle": round(rss_idle, 1),
        "rss_kb_per_worker": round((rss_idle - base_rss) * 1024 / workers, 1),
        "rss_mb_after_fires": round(rss_mb(), 1),
        "stop_s": round(stop_s, 3),
        "threads_after_stop": proc_status("Threads"),
        **idle,
        **fired,
    }


def child_goworker(workers: int, spread: int, window: float) -> dict[str, Any]:
    from goworker_py import Context, Handler, Worker

    log_path = quiet_logging("INFO")
    pool: list[Worker] = []

    def start(fire_times: list[dt.datetime], samples: list[Sample]) -> None:
        class Daily(Handler):
            def do(self, ctx: Context) -> None:
                samples.append((ctx.scheduled_time, time.time()))

        for i, at in enumerate(fire_times):
            cron = f"{at.second} {at.minute} {at.hour} * * *"
            worker = Worker(Daily, cron=cron, handle_signals=False, name=f"scale{i}")
            worker.run()
            pool.append(worker)

    def stop() -> None:
        for worker in pool:
            worker.cancel()
        for worker in pool:
            worker.wait(60)

    result = _measure(workers, spread, window, start, stop)
    remove_file(log_path)
    return {"kind": "goworker", **result}


def child_apscheduler(workers: int, spread: int, window: float) -> dict[str, Any]:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    scheduler = BackgroundScheduler()

    def start(fire_times: list[dt.datetime], samples: list[Sample]) -> None:
        def job(fire: float) -> None:
            samples.append((fire, time.time()))

        for i, at in enumerate(fire_times):
            trigger = CronTrigger(hour=at.hour, minute=at.minute, second=at.second)
            scheduler.add_job(job, trigger, args=[at.timestamp()], id=f"scale{i}")
        scheduler.start()

    def stop() -> None:
        scheduler.shutdown(wait=True)

    return {"kind": "apscheduler", **_measure(workers, spread, window, start, stop)}


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="jobs (10000; quick 2000)")
    parser.add_argument("--spread", type=int, default=None, help="fire seconds (60; quick 20)")
    parser.add_argument("--window", type=float, default=None, help="idle window, s (10; quick 5)")
    parser.add_argument("--child", choices=tuple(LABELS), help=argparse.SUPPRESS)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    n = args.workers or (2000 if args.quick else 10_000)
    spread = args.spread or (20 if args.quick else 60)
    window = args.window or (5.0 if args.quick else 10.0)
    if args.child:
        runner = child_goworker if args.child == "goworker" else child_apscheduler
        print(json.dumps(runner(n, spread, window)), flush=True)
        return
    report = Report("bench_scale", "B12", args.quick)
    report.calibration = calibrate(quick=True)
    results: dict[str, dict[str, Any]] = {}
    for kind, label in LABELS.items():
        print(f"{label}: {n} daily jobs, {window:g} s idle, fires over {spread} s ...", flush=True)
        child_args = ["--child", kind, "--workers", str(n), "--spread", str(spread)]
        with WitnessThread() as witness:
            result = run_child(
                __file__,
                [*child_args, "--window", str(window)],
                timeout=n * SETUP_BUDGET_PER_JOB * 4 + window + spread + 180,
            )
        result["witness_ms"] = witness.result
        results[kind] = result
        print(
            f"  start {result['startup_s']} s, stop {result['stop_s']} s, idle "
            f"{result['wakeups_per_s']} wake-ups/s over {result['window_s']} s, lateness "
            f"{fmt_stats(result['lateness_ms'], 'ms')}, missed {result['missed']}, peak "
            f"{result['peak_threads_while_firing']} threads",
            flush=True,
        )
        print(f"  meanwhile (noise witness): {fmt_stats(witness.result, 'ms')}", flush=True)
    gw, aps = results["goworker"], results["apscheduler"]
    names = {
        "goworker": f"{n} goworker-py workers",
        "apscheduler": f"APScheduler holding {n} daily jobs",
    }
    for kind, result in ((k, results[k]) for k in LABELS):
        label, mine = names[kind], kind == "goworker"
        report.add(f"start-up time, {label}", result["startup_s"], "s")
        report.add(f"clean stop time, {label}", result["stop_s"], "s")
        report.add(f"idle CPU, {label}", result["cpu_percent"], "% of a core")
        report.add(f"context switches, {label}", result["context_switches_per_s"], "/s")
        wake_target = WAKEUPS_TARGET if mine else None
        report.add(f"wake-ups, {label}", result["wakeups_per_s"], "/s", wake_target)
        report.add(f"threads, {label}", result["threads"], "threads")
        report.add(f"RSS, {label}", result["rss_mb_after_idle"], "MiB")
        rss_target = RSS_PER_WORKER_TARGET_KB if mine else None
        report.add(f"RSS per job, {label}", result["rss_kb_per_worker"], "KiB", rss_target)
    what = f"{n} daily jobs spread over {spread} s"
    for kind, result in ((k, results[k]) for k in LABELS):
        label = f"{what}, {LABELS[kind]}"
        for p in ("p50", "p99", "max"):
            report.add(f"lateness {p}, {label}", result["lateness_ms"].get(p), "ms")
        report.add(f"missed fires, {label}", result["missed"], "fires")
        peak = result["peak_threads_while_firing"]
        report.add(f"peak threads while firing, {label}", peak, "threads")
        report.add(f"CPU while firing, {label}", result["cpu_percent_while_firing"], "% of a core")
    report.details = {"goworker": gw, "apscheduler": aps}
    report.emit()


if __name__ == "__main__":
    main()
