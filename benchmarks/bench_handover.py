"""bench_handover: clean hand-over of a shard — the old owner stops, a standby takes over.

In-process (precise timing): two cluster workers share one shard on a daily schedule (it never
fires), each with its own kazoo session. A trial ``cancel()``\\ s the owner and times how long
until the standby holds the shard's claim **and** its shard thread is waiting for the next
fire time (an instrumented clock records the thread's first ``wait``). The stopped worker is
replaced by a fresh standby and the next trial stops the other one, so the two roles
alternate. Each trial is broken down (from ``cancel()``): old claim released, old instance
unregistered, new claim created, shard thread waiting.

Subprocess variant: two worker processes (``_cluster.py worker``); ``SIGTERM`` to the owner
→ an observer client's data watch sees the claim node owned by the standby (includes the
signal's delivery and the observer's watch notification).

Every backend side by side (issue #11): the same on a private etcd and a private Redis
(``--backend-trials``, default 20 in-process and 5 across processes; ``--quick`` 5 and 2), where
the observer is a client of the seam (``_observers.SeamObserver``: it reads the claims on every
change the backend reports, at least every 10 ms). Figures carry the backend: ``hand-over ...,
p99 [etcd]``.

Target (issue #3, printed, not asserted): hand-over p99 ≤ 100 ms. About 5 s for ZooKeeper plus
about 5 s per other backend (``--quick`` about 3 s + 2 s each).

Run: ``.venv/bin/python benchmarks/bench_handover.py [--quick] [--trials N]
[--backends zookeeper etcd redis] [--backend-trials N]``
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from _cluster import (
    EventLog,
    ProcessPool,
    WaitClock,
    WorkerPool,
    cluster_worker,
    service_name,
    settled,
    shard_thread_name,
)
from _common import Report, fmt_stats, parse_args, quiet_logging, remove_file, stats
from _observers import observer
from _targets import BACKENDS, Target, each_server, figure_name

TARGET_MS = 100.0
SESSION_TIMEOUT = 4.0


def _instrument(obj: Any, method: str, sink: list[float], when: Callable[[Any], bool]) -> None:
    """Wrap ``obj.method`` so that it appends ``perf_counter()`` to ``sink`` after a call."""
    original = getattr(obj, method, None)
    if original is None:
        return

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(result):
            sink.append(time.perf_counter())
        return result

    setattr(obj, method, wrapped)


def in_process(zk: Target, trials: int) -> dict[str, Any]:
    clock = WaitClock()
    service = service_name("handover")
    latencies: list[float] = []
    phases: dict[str, list[float]] = {
        "released": [],
        "unregistered": [],
        "claimed": [],
        "waiting": [],
    }
    failures = 0
    count = 0

    def fresh(pool: WorkerPool) -> Any:
        nonlocal count
        count += 1
        worker = cluster_worker(
            zk.discovery,
            service,
            1,
            clock=clock,
            name=f"h{count}",
            session_timeout=SESSION_TIMEOUT,
        )
        return pool.start(worker)

    with WorkerPool() as pool:
        pair = [fresh(pool), fresh(pool)]
        if settled(pair, 1, 10)[0] is None:
            raise RuntimeError("the first two workers never settled")
        for _ in range(trials):
            owner, standby = (pair[0], pair[1]) if 0 in pair[0].host.claims else (pair[1], pair[0])
            released: list[float] = []
            unregistered: list[float] = []
            claimed: list[float] = []
            _instrument(owner.host.backend, "release", released, lambda r: True)
            _instrument(owner.host.backend, "unregister", unregistered, lambda r: True)
            _instrument(standby.host.backend, "claim", claimed, lambda r: r is not None)
            armed, stamp = clock.expect(shard_thread_name(standby.name, 0))
            start = time.perf_counter()
            owner.cancel()
            if not armed.wait(10):
                failures += 1
                clock.disarm(shard_thread_name(standby.name, 0))
            else:
                latencies.append(stamp[0] - start)
                for name, sink in (
                    ("released", released),
                    ("unregistered", unregistered),
                    ("claimed", claimed),
                ):
                    if sink:
                        phases[name].append(sink[0] - start)
                phases["waiting"].append(stamp[0] - start)
            pool.stop(owner, 15)
            replacement = fresh(pool)
            pair = [standby, replacement]
            if settled(pair, 1, 10)[0] is None:
                raise RuntimeError("the new pair never settled")
    return {
        "latencies": latencies,
        "phases": {k: stats(v, 1e3) for k, v in phases.items()},
        "failures": failures,
    }


def subprocess_variant(zk: Target, trials: int) -> dict[str, Any]:
    service = service_name("handover-proc")
    latencies: list[float] = []
    exits: list[float] = []
    failures = 0
    with ProcessPool() as procs, observer(zk, service) as watcher:
        log = EventLog(procs.path("events.jsonl"))

        def spawn() -> dict[str, Any]:
            proc = procs.spawn_worker(
                zk.discovery, service, 1, log.path, session_timeout=SESSION_TIMEOUT
            )
            ready = log.wait_for(lambda e: e["event"] == "ready" and e["pid"] == proc.pid, 30)
            if ready is None:
                raise RuntimeError("worker process not ready:\n" + procs.stderr_tail())
            ready["proc"] = proc
            return ready

        members = [spawn(), spawn()]
        for _ in range(trials):
            deadline = time.monotonic() + 10
            owner_id = ""
            while time.monotonic() < deadline:
                owner_id = watcher.claim_owners().get(0, "")
                if owner_id in {m["instance"] for m in members}:
                    break
                time.sleep(0.01)
            owner = next(m for m in members if m["instance"] == owner_id)
            standby = next(m for m in members if m is not owner)
            watch = watcher.watch_owner(0, lambda o, s=standby["instance"]: o == s)
            start = time.time()
            os.kill(owner["pid"], signal.SIGTERM)
            if watch.event.wait(15) and watch.at is not None:
                latencies.append(watch.at - start)
            else:
                failures += 1
            watch.cancel()
            owner["proc"].wait(30)
            exits.append(time.time() - start)
            members = [standby, spawn()]
    return {"latencies": latencies, "process_exit": stats(exits, 1e3), "failures": failures}


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=None, help="in-process trials")
    parser.add_argument("--proc-trials", type=int, default=None, help="subprocess trials")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--backend-trials", type=int, default=None, help="in-process trials on etcd and Redis"
    )


def measure(report: Report, server: Target, trials: int, proc_trials: int) -> dict[str, Any]:
    """Both variants on one backend; its figures."""

    def name(figure: str) -> str:
        return figure_name(server.name, figure)

    def add_latencies(label: str, ms: dict[str, float]) -> None:
        """``label``'s p50, p99 (against the target) and max."""
        report.add(name(f"{label}, p50"), ms.get("p50"), "ms")
        report.add(name(f"{label}, p99"), ms.get("p99"), "ms", TARGET_MS)
        report.add(name(f"{label}, max"), ms.get("max"), "ms")

    print(
        f"{server.label}, in-process: 2 workers x 1 shard, {trials} clean hand-overs "
        f"(session {SESSION_TIMEOUT:g} s) ...",
        flush=True,
    )
    result = in_process(server, trials)
    s = stats(result["latencies"], 1e3)
    print(f"    cancel() -> standby's shard thread waiting: {fmt_stats(s, 'ms')}")
    for phase_name, phase in result["phases"].items():
        print(f"    phase '{phase_name}' (from cancel()): {fmt_stats(phase, 'ms')}")
    add_latencies("hand-over, cancel() -> new owner claimed + shard thread waiting", s)
    report.add(name("hand-over trials that never completed (in-process)"), result["failures"], "")
    details: dict[str, Any] = {"in_process": {"ms": s, **result}}
    if proc_trials:
        print(
            f"{server.label}, subprocess: SIGTERM to the owner process -> observer sees the "
            f"standby's claim, {proc_trials} trials ...",
            flush=True,
        )
        sub = subprocess_variant(server, proc_trials)
        ps = stats(sub["latencies"], 1e3)
        print(f"    {fmt_stats(ps, 'ms')}; owner exit {fmt_stats(sub['process_exit'], 'ms')}")
        add_latencies("hand-over (processes), SIGTERM -> observer sees standby's claim", ps)
        details["subprocess"] = {"ms": ps, **sub}
    return details


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    trials = args.trials or (8 if args.quick else 40)
    proc_trials = args.proc_trials if args.proc_trials is not None else (3 if args.quick else 10)
    backend_trials = args.backend_trials or (5 if args.quick else 20)
    backend_proc_trials = min(proc_trials, 2 if args.quick else 5)
    report = Report("bench_handover", "issue#3", args.quick)
    log_path = quiet_logging("INFO")

    def measure_on(server: Target) -> None:
        if server.name == "zookeeper":
            report.details.update(measure(report, server, trials, proc_trials))
        else:
            report.details[server.name] = measure(
                report, server, backend_trials, backend_proc_trials
            )

    try:
        each_server(report, args.backends, measure_on)
    finally:
        remove_file(log_path)
    report.emit()


if __name__ == "__main__":
    main()
