"""B8 bench_idle: idle cron workers — CPU, context switches, RSS, threads, start and stop.

Every configuration runs in a fresh interpreter; CPU is the ``getrusage`` delta of that
process over an idle window / wall time, context switches the voluntary + involuntary ones of
all its threads (``getrusage``) per second. All schedules are daily (minute 0 of the hour
twelve hours from now), so nothing fires during the run.

1. 1,000 local workers: CPU and context switches over a 30 s window — one full ``MAX_SLEEP``
   period, so every shard thread's periodic wall-clock re-check is inside it — then RSS
   (``VmRSS``), thread count, start-up time of the 1,000 workers and the time for all of them
   to stop cleanly (``cancel()`` then ``wait()``).
2. For comparison, the same 1,000 daily jobs in one APScheduler 3 ``BackgroundScheduler``
   (20 s window).
3. Cluster mode: one goworker-py instance with 16 shards against a real ZooKeeper (a private
   server, or ``ZK_HOSTS``), the library's default session timeout (10 s: kazoo pings about
   every 3 s); window 12 s, starting once the instance holds all 16 shards.
4. The anti-pattern baseline: 16 threads each polling every 10 ms
   (``while True: time.sleep(0.01); check``); window 5 s.

About 75 s (``--quick``: windows of 5, 5, 2.5 and 1.5 s, about 20 s).

Target (printed, not asserted): idle CPU ≤ 2 % of one core.

Run: ``.venv/bin/python benchmarks/bench_idle.py [--quick] [--workers N]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import resource
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

CPU_TARGET_PERCENT = 2.0
CLUSTER_SHARDS = 16
#: The polling anti-pattern baseline: threads, and the sleep between two checks.
POLLERS = 16
POLL_INTERVAL = 0.01


def daily_cron() -> tuple[str, int]:
    """A daily schedule firing twelve hours from now (never during the benchmark)."""
    hour = (dt.datetime.now().hour + 12) % 24
    return f"0 {hour} * * *", hour


def task_switches() -> int:
    """Voluntary + involuntary context switches of every live thread (/proc/self/task)."""
    total = 0
    for path in glob.glob("/proc/self/task/*/status"):
        try:
            with open(path, encoding="ascii") as status:
                for line in status:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure_window(seconds: float) -> dict[str, Any]:
    """CPU %, context switches/s and wall time over an idle window of ``seconds``."""
    pause = threading.Event()
    switches0 = task_switches()
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    pause.wait(seconds)
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    switches1 = task_switches()
    wall = wall1 - wall0
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    rusage_switches = (usage1.ru_nvcsw + usage1.ru_nivcsw) - (usage0.ru_nvcsw + usage0.ru_nivcsw)
    return {
        "window_s": round(wall, 3),
        "cpu_s": round(cpu, 6),
        "cpu_percent": round(cpu / wall * 100, 4),
        "context_switches_per_s": round(rusage_switches / wall, 2),
        "task_context_switches_per_s": round((switches1 - switches0) / wall, 2),
    }


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
    time.sleep(1.0)  # let every thread reach its wait
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
    window = args.window or (5.0 if args.quick else 30.0)
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
    aps_window = min(window, 20.0)
    print(f"APScheduler holding {n} daily jobs, {aps_window:g} s idle window ...", flush=True)
    aps = run_child(
        __file__,
        ["--child", "apscheduler", "--workers", str(n), "--window", str(aps_window)],
        timeout=aps_window + 120,
    )
    label = f"{n} idle goworker-py workers"
    report.add(f"idle CPU, {label}", gw["cpu_percent"], "% of a core", CPU_TARGET_PERCENT)
    report.add(f"context switches, {label}", gw["context_switches_per_s"], "/s")
    report.add(f"RSS, {label}", gw["rss_mb_after_idle"], "MiB")
    report.add(f"RSS per worker, {label}", gw["rss_kb_per_worker"], "KiB")
    report.add(f"threads, {label}", gw["threads"], "threads")
    report.add(f"start-up time, {label}", gw["startup_s"], "s")
    report.add(f"clean stop time, {label}", gw["stop_s"], "s")
    alabel = f"APScheduler holding {n} daily jobs"
    report.add(f"idle CPU, {alabel}", aps["cpu_percent"], "% of a core")
    report.add(f"context switches, {alabel}", aps["context_switches_per_s"], "/s")
    report.add(f"RSS, {alabel}", aps["rss_mb_after_idle"], "MiB")
    report.add(f"threads, {alabel}", aps["threads"], "threads")
    report.add(f"start-up time, {alabel}", aps["startup_s"], "s")
    report.add(f"clean stop time, {alabel}", aps["stop_s"], "s")

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
