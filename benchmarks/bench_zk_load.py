"""B9 bench_zk_load: steady-state ZooKeeper requests per instance, idle and running 16 jobs/s.

Worker processes (``_cluster.py worker``) against the benchmark's own ZooKeeper server:

- **idle**: 4 instances share 16 shards on a daily schedule — two with session timeout
  4 s, two with 10 s (the default). Once settled, requests are counted over a 15 s window:
  the server's ``mntr`` ``zk_packets_received`` delta (all clients), and per instance from the
  ``cons`` per-connection ``recved`` counters. Goal: pings only, i.e. kazoo's ping rate
  ``1 / (T/3 - jitter)`` ≈ 3/T (no polling). A window holds about 4.5 pings of a T = 10 s
  instance (13 of a T = 4 s one): one ping more or less is within the +25 % margin of the
  target, a poll of even one request every 5 s is not.
- **running**: 16 shards on an every-second schedule (no-op handler), i.e. 16 runs/s — held
  by one instance, then by 4 instances; requests per instance per second and per run over a
  5 s window (80 runs) that starts and ends half-way between two fire times, so that every
  run in it is counted whole.

**etcd and Redis** (issue #11, every backend side by side): 4 instances x 16 daily shards,
all with a 10 s lease, idle over the same window; then 4 instances sharing 16 jobs/s. Their
servers count requests for all clients together (``_targets.Target.counter``: etcd's gRPC
messages received, Redis's top-level commands), so per instance is the total over 4; the goal
is the lease's keep-alives only, 3/T (etcd: a keep-alive every T/3, plus a watch re-opened
after 60 s of silence; Redis: the ``TICK`` script every T/3), counted over a whole number of
keep-alive intervals (5, ``--quick`` 2: 16.7 s, 6.7 s). Figures carry the backend:
``idle requests per instance, session T = 10 s [etcd]``.

About 33 s for ZooKeeper plus about 25 s per other backend (``--quick`` about 22 s + 15 s
each).

Run: ``.venv/bin/python benchmarks/bench_zk_load.py [--quick] [--backends zookeeper etcd redis]``
"""

from __future__ import annotations

import argparse
import math
import re
import time
from typing import Any

from _cluster import (
    DAILY,
    EVERY_SECOND,
    EventLog,
    PacketCounter,
    ProcessPool,
    ZkTarget,
    expected_ping_rate,
    service_name,
)
from _common import Report, parse_args
from _observers import observer
from _targets import BACKENDS, Target, each_server, figure_name

SHARDS = 16
#: The lease of the etcd and Redis instances.
BACKEND_SESSION = 10.0
_CONS = re.compile(r"recved=(\d+).*?sid=0x([0-9a-f]+)")


def per_session_received(zk: ZkTarget) -> dict[int, int]:
    """``{session id: requests received}`` from the server's ``cons`` (one line a connection)."""
    from goworker_py.testing import four_letter_word
    from goworker_py.testing.network import split_hosts

    addresses, _ = split_hosts(zk.hosts)
    text = four_letter_word(addresses[0], "cons")
    return {int(sid, 16): int(recved) for recved, sid in _CONS.findall(text)}


def start_cluster(
    zk: ZkTarget, procs: ProcessPool, log: EventLog, sessions: list[float], cron: str
) -> tuple[str, list[dict[str, Any]]]:
    """Start one worker process per session timeout; wait until every shard is claimed."""
    service = service_name("zkload")
    pids = [
        procs.spawn_worker(
            zk.discovery, service, SHARDS, log.path, session_timeout=s, cron=cron
        ).pid
        for s in sessions
    ]
    ready = log.wait_count(lambda e: e["event"] == "ready" and e["pid"] in pids, len(pids), 60)
    if len(ready) < len(pids):
        raise RuntimeError("worker processes not ready:\n" + procs.stderr_tail())
    ordered = sorted(ready, key=lambda e: pids.index(e["pid"]))
    for event, session in zip(ordered, sessions, strict=True):
        event["session_timeout"] = session
    ids = {e["instance"] for e in ready}
    with observer(zk, service) as watcher:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owners = watcher.claim_owners()
            loads = [sum(1 for o in owners.values() if o == i) for i in ids]
            if (
                len(owners) == SHARDS
                and set(owners.values()) <= ids
                and max(loads) - min(loads) <= 1
            ):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the cluster never settled")
    time.sleep(1.0)  # let the last publishes and watch re-arms pass
    return service, ready


