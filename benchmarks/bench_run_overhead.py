"""B3 bench_run_overhead: what goworker-py adds to one run, without the scheduler's wait.

A no-op handler (``before``/``do``/``after`` do nothing, no retries) runs 10,000 times through
``ShardRunner(settings, 0, host).execute(fire_time)`` - the code path every scheduled or
manual run takes - with ``settings = Worker(...).validate()`` and the package's local-mode
``ShardHost`` (``goworker_py.local.LocalHost``; a minimal equivalent if it is absent). The
cost of calling the three methods directly is subtracted. Repeated 5 times; the median
repetition is reported (the fastest is in the JSON). About 15 s (``--quick``: 3 s).

Logging set-ups compared:

- ``info``: ``configure_logging(LoggerConfig(level="INFO", sink=<file in /tmp>))`` — production;
- ``none``: ``logger.remove()`` — no loguru sink at all;
- ``debug``: the same file sink at DEBUG — what loguru's default level (DEBUG) costs when
  the per-run ``debug`` lines are really written (to a file here, not a terminal).

Also: the split of the overhead before ``do`` and after it, the cost of each piece of the
per-run path (micro-benchmarks), the next-fire-time computation a scheduled run adds, and a
cProfile of the per-run path (top functions by own time).

Target (printed, not asserted): ≤ 50 µs per run.

Run: ``.venv/bin/python benchmarks/bench_run_overhead.py [--quick]``
"""

from __future__ import annotations

import cProfile
import functools
import io
import os
import pstats
import statistics
import threading
import time
import timeit
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from _common import Report, calibrate, fmt_stats, parse_args, remove_file, stats
from loguru import logger

from goworker_py import Context, Handler, LoggerConfig, Worker, configure_logging
from goworker_py.local import LocalHost
from goworker_py.retry import StepRetrier
from goworker_py.runner import RunSettings, ShardRunner
from goworker_py.schedule import parse_schedule

TARGET_US = 50.0


class Noop(Handler):
    """before/do/after that do nothing."""

    def before(self, ctx: Context) -> None:
        pass

    def do(self, ctx: Context) -> None:
        pass

    def after(self, ctx: Context) -> None:
        pass


class Probe(Handler):
    """Records when ``do`` starts and returns (perf_counter)."""

    marks: list[tuple[float, float]] = []

    def do(self, ctx: Context) -> None:
        start = time.perf_counter()
        Probe.marks.append((start, time.perf_counter()))


def make_host(settings: RunSettings) -> LocalHost:
    """The package's own local host: what a local-mode worker uses per run."""
    return LocalHost(settings, threading.Event())


def make_runner(handler: Any) -> tuple[ShardRunner, Any]:
    """A shard runner (never started) for a validated worker's settings, and its host."""
    settings = Worker(handler, handle_signals=False, name="bench").validate()
    host = make_host(settings)
    return ShardRunner(settings, 0, host), host


def per_call_us(func: Callable[[], object], runs: int, reps: int) -> tuple[float, float]:
    """(median, min) over ``reps`` of the µs per call of ``func``, called ``runs`` times."""
    func()
    timings = []
    for _ in range(reps):
        timer = timeit.Timer(func)
        timings.append(timer.timeit(runs) / runs * 1e6)
    return statistics.median(timings), min(timings)


def direct_cost(runs: int, reps: int, fresh: bool) -> tuple[float, float]:
    """µs per run of calling before/do/after directly (``fresh``: a new handler each time)."""
    runner, _ = make_runner(Noop)
    handler = Noop()
    ctx = Context(
        run_id="direct",
        scheduled_time=datetime.now(timezone.utc),
        shard=runner.shard,
        params="",
        instance=runner.host.instance_for(0),
        logger=runner.logger,
        event=threading.Event(),
        clock=runner.settings.clock,
    )

    def call_reused() -> None:
        handler.before(ctx)
        handler.do(ctx)
        handler.after(ctx)

    def call_fresh() -> None:
        h = Noop()
        h.before(ctx)
        h.do(ctx)
        h.after(ctx)

    return per_call_us(call_fresh if fresh else call_reused, runs, reps)


def set_logging(mode: str, path: str) -> None:
    if mode == "none":
        logger.remove()
    else:
        configure_logging(LoggerConfig(level=mode.upper(), sink=path))


def execute_cost(handler: Any, runs: int, reps: int) -> tuple[float, float]:
    runner, _ = make_runner(handler)
    fire = datetime.now(runner.settings.zone)
    for _ in range(200):
        runner.execute(fire)
    return per_call_us(functools.partial(runner.execute, fire), runs, reps)


