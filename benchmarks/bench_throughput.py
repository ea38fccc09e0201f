"""B4 bench_throughput: the most no-op runs per second, driven by the manual trigger API.

A closed loop on the main thread: trigger one run on each of N handlers, wait until all N ran,
repeat for a fixed time; runs/s = runs / elapsed. No-op handlers, so the figure is the cost of
the machinery that starts a run on its thread and reports it back. Side by side, same loop:

- **goworker-py, local**: N workers (one shard each, ``@every 1h`` so only triggers run),
  ``Worker.trigger()`` — a wake-up of the shard thread, a full run (context, before/do/after
  under the retry policy, logging at INFO to a file) and the hand-back;
- **goworker-py, cluster**: one cluster-mode worker owning N shards on a private ZooKeeper;
  ``trigger()`` runs every shard, each run writing its 2 ZooKeeper requests (begin transaction,
  end) — the ZooKeeper round trip bounds it;
- **APScheduler 3** ``BackgroundScheduler`` holding N jobs, a pool of N threads,
  ``job.modify(next_run_time=now)`` as its "run now";
- **floor**: N bare threads, each woken by its own ``Event`` (the thread hand-off a
  thread-per-shard design cannot beat); and a direct call of the no-op handler.

N ∈ {1, 4, 16}. About 45 s (``--quick`` about 10 s).

Run: ``.venv/bin/python benchmarks/bench_throughput.py [--quick]``
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from _cluster import cluster_worker, service_name, zookeeper
from _common import Report, calibrate, parse_args, quiet_logging, remove_file

COUNTS = (1, 4, 16)
HOURLY = "@every 1h"


def closed_loop(
    trigger_all: Callable[[], None], done: threading.Semaphore, n: int, seconds: float
) -> float:
    """Runs per second: trigger all ``n``, wait for ``n`` completions, for ``seconds``."""
    for _ in range(3):  # warm-up rounds
        trigger_all()
        for _ in range(n):
            if not done.acquire(timeout=10):
                raise RuntimeError("a triggered run never happened")
    runs, began = 0, time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        trigger_all()
        for _ in range(n):
            if not done.acquire(timeout=10):
                raise RuntimeError("a triggered run never happened")
        runs += n
    return runs / (time.perf_counter() - began)


def signalling_handler(done: threading.Semaphore) -> Any:
    from goworker_py import Handler

    class Signals(Handler):
        def do(self, ctx: Any) -> None:
            done.release()

    return Signals


@contextlib.contextmanager
def local_workers(n: int, done: threading.Semaphore) -> Iterator[list[Any]]:
    from goworker_py import Worker, WorkerConfig

    handler = signalling_handler(done)
    workers = [
        Worker(handler, WorkerConfig(timezone="UTC"), HOURLY, handle_signals=False, name=f"t{i}")
        for i in range(n)
    ]
    for worker in workers:
        worker.run()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.cancel()
        for worker in workers:
            worker.wait(30)


def goworker_local(n: int, seconds: float) -> float:
    done = threading.Semaphore(0)
    with local_workers(n, done) as workers:

        def trigger_all() -> None:
            for worker in workers:
                worker.trigger()

        return closed_loop(trigger_all, done, n, seconds)


def goworker_cluster(hosts: str, n: int, seconds: float) -> float:
    done = threading.Semaphore(0)
    worker = cluster_worker(
        hosts, service_name("tp"), n, handler=signalling_handler(done), cron=HOURLY
    )
    worker.run()
    try:
        deadline = time.monotonic() + 30
        while len(worker.shards) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker holds {worker.shards} of {n} shards")
            time.sleep(0.01)
        return closed_loop(worker.trigger, done, n, seconds)
    finally:
        worker.cancel()
        worker.wait(30)


def apscheduler(n: int, seconds: float) -> float:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.background import BackgroundScheduler

    done = threading.Semaphore(0)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=n)}, timezone="UTC"
    )
    jobs = [
        # max_instances > 1: the executor counts a run as running until after its function has
        # returned (after done.release()); with 1, the next "run now" would be dropped.
        scheduler.add_job(
            done.release, "interval", hours=1, id=f"job{i}", misfire_grace_time=60, max_instances=3
        )
        for i in range(n)
    ]
    scheduler.start()
    try:

        def trigger_all() -> None:
            now = datetime.now(timezone.utc)
            for job in jobs:
                job.modify(next_run_time=now)

        return closed_loop(trigger_all, done, n, seconds)
    finally:
        scheduler.shutdown(wait=True)


def bare_threads(n: int, seconds: float) -> float:
    done = threading.Semaphore(0)
    stop = False
    events = [threading.Event() for _ in range(n)]

    def loop(event: threading.Event) -> None:
        while True:
            event.wait()
            event.clear()
            if stop:
                return
            done.release()

    threads = [threading.Thread(target=loop, args=(e,), daemon=True) for e in events]
    for thread in threads:
        thread.start()
    try:

        def trigger_all() -> None:
            for event in events:
                event.set()

        return closed_loop(trigger_all, done, n, seconds)
    finally:
        stop = True
        for event in events:
            event.set()
        for thread in threads:
            thread.join(5)


def direct_call(seconds: float) -> float:
    from goworker_py import Handler

    class Noop(Handler):
        def do(self, ctx: Any) -> None:
            pass

    handler, calls, began = Noop(), 0, time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            handler.do(None)
        calls += 1000
    return calls / (time.perf_counter() - began)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    seconds = 0.5 if args.quick else 2.5
    report = Report("bench_throughput", "B4", args.quick)
    log_path = quiet_logging()
    try:
        with zookeeper() as zk:
            report.calibration = calibrate(args.quick, zk.hosts)
            results: dict[str, dict[int, float]] = {}
            for name, run in (
                ("goworker-py local", goworker_local),
                ("APScheduler 3 BackgroundScheduler", apscheduler),
                ("bare Event threads (floor)", bare_threads),
                (
                    "goworker-py cluster (2 ZK writes per run)",
                    lambda n, s: goworker_cluster(zk.hosts, n, s),
                ),
            ):
                results[name] = {}
                for n in COUNTS:
                    print(f"{name}, {n} handler(s), {seconds:g} s ...", flush=True)
                    results[name][n] = rate = run(n, seconds)
                    report.add(f"no-op runs/s, {n} handler(s), {name}", round(rate), "runs/s")
            report.add(
                "direct call of the no-op do() (no thread hand-off)",
                round(direct_call(seconds)),
                "calls/s",
            )
            report.details = {"runs_per_second": results, "seconds_per_case": seconds}
    finally:
        remove_file(log_path)
    report.emit()


if __name__ == "__main__":
    main()
