"""B10 bench_shutdown: SIGTERM → process exit, and SIGTERM → a peer taking the shards over.

Worker processes (``_cluster.py worker``, which installs goworker-py's SIGTERM handling):

- **exit, idle**: one instance owning 16 shards on a daily schedule; ``SIGTERM`` → the process
  has exited (``waitpid``). Also the part inside the worker: ``SIGTERM`` → ``wait()`` returned.
- **exit, 16 in-flight runs**: the same on an every-second schedule whose handler waits 30 s
  cooperatively (``ctx.wait``); ``SIGTERM`` once all 16 runs are in flight. Each run must see
  the cancellation and return (counted).
- **peer takeover**: two instances share 16 shards; ``SIGTERM`` to one → an observer's data
  watches see every one of its shards claimed by the survivor (idle, and with the leaver's
  runs in flight).

Targets (printed, not asserted): exit ≤ 1 s; takeover ≤ 100 ms (issue #3's hand-over target,
with 8 shards instead of one). About 15 s (``--quick`` about 8 s).

Run: ``.venv/bin/python benchmarks/bench_shutdown.py [--quick] [--reps N]``
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

from _cluster import (
    DAILY,
    EVERY_SECOND,
    EventLog,
    Observer,
    ProcessPool,
    ZkTarget,
    service_name,
    zookeeper,
)
from _common import Report, calibrate, fmt_stats, parse_args, stats

SHARDS = 16
SESSION_TIMEOUT = 4.0
EXIT_TARGET_S = 1.0
TAKEOVER_TARGET_MS = 100.0
RUN_SECONDS = 30.0


def spawn_ready(
    zk: ZkTarget, procs: ProcessPool, log: EventLog, service: str, cron: str
) -> dict[str, Any]:
    proc = procs.spawn_worker(
        zk.hosts,
        service,
        SHARDS,
        log.path,
        session_timeout=SESSION_TIMEOUT,
        cron=cron,
        sleep=RUN_SECONDS if cron == EVERY_SECOND else 0.0,
        shutdown_timeout=10.0,
    )
    ready = log.wait_for(lambda e: e["event"] == "ready" and e["pid"] == proc.pid, 30)
    if ready is None:
        raise RuntimeError("worker process not ready:\n" + procs.stderr_tail())
    ready["proc"] = proc
    return ready


def wait_owned(observer: Observer, owners: dict[str, int], timeout: float = 30) -> None:
    """Until the claims are spread as ``{instance id: shard count}`` says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claims = observer.claim_owners()
        counts = {i: sum(1 for o in claims.values() if o == i) for i in owners}
        if len(claims) == SHARDS and all(abs(counts[i] - n) <= 1 for i, n in owners.items()):
            return
        time.sleep(0.02)
    raise RuntimeError(f"claims never settled as {owners}")


def exit_trial(zk: ZkTarget, in_flight: bool) -> dict[str, Any]:
    service = service_name("shutdown")
    cron = EVERY_SECOND if in_flight else DAILY
    with ProcessPool() as procs, Observer(zk.hosts, service) as observer:
        log = EventLog(procs.path("events.jsonl"))
        worker = spawn_ready(zk, procs, log, service, cron)
        wait_owned(observer, {worker["instance"]: SHARDS})
        if in_flight:
            started = log.wait_count(lambda e: e["event"] == "start", SHARDS, 15)
            if len(started) < SHARDS:
                raise RuntimeError(f"only {len(started)} runs started")
            time.sleep(0.1)
        start = time.time()
        os.kill(worker["pid"], signal.SIGTERM)
        worker["proc"].wait(60)
        exited = time.time() - start
        done = log.wait_for(lambda e: e["event"] == "exit", 1.0)
        log.poll()
        cancelled = sum(1 for e in log.events if e["event"] == "end" and e["cancelled"])
        return {
            "exit_s": exited,
            "wait_returned_s": None if done is None else done["t"] - start,
            "reason": None if done is None else done["reason"],
            "runs_cancelled": cancelled,
            "returncode": worker["proc"].returncode,
        }