def split_cost(runs: int) -> dict[str, dict[str, float]]:
    """µs from calling execute() to ``do`` entry, and from ``do`` returning to execute() done."""
    runner, _ = make_runner(Probe)
    fire = datetime.now(runner.settings.zone)
    Probe.marks = []
    before, after = [], []
    for _ in range(runs):
        start = time.perf_counter()
        runner.execute(fire)
        end = time.perf_counter()
        entry, exit_ = Probe.marks[-1]
        before.append(entry - start)
        after.append(end - exit_)
    return {
        "call_to_do_entry_us": stats(before, 1e6, 2),
        "do_exit_to_return_us": stats(after, 1e6, 2),
    }


def cold_split(runs: int, pause: float = 0.2) -> dict[str, dict[str, float]]:
    """Like :func:`split_cost`, but each run follows ``pause`` s of idleness (cold caches).

    This is what a scheduled run pays: its thread wakes after a long sleep, with the CPU's
    caches, branch predictors and frequency no longer tuned to this code.
    """
    runner, _ = make_runner(Probe)
    fire = datetime.now(runner.settings.zone)
    Probe.marks = []
    pause_event = threading.Event()
    before, after, trivial = [], [], []
    for _ in range(runs):
        pause_event.wait(pause)
        start = time.perf_counter()
        runner.execute(fire)
        end = time.perf_counter()
        entry, exit_ = Probe.marks[-1]
        before.append(entry - start)
        after.append(end - exit_)
        pause_event.wait(pause)
        start = time.perf_counter()
        Probe().do(None)  # type: ignore[arg-type]
        trivial.append(time.perf_counter() - start)
    return {
        "call_to_do_entry_us": stats(before, 1e6, 1),
        "do_exit_to_return_us": stats(after, 1e6, 1),
        "direct_do_call_us": stats(trivial, 1e6, 1),
    }


def component_costs(runs: int) -> dict[str, float]:
    """µs per call of each piece of ShardRunner.execute/_perform (what one run pays)."""
    runner, host = make_runner(Noop)
    settings = runner.settings
    fire = datetime.now(settings.zone)
    instance = host.instance_for(0)
    ctx = Context(
        run_id="x",
        scheduled_time=fire,
        shard=runner.shard,
        params="",
        instance=instance,
        logger=runner.logger,
        event=threading.Event(),
        clock=settings.clock,
    )
    handler = Noop()
    every_second = parse_schedule("*/1 * * * * *", settings.zone)
    daily = parse_schedule("0 3 * * *", settings.zone)
    pieces: dict[str, Callable[[], object]] = {
        "uuid.uuid4().hex[:16] (run id)": lambda: uuid.uuid4().hex[:16],
        "threading.Event() (per-run cancel event)": threading.Event,
        "host.instance_for → dataclasses.replace(WorkerInstance)": lambda: host.instance_for(0),
        "logger.bind(run=...)": lambda: runner.logger.bind(run="abc"),
        "Context(...)": lambda: Context(
            run_id="x",
            scheduled_time=fire,
            shard=runner.shard,
            params="",
            instance=instance,
            logger=runner.logger,
            event=ctx.event,
            clock=settings.clock,
        ),
        "handler_factory() (fresh handler)": settings.handler_factory,
        "StepRetrier(...).run() for one no-op step": lambda: StepRetrier(
            policy=settings.retry_policy,
            call=functools.partial(handler.do, ctx),
            report=lambda err: None,
            set_attempt=lambda attempt: setattr(ctx, "attempt", attempt),
            cancelled=ctx.event.is_set,
            sleep=ctx.wait,
        ).run(),
        "scheduled_time.isoformat() (eager arg of a filtered debug line)": fire.isoformat,
        "ctx.logger.debug(...) filtered out": lambda: runner.logger.debug("run finished"),
        "next fire time, '*/1 * * * * *' (scheduled runs only)": lambda: every_second.next_after(
            fire
        ),
        "next fire time, '0 3 * * *' (scheduled runs only)": lambda: daily.next_after(fire),
        "ShardRunner._now()": runner._now,
    }
    return {name: round(per_call_us(func, runs, 3)[0], 3) for name, func in pieces.items()}