def window(
    zk: ZkTarget, log: EventLog, ready: list[dict[str, Any]], seconds: float, align: bool = False
) -> dict[str, Any]:
    """Requests over ``seconds``: total (mntr), per instance (cons) and runs started (events).

    ``align``: start half-way between two whole seconds (and last whole seconds), so that no
    every-second run straddles the window's edges (its two writes counted, its start not).
    """
    counter = PacketCounter(zk)
    if align:
        now = time.time()
        time.sleep((math.floor(now) + 0.5 - now) % 1.0)
    cons0 = per_session_received(zk)
    total0, t0, wall0 = counter.read(), time.perf_counter(), time.time()
    time.sleep(seconds)
    total1, t1, wall1 = counter.read(), time.perf_counter(), time.time()
    cons1 = per_session_received(zk)
    elapsed = t1 - t0
    log.poll()
    runs = sum(1 for e in log.events if e["event"] == "start" and wall0 <= e["start"] < wall1)
    instances = []
    for event in ready:
        sid = event["session"]
        delta = cons1.get(sid, 0) - cons0.get(sid, 0)
        instances.append(
            {
                "pid": event["pid"],
                "session_timeout_s": event["session_timeout"],
                "requests": delta,
                "per_s": round(delta / elapsed, 3),
                "expected_pings_per_s": round(expected_ping_rate(event["session_timeout"]), 3),
            }
        )
    return {
        "seconds": round(elapsed, 2),
        "total_requests": total1 - total0,
        "total_per_s": round((total1 - total0) / elapsed, 3),
        "runs": runs,
        "runs_per_s": round(runs / elapsed, 2),
        "instances": instances,
    }


def total_window(
    server: Target, log: EventLog, seconds: float, align: bool = False
) -> dict[str, Any]:
    """Requests (and writes) the server received from every client over ``seconds``, and the
    runs started meanwhile (``align``: as in :func:`window`)."""
    counter = server.counter()
    if align:
        now = time.time()
        time.sleep((math.floor(now) + 0.5 - now) % 1.0)
    c0, t0, wall0 = counter.snapshot(), time.perf_counter(), time.time()
    time.sleep(seconds)
    c1, t1, wall1 = counter.snapshot(), time.perf_counter(), time.time()
    elapsed = t1 - t0
    log.poll()
    runs = sum(1 for e in log.events if e["event"] == "start" and wall0 <= e["start"] < wall1)
    return {
        "seconds": round(elapsed, 2),
        "totals": {k: c1[k] - c0[k] for k in c1},
        "total_per_s": round((c1["requests"] - c0["requests"]) / elapsed, 3),
        "runs": runs,
        "runs_per_s": round(runs / elapsed, 2),
    }


def measure_backend(
    report: Report, server: Target, intervals: int, busy_s: float
) -> dict[str, Any]:
    """Idle, then 16 jobs/s, on 4 instances of etcd or Redis (see the module docstring)."""
    details: dict[str, Any] = {}
    sessions = [BACKEND_SESSION] * 4
    print(f"{server.label}, idle: 4 instances (T = 10 s) x {SHARDS} daily shards ...", flush=True)
    with ProcessPool() as procs:
        log = EventLog(procs.path("events.jsonl"))
        start_cluster(server, procs, log, sessions, DAILY)
        # A whole number of keep-alive intervals: each instance's keep-alives count whole.
        idle = total_window(server, log, intervals * BACKEND_SESSION / 3.0)
    details["idle"] = idle
    keepalives = 3.0 / BACKEND_SESSION
    report.add(
        figure_name(server.name, "idle requests per instance, session T = 10 s"),
        round(idle["total_per_s"] / len(sessions), 3),
        "req/s",
        round(keepalives * 1.25, 3),
        note=f"keep-alives only: 3/T = {keepalives:.2f}/s, +25 %; {idle['totals']} in "
        f"{idle['seconds']} s for 4 instances",
    )
    print(f"{server.label}, running: 4 instances x {SHARDS} shards every second ...", flush=True)
    with ProcessPool() as procs:
        log = EventLog(procs.path("events.jsonl"))
        start_cluster(server, procs, log, sessions, EVERY_SECOND)
        busy = total_window(server, log, busy_s, align=True)
    details["running_4"] = busy
    runs = max(busy["runs"], 1)
    report.add(
        figure_name(server.name, "requests per run, 4 instances sharing 16 jobs/s"),
        round(busy["totals"]["requests"] / runs, 3),
        "req/run",
        note=f"{busy['runs_per_s']} runs/s measured; keep-alives included",
    )
    report.add(
        figure_name(server.name, "writes per run, 4 instances sharing 16 jobs/s"),
        round(busy["totals"]["writes"] / runs, 3),
        "writes/run",
        note="etcd: Raft proposals; Redis: Lua scripts (the keep-alive TICKs included)",
    )
    return details


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))


