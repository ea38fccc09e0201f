"""B3 bench_run_overhead: what goworker-py adds to one run, without the scheduler's wait.

A no-op handler (``before``/``do``/``after`` do nothing, no retries) runs 10,000 times through
``ShardRunner(settings, 0, host).execute(fire_time)`` - the code path every scheduled or
manual run takes - with ``settings = Worker(...).validate()`` and the package's local-mode
``ShardHost`` (``goworker_py.local.LocalHost``). The cost of calling the three methods
directly is subtracted. Repeated 5 times; the median repetition is reported (the fastest is
in the JSON).

Logging set-ups compared:

- ``info``: ``configure_logging(LoggerConfig(level="INFO", sink=<file in /tmp>))`` — production;
- ``none``: ``logger.remove()`` — no loguru sink at all;
- ``debug``: the same file sink at DEBUG — what loguru's default level (DEBUG) costs when
  the per-run ``debug`` lines are really written (to a file here, not a terminal).

Also: the split of the overhead before ``do`` and after it, the cost of each piece of the
per-run path (micro-benchmarks), the next-fire-time computation a scheduled run adds, and a
cProfile of the per-run path (top functions by own time).

**Cluster mode** (B3's "standalone vs cluster"): a real cluster-mode ``Worker`` (one shard, a
daily schedule that never fires meanwhile, session timeout 10 s) against a private ZooKeeper
(``_cluster.zookeeper()``, tick 100 ms, no fsync) claims its shard; its shard runner's
``execute(fire_time)`` is then called directly, as above — with ``ClusterHost`` behind it, a
run writes ZooKeeper twice: ``begin_run`` (a multi: check the claim, check the member node,
write the run marker) before ``before``, ``end_run`` (the marker's end state) after ``after``.
The fire time is an hour ahead, so that ``begin_run``'s misfire check (a fire time more than
``misfire_grace`` in the past is skipped) never trips over the seconds this takes; every run
is checked to have completed. INFO sink. Measured:

- the floor: a separate kazoo client on the same server times ``exists`` and what a run sends
  (the same three-op multi, then a ``set``), 1,000 times, and the CPU that costs;
- 2,000 runs x 3 repetitions timed as in local mode (median repetition, minus the direct
  call): the overhead per run, the process CPU per run (the run's thread and kazoo's), and
  the ZooKeeper requests per run from ``mntr`` deltas over all of them — every packet
  (``zk_packets_received``, pings included, ``mntr`` queries excluded), writes
  (``zk_cnt_updatelatency``) and reads (``zk_cnt_readlatency``);
- 1,000 alternations of one floor multi + set and one run, each timed: run minus floor with
  both sampled in the same instants (the machine's drift cancels);
- the split: ``execute()`` call → ``do`` entry (includes the begin multi), ``do`` return →
  ``execute()`` returns (includes the end write).

About 10 s of the total.

**etcd and Redis** (issue #11, every backend side by side; ``_backend_costs.py``): the same
worker on a private etcd and a private Redis — the floor of a run through the seam (the
backend's ``begin_run`` + ``end_run``), the overhead per run, and the server's own count of
the requests and writes each run sends (etcd ``/metrics``: gRPC messages received, Raft
proposals committed; Redis ``INFO commandstats``: top-level commands, Lua scripts run). Figures
carry the backend: ``cluster mode: backend writes per run [etcd]``. About 5 s each.

Target (printed, not asserted): ≤ 50 µs per run (standalone); cluster mode ≤ 2 writes (and
round trips) per run, on every backend.

About 35 s (``--quick``: 10 s).

Run: ``.venv/bin/python benchmarks/bench_run_overhead.py [--quick]
[--backends zookeeper etcd redis]``
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import pstats
import random
import statistics
import threading
import time
import timeit
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from _backend_costs import backend_run_costs, report_backend_costs
from _cluster import PacketCounter, WorkerPool, ZkTarget, one_shard_host
from _cluster import zookeeper as private_zookeeper
from _common import Report, calibrate, cpu_seconds, fmt_stats, parse_args, remove_file, stats
from _targets import BACKENDS, started
from loguru import logger

from goworker_py import Context, Handler, LoggerConfig, Worker, aio, configure_logging
from goworker_py.local import LocalHost
from goworker_py.retry import StepRetrier
from goworker_py.runner import RunSettings, ShardRunner
from goworker_py.schedule import parse_schedule

TARGET_US = 50.0
#: ZooKeeper writes per cluster-mode run: the run marker's begin (a multi) and its end.
TARGET_ZK_WRITES = 2.0


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
    ids = random.Random(0)
    pieces: dict[str, Callable[[], object]] = {
        "run id: 64 random bits (made before the shard sleeps)": lambda: (
            f"{ids.getrandbits(64):016x}"
        ),
        "aio.RunEvent() (the run's cancel event, made before the shard sleeps)": aio.RunEvent,
        "host.instance_for (a cached view)": lambda: host.instance_for(0),
        "logger.bind(run=...) (made before the shard sleeps)": lambda: runner.logger.bind(
            run="abc"
        ),
        "Context(...) (made before the shard sleeps)": lambda: Context(
            run_id="x",
            scheduled_time=fire,
            shard=runner.shard,
            params="",
            instance=instance,
            logger=runner.logger,
            event=ctx.event,
            clock=settings.clock,
        ),
        "ctx._begin(...) (at the run's start)": lambda: ctx._begin(
            fire, instance, None, False, False, None
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
        "the run's TRACE line, filtered out (after the run)": lambda: runner.logger.trace(
            "run for {} {} ({:.1f} ms)", fire, "ok", 0.1
        ),
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


# -- cluster mode -------------------------------------------------------------------------------


class FloorClient:
    """A separate kazoo client on the same server: the round trips a cluster run cannot beat.

    :meth:`pair` sends what a run sends, one after the other: the multi ``begin_run`` sends
    (check a node, check another, set a third) and a ``set``; each timed.
    """

    def __init__(self, zk: ZkTarget) -> None:
        from kazoo.client import KazooClient

        self.client = KazooClient(hosts=zk.hosts, timeout=10.0)
        self.client.start(timeout=10.0)
        self.base = f"/bench-floor-{uuid.uuid4().hex[:8]}"
        for name in ("claim", "member", "marker"):
            self.client.ensure_path(f"{self.base}/{name}")
        self.marker = f"{self.base}/marker"
        self.payload = b"m" * 160  # about the size of a run marker's JSON

    def exists(self) -> float:
        start = time.perf_counter()
        self.client.exists(self.marker)
        return time.perf_counter() - start

    def pair(self) -> tuple[float, float]:
        """Seconds of (the multi, the set)."""
        start = time.perf_counter()
        transaction = self.client.transaction()
        transaction.check(f"{self.base}/claim", 0)
        transaction.check(f"{self.base}/member", -1)
        transaction.set_data(self.marker, self.payload)
        transaction.commit()
        middle = time.perf_counter()
        self.client.set(self.marker, self.payload)
        return middle - start, time.perf_counter() - middle

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.delete(self.base, recursive=True)
        self.client.stop()
        self.client.close()


def cluster_costs(runs: int, reps: int, floor_n: int) -> dict[str, Any]:
    """The cluster-mode run path against a private ZooKeeper (see the module docstring)."""
    out: dict[str, Any] = {"runs": runs, "reps": reps, "floor_samples": floor_n}
    with private_zookeeper(tick_time=100) as zk, WorkerPool() as pool:
        out["server"] = zk.describe()
        print(f"  cluster mode: {zk.describe()}", flush=True)
        floor = FloorClient(zk)
        try:
            host = one_shard_host(pool, zk.hosts, Noop, "bench-cluster")
            runner = host.runners[0]
            out["host"] = f"{type(host).__module__}.{type(host).__qualname__}"
            # An hour ahead: begin_run skips a fire time more than misfire_grace in the past.
            fire = datetime.now(runner.settings.zone) + timedelta(hours=1)
            for _ in range(200):
                runner.execute(fire)
                floor.pair()
            last = runner.execute(fire)
            if not last.ok:
                raise RuntimeError(f"a cluster-mode run did not complete: {last}")

            # The floor alone: round trips, and the CPU a multi + set costs this process.
            exists = [floor.exists() for _ in range(floor_n)]
            cpu0 = cpu_seconds()
            pairs = [floor.pair() for _ in range(floor_n)]
            floor_cpu = (cpu_seconds() - cpu0) / floor_n
            out["floor_ms"] = {
                "exists": stats(exists, 1e3),
                "multi": stats([m for m, _ in pairs], 1e3),
                "set": stats([s for _, s in pairs], 1e3),
                "multi+set": stats([m + s for m, s in pairs], 1e3),
            }
            out["floor_cpu_us_per_pair"] = round(floor_cpu * 1e6, 2)

            # Runs, timed as in local mode; requests counted on the server meanwhile.
            counter = PacketCounter(zk)
            before, runs0, cpu0 = counter.snapshot(), runner.runs, cpu_seconds()
            total, fastest = per_call_us(functools.partial(runner.execute, fire), runs, reps)
            cpu = cpu_seconds() - cpu0
            after = counter.snapshot()
            count = runner.runs - runs0
            if count != runs * reps + 1:  # per_call_us calls once before timing
                raise RuntimeError(f"{runs * reps + 1} runs expected, {count} completed")
            out["execute_us_median"] = round(total, 3)
            out["execute_us_min"] = round(fastest, 3)
            out["cpu_us_per_run"] = round(cpu / count * 1e6, 2)
            out["completed_runs"] = count
            out["zk_per_run"] = {k: round((after[k] - before[k]) / count, 4) for k in after}
            out["zk_totals"] = {k: after[k] - before[k] for k in after}

            # Interleaved: a floor pair, then a run, each timed; the machine's drift cancels.
            run_s, pair_s = [], []
            execute = runner.execute
            for _ in range(floor_n):
                multi, setter = floor.pair()
                pair_s.append(multi + setter)
                start = time.perf_counter()
                execute(fire)
                run_s.append(time.perf_counter() - start)
            out["interleaved_us"] = {
                "run": stats(run_s, 1e6, 1),
                "floor_pair": stats(pair_s, 1e6, 1),
                "run_minus_pair": stats(
                    [r - p for r, p in zip(run_s, pair_s, strict=True)], 1e6, 1
                ),
            }

            # call -> do entry, do return -> execute() returns: a Probe runner, same claim.
            probe = ShardRunner(replace(runner.settings, handler_factory=Probe), 0, host)
            probe.claim = runner.claim
            Probe.marks = []
            before_do, after_do = [], []
            for _ in range(floor_n):
                start = time.perf_counter()
                probe.execute(fire)
                end = time.perf_counter()
                entry, exit_ = Probe.marks[-1]
                before_do.append(entry - start)
                after_do.append(end - exit_)
            out["split"] = {
                "call_to_do_entry_us": stats(before_do, 1e6, 1),
                "do_exit_to_return_us": stats(after_do, 1e6, 1),
            }
        finally:
            floor.close()
    return out


def report_cluster(report: Report, cluster: dict[str, Any], direct: float) -> None:
    """Print and record the cluster-mode figures of :func:`cluster_costs`."""
    floor = cluster["floor_ms"]
    for name, s in floor.items():
        print(f"    ZK {name} round trip: {fmt_stats(s, 'ms')}")
    report.add("ZooKeeper round trip (exists) p50", floor["exists"]["p50"] * 1e3, "µs")
    report.add(
        "floor of a cluster run: multi + set round trips, p50",
        floor["multi+set"]["p50"] * 1e3,
        "µs",
        note=f"mean {floor['multi+set']['mean'] * 1e3:.0f} µs; multi p50 "
        f"{floor['multi']['p50'] * 1e3:.0f} µs, set p50 {floor['set']['p50'] * 1e3:.0f} µs",
    )
    overhead = cluster["execute_us_median"] - direct
    print(
        f"    cluster execute() {cluster['execute_us_median']:.1f} µs per run "
        f"(fastest rep {cluster['execute_us_min']:.1f}); {cluster['completed_runs']} runs",
        flush=True,
    )
    report.add(
        "cluster mode: framework overhead per run, incl. its 2 ZooKeeper writes (INFO sink)",
        overhead,
        "µs",
        note=f"mean of {cluster['completed_runs']} runs; standalone figure above + 2 round trips",
    )
    inter = cluster["interleaved_us"]
    print(
        f"    interleaved: run {fmt_stats(inter['run'], 'µs')}; floor pair "
        f"{fmt_stats(inter['floor_pair'], 'µs')}",
        flush=True,
    )
    report.add(
        "cluster mode: run minus the floor (multi + set), interleaved, p50",
        inter["run_minus_pair"]["p50"],
        "µs",
        note=f"run p50 {inter['run']['p50']:.0f} µs vs floor p50 {inter['floor_pair']['p50']:.0f} "
        "µs, sampled alternately",
    )
    report.add(
        "cluster mode: process CPU per run (run thread + kazoo)",
        cluster["cpu_us_per_run"],
        "µs",
        note=f"a bare multi + set costs {cluster['floor_cpu_us_per_pair']:.0f} µs of CPU",
    )
    report.add(
        "cluster mode: process CPU per run above a bare multi + set",
        round(cluster["cpu_us_per_run"] - cluster["floor_cpu_us_per_pair"], 2),
        "µs",
    )
    per_run = cluster["zk_per_run"]
    report.add(
        "cluster mode: ZooKeeper writes per run (mntr zk_cnt_updatelatency)",
        per_run["writes"],
        "writes",
        TARGET_ZK_WRITES,
    )
    report.add(
        "cluster mode: ZooKeeper requests per run (mntr zk_packets_received)",
        per_run["requests"],
        "requests",
        note=f"reads {per_run['reads']}/run; pings included",
    )
    split = cluster["split"]
    print(
        f"    cluster execute() call → do entry: {fmt_stats(split['call_to_do_entry_us'], 'µs')}"
        f"; do return → execute() returns: {fmt_stats(split['do_exit_to_return_us'], 'µs')}"
    )
    report.add(
        "cluster mode: execute() call → do entry p50 (incl. the begin multi)",
        split["call_to_do_entry_us"]["p50"],
        "µs",
    )
    report.add(
        "cluster mode: do return → execute() returns p50 (incl. the end write)",
        split["do_exit_to_return_us"]["p50"],
        "µs",
    )


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
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

        cluster_runs, cluster_reps = (300, 2) if args.quick else (2_000, 3)
        if "zookeeper" in args.backends:
            cluster = cluster_costs(cluster_runs, cluster_reps, 200 if args.quick else 1_000)
            details["cluster"] = cluster
            report_cluster(report, cluster, direct)
        backend_runs = (200, 2) if args.quick else (600, 3)
        for backend in args.backends:
            if backend == "zookeeper":
                continue
            with started(backend) as server:
                if server is None:
                    continue
                costs = backend_run_costs(server, Noop, *backend_runs, 100 if args.quick else 300)
                details[f"cluster_{backend}"] = costs
                report_backend_costs(report, backend, costs, direct)

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