def takeover_trial(zk: ZkTarget, in_flight: bool) -> dict[str, Any]:
    service = service_name("takeover")
    cron = EVERY_SECOND if in_flight else DAILY
    with ProcessPool() as procs, Observer(zk.hosts, service) as observer:
        log = EventLog(procs.path("events.jsonl"))
        first = spawn_ready(zk, procs, log, service, cron)
        second = spawn_ready(zk, procs, log, service, cron)
        half = SHARDS // 2
        wait_owned(observer, {first["instance"]: half, second["instance"]: half})
        owners = observer.claim_owners()
        leaving = [s for s, o in owners.items() if o == first["instance"]]
        if in_flight:
            runs = log.wait_count(
                lambda e: e["event"] == "start" and e["pid"] == first["pid"], len(leaving), 15
            )
            if len(runs) < len(leaving):
                raise RuntimeError(f"only {len(runs)} runs in flight")
            time.sleep(0.1)
        watches = [observer.watch_owner(s, lambda o, i=second["instance"]: o == i) for s in leaving]
        start = time.time()
        os.kill(first["pid"], signal.SIGTERM)
        for watch in watches:
            watch.event.wait(30)
            watch.cancel()
        seen = [w.at - start for w in watches if w.at is not None]
        first["proc"].wait(30)
        exited = time.time() - start
        return {
            "shards_moved": len(leaving),
            "all_s": max(seen) if len(seen) == len(leaving) else None,
            "first_s": min(seen) if seen else None,
            "leaver_exit_s": exited,
        }


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=None, help="trials per case")


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    reps = args.reps or (2 if args.quick else 5)
    report = Report("bench_shutdown", "B10", args.quick)
    details: dict[str, Any] = {}
    with zookeeper(tick_time=100) as zk:
        print(zk.describe(), flush=True)
        report.calibration = calibrate(quick=True, zk_hosts=zk.hosts)
        for in_flight in (False, True):
            case = f"{SHARDS} in-flight cooperative runs" if in_flight else "idle"
            print(f"SIGTERM -> exit, one instance x {SHARDS} shards, {case}, {reps} x ...")
            rows = [exit_trial(zk, in_flight) for _ in range(reps)]
            details[f"exit_{'busy' if in_flight else 'idle'}"] = rows
            exit_s = stats([r["exit_s"] for r in rows], 1e3)
            inner = stats([r["wait_returned_s"] for r in rows if r["wait_returned_s"]], 1e3)
            print(
                f"    exit {fmt_stats(exit_s, 'ms')}; wait() returned {fmt_stats(inner, 'ms')}",
                flush=True,
            )
            report.add(
                f"SIGTERM -> process exit, {case}, max",
                round(exit_s.get("max", float("nan")) / 1e3, 4),
                "s",
                EXIT_TARGET_S,
                note=f"p50 {exit_s.get('p50')} ms",
            )
            report.add(f"SIGTERM -> worker.wait() returned, {case}, p50", inner.get("p50"), "ms")
            if in_flight:
                report.add(
                    "runs that saw the cancellation and returned (of 16 per trial)",
                    sum(r["runs_cancelled"] for r in rows) / reps,
                    "runs",
                    16,
                    op=">=",
                )
        for in_flight in (False, True):
            case = "leaver's runs in flight" if in_flight else "idle"
            print(f"SIGTERM -> peer takeover, 2 instances x {SHARDS} shards, {case}, {reps} x ...")
            rows = [takeover_trial(zk, in_flight) for _ in range(reps)]
            details[f"takeover_{'busy' if in_flight else 'idle'}"] = rows
            all_s = stats([r["all_s"] for r in rows if r["all_s"] is not None], 1e3)
            first_s = stats([r["first_s"] for r in rows if r["first_s"] is not None], 1e3)
            print(
                f"    all {SHARDS // 2} shards {fmt_stats(all_s, 'ms')}; "
                f"first shard {fmt_stats(first_s, 'ms')}",
                flush=True,
            )
            report.add(
                f"SIGTERM -> survivor holds all {SHARDS // 2} shards, {case}, max",
                all_s.get("max"),
                "ms",
                TAKEOVER_TARGET_MS,
                note=f"p50 {all_s.get('p50')} ms",
            )
            report.add(
                f"SIGTERM -> survivor holds its first shard, {case}, p50",
                first_s.get("p50"),
                "ms",
            )
    report.details = details
    report.emit()


if __name__ == "__main__":
    main()