def measure_zookeeper(
    report: Report, details: dict[str, Any], zk: Target, idle_s: float, busy_s: float
) -> None:
    """B9 on ZooKeeper: per-session counts from ``cons`` (see the module docstring)."""
    print(f"idle: 4 instances (T = 4, 4, 10, 10 s) x {SHARDS} daily shards ...", flush=True)
    with ProcessPool() as procs:
        log = EventLog(procs.path("events.jsonl"))
        _, ready = start_cluster(zk, procs, log, [4.0, 4.0, 10.0, 10.0], DAILY)
        idle = window(zk, log, ready, idle_s)
    details["idle"] = idle
    for timeout in (4.0, 10.0):
        rows = [i for i in idle["instances"] if i["session_timeout_s"] == timeout]
        rate = sum(i["per_s"] for i in rows) / max(len(rows), 1)
        expected = expected_ping_rate(timeout)
        report.add(
            f"idle ZK requests per instance, session T = {timeout:g} s",
            round(rate, 3),
            "req/s",
            round(expected * 1.25, 3),
            note=f"pings only: kazoo {expected:.2f}/s (3/T = {3 / timeout:.2f}/s), +25 %",
        )
    pings = sum(i["expected_pings_per_s"] for i in idle["instances"])
    report.add(
        "idle ZK requests, all 4 instances (mntr)",
        idle["total_per_s"],
        "req/s",
        note=f"sum of kazoo ping rates {pings:.2f}/s",
    )

    for count in (1, 4):
        label = "1 instance" if count == 1 else f"{count} instances"
        print(f"running: {label} x {SHARDS} shards every second ...", flush=True)
        with ProcessPool() as procs:
            log = EventLog(procs.path("events.jsonl"))
            # Runs are going by now (start_cluster waits 1 s after settling).
            _, ready = start_cluster(zk, procs, log, [4.0] * count, EVERY_SECOND)
            busy = window(zk, log, ready, busy_s, align=True)
        details[f"running_{count}"] = busy
        per_instance = sum(i["per_s"] for i in busy["instances"]) / count
        per_run = sum(i["requests"] for i in busy["instances"]) / max(busy["runs"], 1)
        report.add(
            f"ZK requests per instance, {label} sharing 16 jobs/s",
            round(per_instance, 2),
            "req/s",
            note=f"{busy['runs_per_s']} runs/s measured",
        )
        report.add(
            f"ZK requests per run, {label} sharing 16 jobs/s",
            round(per_run, 3),
            "req/run",
            note="a run's marker write (multi) + clear",
        )


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    idle_s = 6.0 if args.quick else 15.0
    busy_s = 4.0 if args.quick else 5.0
    report = Report("bench_zk_load", "B9", args.quick)
    details: dict[str, Any] = {}

    def measure_on(server: Target) -> None:
        if server.name == "zookeeper":
            measure_zookeeper(report, details, server, idle_s, busy_s)
        else:
            intervals = 2 if args.quick else 5
            details[server.name] = measure_backend(report, server, intervals, busy_s)

    each_server(report, args.backends, measure_on)
    report.details = details
    report.emit()


if __name__ == "__main__":
    main()
