"""B8 bench_idle: idle cron workers — wake-ups, CPU, context switches, RSS, threads, start, stop.

Every configuration runs in a fresh interpreter. All schedules are daily (minute 0 of the hour
twelve hours from now), so nothing fires during the run. Over an idle window the measuring
thread sleeps through (``_idle.measure_window``): CPU is the ``getrusage`` delta of the whole
process / wall time; context switches are the voluntary + involuntary ones of the whole process
per second; *wake-ups* are the same without the measuring thread's own (its one sleep), i.e.
what the library's threads cost.

1. 1,000 local workers (INFO log to a file): start-up time of the 1,000 workers (construct +
   ``run()``), then RSS (``VmRSS``) and threads, the idle window, and the time for all of them
   to stop cleanly (``cancel()`` then ``wait()``). An idle shard *parks* (no thread of its own;
   the process-wide alarm starts a fresh one a second before its fire time and sleeps until
   then, noticing wall-clock steps through a ``timerfd`` rather than by polling), so nothing
   periodic runs: the window just has to be long enough to see rare wake-ups (20 s: a rate
   resolution of 0.05/s).
2. For comparison, the same 1,000 daily jobs in one APScheduler 3 ``BackgroundScheduler``
   (``add_job`` x 1,000 + ``start()``; ``shutdown(wait=True)``), same window.
3. Cluster mode: one goworker-py instance with 16 shards against a real ZooKeeper (a private
   server, or ``ZK_HOSTS``), the library's default session timeout (10 s: kazoo pings about
   every 3 s); window 12 s, starting once the instance holds all 16 shards.
4. The anti-pattern baseline: 16 threads each polling every 10 ms
   (``while True: time.sleep(0.01); check``); window 5 s.

About 65 s (``--quick``: windows of 5, 5, 2.5 and 1.5 s, about 20 s). 10,000 workers: B12
``bench_scale``.

Targets (printed, not asserted; issue #12): at most 1 wake-up/s for the whole process; idle CPU
and context switches within 2x APScheduler's; 1,000 workers start in <= 0.2 s and stop in
<= 0.1 s; RSS per idle worker <= 16 KiB. Idle CPU <= 2 % of one core (the first idle goal).

Run: ``.venv/bin/python benchmarks/bench_idle.py [--quick] [--workers N] [--window S]``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from _cluster import zookeeper
from _common import (
    Report,
    calibrate,
    parse_args,
    proc_status,
    quiet_logging,
    remove_file,
    rss_mb,
    run_child,
)
from _idle import CPU_RATIO_TARGET, WAKEUPS_TARGET, daily_cron, measure_window, ratio

CPU_TARGET_PERCENT = 2.0
#: Issue #12's goals for 1,000 workers: start-up and clean stop (s), RSS per idle worker (KiB).
START_TARGET_S = 0.2
STOP_TARGET_S = 0.1
RSS_PER_WORKER_TARGET_KB = 16.0
CLUSTER_SHARDS = 16
#: The polling anti-pattern baseline: threads, and the sleep between two checks.
POLLERS = 16
POLL_INTERVAL = 0.01


def child_goworker(workers: int, window: float) -> dict[str, Any]:
    from goworker_py import Context, Handler, Worker

    class Daily(Handler):
        def do(self, ctx: Context) -> None:
            pass

    log_path = quiet_logging("INFO")
    cron, _ = daily_cron()
    base_rss, base_threads = rss_mb(), proc_status("Threads")
    started = time.perf_counter()
    pool = [Worker(Daily, cron=cron, handle_signals=False, name=f"idle{i}") for i in range(workers)]
    for worker in pool:
        worker.run()
    startup_s = time.perf_counter() - started
    time.sleep(1.0)  # let every shard park (and the log lines be written)
    rss_started = rss_mb()
    threads, python_threads = proc_status("Threads"), threading.active_count()
    idle = measure_window(window)
    rss_idle = rss_mb()
    stop_started = time.perf_counter()
    for worker in pool:
        worker.cancel()
    reasons = [worker.wait(60).value for worker in pool]
    stop_s = time.perf_counter() - stop_started
    time.sleep(0.2)
    remove_file(log_path)
    return {
        "kind": "goworker",
        "workers": workers,
        "cron": cron,
        "startup_s": round(startup_s, 3),
        "startup_ms_per_worker": round(startup_s / workers * 1e3, 3),
        "threads": threads,
        "threads_before": base_threads,
        "python_threads": python_threads,
        "rss_mb_before": round(base_rss, 1),
        "rss_mb_started": round(rss_started, 1),
        "rss_mb_after_idle": round(rss_idle, 1),
        "rss_kb_per_worker": round((rss_idle - base_rss) * 1024 / workers, 1),
        "stop_s": round(stop_s, 3),
        "stopped_cancelled": reasons.count("cancelled"),
        "threads_after_stop": proc_status("Threads"),
        **idle,
    }


def child_apscheduler(workers: int, window: float) -> dict[str, Any]:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    def job() -> None:
        pass

    _, hour = daily_cron()
    base_rss, base_threads = rss_mb(), proc_status("Threads")
    started = time.perf_counter()
    scheduler = BackgroundScheduler()
    for i in range(workers):
        scheduler.add_job(job, CronTrigger(hour=hour, minute=0), id=f"idle{i}")
    scheduler.start()
    startup_s = time.perf_counter() - started
    time.sleep(1.0)
    rss_started = rss_mb()
    threads, python_threads = proc_status("Threads"), threading.active_count()
    idle = measure_window(window)
    rss_idle = rss_mb()
    stop_started = time.perf_counter()
    scheduler.shutdown(wait=True)
    stop_s = time.perf_counter() - stop_started
    return {
        "kind": "apscheduler",
        "workers": workers,
        "cron": f"CronTrigger(hour={hour}, minute=0)",
        "startup_s": round(startup_s, 3),
        "startup_ms_per_worker": round(startup_s / workers * 1e3, 3),
        "threads": threads,
        "threads_before": base_threads,
        "python_threads": python_threads,
        "rss_mb_before": round(base_rss, 1),
        "rss_mb_started": round(rss_started, 1),
        "rss_mb_after_idle": round(rss_idle, 1),
        "rss_kb_per_worker": round((rss_idle - base_rss) * 1024 / workers, 1),
        "stop_s": round(stop_s, 3),
        **idle,
    }


def child_cluster(hosts: str, shards: int, window: float) -> dict[str, Any]:
    """One cluster-mode instance owning ``shards`` daily shards, idle."""
    from _cluster import cluster_worker, service_name, settled

    from goworker_py import Context, DiscoveryConfig, Handler

    class Daily(Handler):
        def do(self, ctx: Context) -> None:
            pass

    log_path = quiet_logging("INFO")
    cron, _ = daily_cron()
    session_timeout = DiscoveryConfig().session_timeout  # the library's default
    base_rss, base_threads = rss_mb(), proc_status("Threads")
    started = time.perf_counter()
    worker = cluster_worker(
        hosts,
        service_name("bench-idle"),
        shards,
        handler=Daily,
        cron=cron,
        session_timeout=session_timeout,
        name="idle-cluster",
    )
    worker.run()
    try:
        ready_at, state = settled([worker], shards, timeout=30)
        if ready_at is None:
            raise RuntimeError(f"the instance did not claim its {shards} shards: {state.why}")
        startup_s = ready_at - started
        time.sleep(0.5)  # let every thread reach its wait
        threads = proc_status("Threads")
        idle = measure_window(window)
        claims = len(worker.host.claims)
        rss_idle = rss_mb()
    finally:
        stop_started = time.perf_counter()
        worker.cancel()
        reason = worker.wait(60).value
        stop_s = time.perf_counter() - stop_started
        remove_file(log_path)
    return {
        "kind": "cluster",
        "shards": shards,
        "claims_during_window": claims,
        "cron": cron,
        "session_timeout_s": session_timeout,
        "startup_s": round(startup_s, 3),
        "threads": threads,
        "threads_before": base_threads,
        "rss_mb_before": round(base_rss, 1),
        "rss_mb_after_idle": round(rss_idle, 1),
        "stop_s": round(stop_s, 3),
        "stop_reason": reason,
        **idle,
    }


def child_polling(pollers: int, window: float) -> dict[str, Any]:
    """The anti-pattern: ``pollers`` threads, each ``time.sleep(0.01)`` then a due check."""
    due = time.time() + 12 * 3600  # like the daily schedules: never due during the run
    running, fired = [True], [0]

    def poll() -> None:
        while running[0]:
            time.sleep(POLL_INTERVAL)
            if time.time() >= due:
                fired[0] += 1

    threads = [threading.Thread(target=poll, name=f"poll{i}", daemon=True) for i in range(pollers)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    count = proc_status("Threads")
    idle = measure_window(window)
    running[0] = False
    for thread in threads:
        thread.join(5)
    return {
        "kind": "polling",
        "pollers": pollers,
        "interval_s": POLL_INTERVAL,
        "threads": count,
        "fired": fired[0],
        **idle,
    }


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1000, help="idle workers (default 1000)")
    parser.add_argument("--window", type=float, default=None, help="goworker idle window, s")
    parser.add_argument(
        "--child",
        choices=("goworker", "apscheduler", "cluster", "polling"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--hosts", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=16, help=argparse.SUPPRESS)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    window = args.window or (5.0 if args.quick else 20.0)
    if args.child == "cluster":
        print(json.dumps(child_cluster(args.hosts, args.count, window)), flush=True)
        return
    if args.child == "polling":
        print(json.dumps(child_polling(args.count, window)), flush=True)
        return
    if args.child:
        runner = child_goworker if args.child == "goworker" else child_apscheduler
        print(json.dumps(runner(args.workers, window)), flush=True)
        return
    report = Report("bench_idle", "B8", args.quick)
    report.calibration = calibrate(quick=True)
    n = args.workers
    print(f"{n} idle daily workers, {window:g} s idle window ...", flush=True)
    gw = run_child(
        __file__,
        ["--child", "goworker", "--workers", str(n), "--window", str(window)],
        timeout=window + 120,
    )
    print(f"APScheduler holding {n} daily jobs, {window:g} s idle window ...", flush=True)
    aps = run_child(
        __file__,
        ["--child", "apscheduler", "--workers", str(n), "--window", str(window)],
        timeout=window + 120,
    )
    label = f"{n} idle goworker-py workers"
    report.add(f"idle CPU, {label}", gw["cpu_percent"], "% of a core", CPU_TARGET_PERCENT)
    report.add(f"context switches, {label}", gw["context_switches_per_s"], "/s")
    report.add(f"wake-ups, {label}", gw["wakeups_per_s"], "/s", WAKEUPS_TARGET)
    report.add(f"RSS, {label}", gw["rss_mb_after_idle"], "MiB")
    report.add(f"RSS per worker, {label}", gw["rss_kb_per_worker"], "KiB", RSS_PER_WORKER_TARGET_KB)
    report.add(f"threads, {label}", gw["threads"], "threads")
    report.add(f"start-up time, {label}", gw["startup_s"], "s", START_TARGET_S)
    report.add(f"clean stop time, {label}", gw["stop_s"], "s", STOP_TARGET_S)
    alabel = f"APScheduler holding {n} daily jobs"
    report.add(f"idle CPU, {alabel}", aps["cpu_percent"], "% of a core")
    report.add(f"context switches, {alabel}", aps["context_switches_per_s"], "/s")
    report.add(f"wake-ups, {alabel}", aps["wakeups_per_s"], "/s")
    report.add(f"RSS, {alabel}", aps["rss_mb_after_idle"], "MiB")
    report.add(f"RSS per job, {alabel}", aps["rss_kb_per_worker"], "KiB")
    report.add(f"threads, {alabel}", aps["threads"], "threads")
    report.add(f"start-up time, {alabel}", aps["startup_s"], "s")
    report.add(f"clean stop time, {alabel}", aps["stop_s"], "s")
    # Both windows include the measuring thread's one switch, so neither ratio divides by 0;
    # near zero both are at the resolution of the window (CPU: a few hundred microseconds).
    versus = f"{n} idle workers, goworker-py / APScheduler"
    report.add(
        f"idle CPU ratio, {versus}",
        ratio(gw["cpu_percent"], aps["cpu_percent"]),
        "x",
        CPU_RATIO_TARGET,
        note=f"{gw['cpu_s'] * 1e3:.2f} ms vs {aps['cpu_s'] * 1e3:.2f} ms of CPU in the window",
    )
    report.add(
        f"context switches ratio, {versus}",
        ratio(gw["context_switches_per_s"], aps["context_switches_per_s"]),
        "x",
        CPU_RATIO_TARGET,
    )

    cluster_window = 2.5 if args.quick else 12.0
    with zookeeper() as zk:
        print(zk.describe(), flush=True)
        print(
            f"1 cluster-mode instance, {CLUSTER_SHARDS} daily shards, "
            f"{cluster_window:g} s idle window ...",
            flush=True,
        )
        cluster_args = ["--child", "cluster", "--hosts", zk.hosts, "--count", str(CLUSTER_SHARDS)]
        cluster = run_child(
            __file__, [*cluster_args, "--window", str(cluster_window)], timeout=cluster_window + 90
        )
    poll_window = 1.5 if args.quick else 5.0
    print(
        f"{POLLERS} threads polling every {POLL_INTERVAL * 1e3:g} ms, {poll_window:g} s window ...",
        flush=True,
    )
    poll = run_child(
        __file__,
        ["--child", "polling", "--count", str(POLLERS), "--window", str(poll_window)],
        timeout=poll_window + 60,
    )
    clabel = f"1 idle cluster-mode goworker-py instance, {CLUSTER_SHARDS} shards"
    report.add(f"idle CPU, {clabel}", cluster["cpu_percent"], "% of a core", CPU_TARGET_PERCENT)
    report.add(f"context switches, {clabel}", cluster["context_switches_per_s"], "/s")
    report.add(f"threads, {clabel}", cluster["threads"], "threads")
    plabel = f"{POLLERS} threads polling every {POLL_INTERVAL * 1e3:g} ms (anti-pattern)"
    report.add(f"CPU, {plabel}", poll["cpu_percent"], "% of a core")
    report.add(f"context switches, {plabel}", poll["context_switches_per_s"], "/s")
    report.details = {"goworker": gw, "apscheduler": aps, "cluster": cluster, "polling": poll}
    report.emit()


if __name__ == "__main__":
    main()