def profile_path(runs: int, top: int = 15) -> tuple[str, list[dict[str, Any]]]:
    """cProfile of ``runs`` executes: the printed table and the top functions by own time."""
    runner, _ = make_runner(Noop)
    fire = datetime.now(runner.settings.zone)
    for _ in range(200):
        runner.execute(fire)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        runner.execute(fire)
    profiler.disable()
    out = io.StringIO()
    table = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    table.print_stats(top)
    rows = []
    entries = table.stats  # type: ignore[attr-defined]
    ordered = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in ordered:
        short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append(
            {
                "function": f"{short}:{line}({name})",
                "calls_per_run": round(ncalls / runs, 2),
                "own_us_per_run": round(tottime / runs * 1e6, 3),
                "cumulative_us_per_run": round(cumtime / runs * 1e6, 3),
            }
        )
    return out.getvalue(), rows


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0])
    runs, reps = (2_000, 3) if args.quick else (10_000, 5)
    report = Report("bench_run_overhead", "B3", args.quick)
    report.calibration = calibrate(quick=True)
    log_path = os.path.join("/tmp", f"goworker-bench-overhead-{os.getpid()}.log")
    host_class = type(make_runner(Noop)[1])
    details: dict[str, Any] = {"runs": runs, "reps": reps, "host": host_class.__qualname__}
    print(f"  host: {host_class.__module__}.{host_class.__qualname__}")

    direct, direct_min = direct_cost(runs, reps, fresh=False)
    direct_fresh, _ = direct_cost(runs, reps, fresh=True)
    report.add("direct call of before+do+after (same handler)", direct, "µs")
    report.add("direct call incl. a fresh handler instance", direct_fresh, "µs")
    details["direct_us"] = {"median": direct, "min": direct_min, "fresh_handler": direct_fresh}

    labels = {
        "info": "loguru INFO sink to a file",
        "none": "no loguru sink (logger.remove())",
        "debug": "loguru DEBUG sink to a file",
    }
    per_mode: dict[str, Any] = {}
    try:
        for mode in ("info", "none", "debug"):
            set_logging(mode, log_path)
            total, total_min = execute_cost(Noop, runs, reps)
            shared, _ = execute_cost(Noop(), runs, reps)
            overhead = total - direct
            per_mode[mode] = {
                "execute_us_median": round(total, 3),
                "execute_us_min": round(total_min, 3),
                "overhead_us": round(overhead, 3),
                "execute_us_handler_instance": round(shared, 3),
                "overhead_us_handler_instance": round(shared - direct, 3),
            }
            report.add(f"framework overhead per run, {labels[mode]}", overhead, "µs", TARGET_US)
            print(
                f"    execute() {total:.2f} µs (fastest rep {total_min:.2f}); with a handler "
                f"instance instead of a class: {shared:.2f} µs"
            )
            remove_file(log_path)
        details["modes"] = per_mode

        set_logging("info", log_path)
        split = split_cost(runs)
        details["split"] = split
        print(f"  execute() call → do entry: {fmt_stats(split['call_to_do_entry_us'], 'µs')}")
        print(f"  do return → execute() returns: {fmt_stats(split['do_exit_to_return_us'], 'µs')}")
        report.add("execute() call → do entry p50", split["call_to_do_entry_us"]["p50"], "µs")
        report.add("do return → execute() returns p50", split["do_exit_to_return_us"]["p50"], "µs")

        cold = cold_split(8 if args.quick else 25)
        details["cold_split"] = cold
        print(
            "  after 0.2 s idle (cold): execute() call → do entry "
            f"{fmt_stats(cold['call_to_do_entry_us'], 'µs')}; do return → execute() returns "
            f"{fmt_stats(cold['do_exit_to_return_us'], 'µs')}; a direct do() call "
            f"{fmt_stats(cold['direct_do_call_us'], 'µs')}"
        )
        report.add(
            "execute() call → do entry p50, after 0.2 s idle (cold)",
            cold["call_to_do_entry_us"]["p50"],
            "µs",
        )
        report.add(
            "direct do() call p50, after 0.2 s idle (cold)",
            cold["direct_do_call_us"]["p50"],
            "µs",
        )

        pieces = component_costs(max(runs // 2, 1000))
        details["components_us"] = pieces
        print("  cost of each piece of the per-run path (µs per call, median of 3):")
        for name, cost in pieces.items():
            print(f"    {cost:8.3f}  {name}")
        report.add(
            "next fire time computation, '*/1 * * * * *'",
            pieces["next fire time, '*/1 * * * * *' (scheduled runs only)"],
            "µs",
            note="added to every scheduled run, outside execute()",
        )

        table, rows = profile_path(runs)
        details["profile_top"] = rows
        print(f"  cProfile of {runs} executes (INFO sink), top functions by own time:")
        for line in table.strip().splitlines():
            if line.strip():
                print("    " + line)
    finally:
        remove_file(log_path)
    report.details = details
    report.emit()


if __name__ == "__main__":
    main()
