"""Shared helpers of the cluster benchmarks (B5-B7, B9, B10, hand-over, re-balance).

- the server a benchmark measures against is a :class:`~_targets.Target` (``_targets.py``:
  ZooKeeper, etcd or Redis, with a request counter; :func:`zookeeper` and
  :class:`PacketCounter` are re-exported here for the ZooKeeper-only benchmarks); the observer
  clients are in ``_observers.py`` (:class:`Observer` re-exported);
- in-process cluster workers: :func:`cluster_worker` (given ZooKeeper's hosts or a discovery
  URL), :class:`WorkerPool` (every worker is cancelled and waited for on exit, even on failure),
  :class:`WaitClock` (records the instant a shard thread starts waiting for its next fire time),
  :func:`cluster_state` and :func:`settled` (has a re-balance converged?);
- worker *processes*: ``python benchmarks/_cluster.py worker ...`` runs one cluster worker
  (``--discovery``: ZooKeeper's hosts or a discovery URL) whose handler appends JSON lines
  (``ready``, ``start``, ``end``, ``exit``; ``publish`` and ``armed`` on request) to an events
  file, optionally starting only once a file exists; :class:`ProcessPool` starts them (killed
  with the parent: ``PR_SET_PDEATHSIG``) and kills whatever is left on exit; :class:`EventLog`
  reads the events file.

Timestamps that cross processes are ``time.time()`` (one machine, one clock); in-process ones
are ``time.perf_counter()``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _observers import ClaimWatch as ClaimWatch
from _observers import Observer as Observer
from _observers import SeamObserver as SeamObserver
from _observers import observer as observer
from _targets import PacketCounter as PacketCounter
from _targets import Target as Target
from _targets import ZkTarget as ZkTarget
from _targets import discovery_config
from _targets import zookeeper as zookeeper

HERE = os.path.dirname(os.path.abspath(__file__))
#: A daily schedule that never fires during a benchmark (03:00 is avoided by the runs below).
DAILY = "0 3 * * *"
EVERY_SECOND = "* * * * * *"


def service_name(prefix: str) -> str:
    """A fresh service name: runs never see each other's nodes (also on a shared server)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def expected_ping_rate(session_timeout: float) -> float:
    """kazoo's pings per second on an otherwise silent connection (kazoo 2.x).

    kazoo sends a ping when nothing was sent for ``read_timeout / 2 - jitter``, where
    ``read_timeout`` is 2/3 of the negotiated session timeout and the jitter is uniform in
    10-400 ms (redrawn on each wake-up; about 0.2 s on average).
    """
    return 1.0 / max(session_timeout / 3.0 - 0.205, 0.01)


# -- in-process cluster workers -----------------------------------------------------------------


class WaitClock:
    """The system clock, recording when a named shard thread starts waiting for a fire time.

    :meth:`expect` arms a thread name (``goworker:<worker>:shard-<n>``); the next ``wait`` on
    that thread records ``time.perf_counter()`` and sets the returned event. Unarmed waits
    cost one dict lookup.
    """

    def __init__(self) -> None:
        self._armed: dict[str, tuple[threading.Event, list[float]]] = {}
        self._lock = threading.Lock()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if self._armed:
            name = threading.current_thread().name
            entry = self._armed.get(name)
            if entry is not None:
                entry[1].append(time.perf_counter())
                with self._lock:
                    self._armed.pop(name, None)
                entry[0].set()
        return event.wait(timeout)

    def expect(self, thread_name: str) -> tuple[threading.Event, list[float]]:
        """Arm ``thread_name``; returns (set on its next wait, [perf_counter of that wait])."""
        entry: tuple[threading.Event, list[float]] = (threading.Event(), [])
        with self._lock:
            self._armed[thread_name] = entry
        return entry

    def disarm(self, thread_name: str) -> None:
        with self._lock:
            self._armed.pop(thread_name, None)


def shard_thread_name(worker_name: str, shard: int) -> str:
    """The name goworker-py gives a shard thread."""
    return f"goworker:{worker_name}:shard-{shard}"


def cluster_worker(
    discovery: str,
    service: str,
    total: int,
    *,
    handler: Any = None,
    cron: str | None = DAILY,
    session_timeout: float = 4.0,
    shutdown_timeout: float = 5.0,
    name: str | None = None,
    clock: Any = None,
    handle_signals: bool = False,
) -> Any:
    """A cluster-mode ``Worker`` (not started); ``discovery``: ZooKeeper's hosts or a URL."""
    from goworker_py import Worker, WorkerConfig
    from goworker_py.worker import Model

    config = WorkerConfig(
        discovery=discovery_config(discovery, session_timeout, connect_timeout=5.0),
        shutdown_timeout=shutdown_timeout,
    )
    return Worker(
        handler or noop_handler(),
        config=config,
        cron=cron,
        model=Model.CLUSTER,
        service_name=service,
        sharding_total_count=total,
        handle_signals=handle_signals,
        name=name,
        clock=clock,
    )


@functools.cache
def noop_handler() -> type:
    """A handler class whose ``do`` does nothing."""
    from goworker_py import Handler

    class Noop(Handler):
        def do(self, ctx: Any) -> None:
            pass

    return Noop


class WorkerPool:
    """In-process workers of one benchmark; every one is cancelled and waited for on exit."""

    def __init__(self) -> None:
        self.workers: list[Any] = []

    def start(self, worker: Any) -> Any:
        self.workers.append(worker)
        worker.run()
        return worker

    def stop(self, worker: Any, timeout: float = 30.0) -> None:
        worker.cancel()
        with contextlib.suppress(Exception):
            worker.wait(timeout)
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)

    def close(self, timeout: float = 60.0) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.cancel()
        deadline = time.monotonic() + timeout
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.wait(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_shard_host(pool: WorkerPool, discovery: str, handler: Any, name: str) -> Any:
    """The host of a one-shard cluster worker started in ``pool`` (on a daily schedule: it runs
    nothing of its own), once it holds the shard and the shard's runner is alive — for a
    benchmark that drives ``host.runners[0]`` itself."""
    worker = pool.start(
        cluster_worker(
            discovery,
            service_name("overhead"),
            1,
            handler=handler,
            cron=DAILY,
            session_timeout=10.0,
            name=name,
        )
    )
    host = worker.host
    deadline = time.monotonic() + 10
    while not (0 in host.claims and 0 in host.runners and host.runners[0].alive):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker {name} never claimed its shard")
        time.sleep(0.01)
    return host


def member_sequence(worker: Any) -> int:
    """The rank of a running cluster worker's member entry (-1 before it registered): the
    order the backend ranks members in (ZooKeeper: the instance node's sequence number)."""
    member = getattr(worker.host, "_member", None)
    return -1 if member is None else int(member.rank)


@dataclass
class ClusterState:
    """A snapshot of what in-process workers own, and whether it is settled."""

    owners: dict[int, str] = field(default_factory=dict)  # shard -> instance id
    duplicates: int = 0
    loads: dict[str, int] = field(default_factory=dict)
    ok: bool = False
    why: str = ""


def cluster_state(workers: Sequence[Any], total: int) -> ClusterState:
    """Who owns which shard among ``workers``; ``ok`` when the re-balance has converged.

    Converged: every shard claimed by exactly one worker; each worker holds the claims it
    computes, with a live, non-stopping shard thread for each and nothing left to release;
    every worker sees the same members (all of ``workers``); loads differ by at most one; and
    the assignment is a fixed point of ``StickyStrategy`` (a fresh computation keeps it).
    """
    from goworker_py.cluster.sharding import StickyStrategy

    state = ClusterState()
    try:
        ranked = sorted(workers, key=member_sequence)
        ids = [w.host.instance.id for w in ranked]
        expected = set(ids)
        for worker in ranked:
            host = worker.host
            claims = list(host.claims)
            releasing = getattr(host, "_releasing", {})
            iid = host.instance.id
            state.loads[iid] = len(claims)
            for shard in claims:
                if shard in state.owners:
                    state.duplicates += 1
                state.owners[shard] = iid
            if releasing:
                state.why = f"{worker.name} still releasing {len(releasing)}"
            for shard in claims:
                runner = host.runners.get(shard)
                if runner is None or not runner.alive or runner.stopping:
                    state.why = state.why or f"{worker.name} shard {shard} has no live thread"
                    break
            seen = {m.id for m in host.members()}
            if seen != expected:
                state.why = state.why or f"{worker.name} sees {len(seen)} members"
    except RuntimeError as exc:  # a dict changed size under us: not settled
        state.why = f"changing: {exc}"
        return state
    if state.why:
        return state
    if state.duplicates:
        state.why = f"{state.duplicates} shard(s) claimed twice"
        return state
    if len(state.owners) != total:
        state.why = f"{total - len(state.owners)} shard(s) unclaimed"
        return state
    if max(state.loads.values()) - min(state.loads.values()) > 1:
        state.why = f"uneven loads {min(state.loads.values())}..{max(state.loads.values())}"
        return state
    fresh = StickyStrategy().assign(ids, total, state.owners)
    now = {iid: sorted(s for s, o in state.owners.items() if o == iid) for iid in ids}
    if fresh != now:
        state.why = "not a fixed point of the sticky strategy"
        return state
    state.ok = True
    return state


def settled(
    workers: Sequence[Any], total: int, timeout: float, poll: float = 0.002
) -> tuple[float | None, ClusterState]:
    """Poll :func:`cluster_state` until converged; (``perf_counter`` when it was, state)."""
    deadline = time.perf_counter() + timeout
    state = ClusterState()
    while True:
        state = cluster_state(workers, total)
        now = time.perf_counter()
        if state.ok:
            return now, state
        if now > deadline:
            return None, state
        time.sleep(poll)


# -- worker processes ---------------------------------------------------------------------------


@functools.cache
def die_with_parent_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL`` where util-linux's setpriv supports it, else nothing.

    A worker process started through it is killed by the kernel when the benchmark (the
    thread that started it: always the main thread here) dies, even by ``SIGKILL``. setpriv
    execs the worker, so the pid stays the worker's. No ``preexec_fn``: unsafe with threads.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "true"], capture_output=True)
    return (setpriv, "--pdeathsig", "KILL") if probe.returncode == 0 else ()


class ProcessPool:
    """Worker processes of one benchmark, in a temp dir; all killed on exit."""

    def __init__(self, prefix: str = "goworker-bench-") -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._count = 0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def spawn_worker(
        self,
        discovery: str,
        service: str,
        total: int,
        events: str,
        *,
        session_timeout: float = 4.0,
        cron: str = DAILY,
        sleep: float = 0.0,
        cooperative: bool = True,
        shutdown_timeout: float = 5.0,
        publish_events: bool = False,
        start_when: str = "",
        failover_sleep: float | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``_cluster.py worker`` (a cluster worker that handles SIGTERM itself) on
        ``discovery`` (ZooKeeper's hosts or a discovery URL).

        ``start_when``: a path; the worker imports everything, appends an ``armed`` event,
        then waits for that file to exist before it connects (a start barrier).
        ``failover_sleep``: seconds in ``do`` of a failover run (default: ``sleep``).
        """
        self._count += 1
        log = self.path(f"worker-{self._count}.log")
        args = [
            *die_with_parent_prefix(),
            sys.executable,
            os.path.join(HERE, "_cluster.py"),
            "worker",
            "--discovery",
            discovery,
            "--service",
            service,
            "--total",
            str(total),
            "--events",
            events,
            "--session-timeout",
            str(session_timeout),
            "--cron",
            cron,
            "--sleep",
            str(sleep),
            "--shutdown-timeout",
            str(shutdown_timeout),
            "--log",
            log,
        ]
        if not cooperative:
            args.append("--blocking")
        if publish_events:
            args.append("--publish-events")
        if start_when:
            args += ["--start-when", start_when]
        if failover_sleep is not None:
            args += ["--failover-sleep", str(failover_sleep)]
        with open(log + ".stderr", "wb") as err:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=os.path.dirname(HERE),
            )
        self.procs.append(proc)
        return proc

    def stderr_tail(self, lines: int = 20) -> str:
        out = []
        for index in range(1, self._count + 1):
            with (
                contextlib.suppress(OSError),
                open(
                    self.path(f"worker-{index}.log.stderr"), encoding="utf-8", errors="replace"
                ) as err,
            ):
                text = err.read().strip()
                if text:
                    out.append(f"worker-{index}: " + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog:
    """The JSON lines worker processes append to one events file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        open(path, "ab").close()

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; return the new events."""
        with open(self.path, "rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.events.extend(new)
        return new

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, poll: float = 0.005
    ) -> dict[str, Any] | None:
        """The first event (already read or new) satisfying ``predicate``, or None on timeout."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll():
                if predicate(event):
                    return event
            time.sleep(poll)
        return None

    def wait_count(
        self, predicate: Callable[[dict[str, Any]], bool], count: int, timeout: float
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` events satisfy ``predicate``; return those seen."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            found = [e for e in self.events if predicate(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.005)


# -- the worker process itself ------------------------------------------------------------------


def _append(path: str, record: dict[str, Any]) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line under O_APPEND: never interleaved
    finally:
        os.close(fd)


def backend_class(protocol: str) -> type:
    """The backend class of a built-in protocol (whose ``publish`` :func:`_log_publishes` wraps)."""
    if protocol == "zookeeper":
        from goworker_py.cluster.backends.zookeeper import ZooKeeperBackend

        return ZooKeeperBackend
    if protocol in ("etcd", "etcdv3"):
        from goworker_py.cluster.backends.etcd import EtcdBackend

        return EtcdBackend
    from goworker_py.cluster.backends.redis import RedisBackend

    return RedisBackend


def _log_publishes(events: str, pid: int, backend: type) -> None:
    """Append a ``publish`` event (the shards it owns) each time this instance publishes.

    An instance publishes whenever its claims change (after claiming and starting, or after
    releasing): the parent rebuilds who owned what, when, from these lines. ``backend``: the
    backend class whose ``publish`` is wrapped.
    """
    original = backend.publish

    def publish(self: Any, instance: Any) -> None:
        original(self, instance)
        record = {
            "event": "publish",
            "pid": pid,
            "t": time.time(),
            "instance": instance.id,
            "node": getattr(self, "node", None),
            "shards": list(instance.shards),
        }
        _append(events, record)

    backend.publish = publish  # type: ignore[attr-defined]


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="one cluster worker for the benchmarks")
    parser.add_argument(
        "--discovery", "--hosts", required=True, help="ZooKeeper's hosts or a discovery URL"
    )
    parser.add_argument("--service", required=True)
    parser.add_argument("--total", type=int, default=1)
    parser.add_argument("--events", required=True)
    parser.add_argument("--session-timeout", type=float, default=4.0)
    parser.add_argument("--cron", default=DAILY)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds in do (0: no-op)")
    parser.add_argument(
        "--failover-sleep", type=float, default=None, help="seconds in do of a failover run"
    )
    parser.add_argument("--blocking", action="store_true", help="time.sleep, not ctx.wait")
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    parser.add_argument("--log", default="")
    parser.add_argument("--publish-events", action="store_true", help="log every publish")
    parser.add_argument("--start-when", default="", help="wait for this file before starting")
    args = parser.parse_args(argv)

    from goworker_py import Context, Handler, LoggerConfig, configure_logging

    if args.log:
        configure_logging(LoggerConfig(level="INFO", sink=args.log))
    events, pid, regular_pause = args.events, os.getpid(), args.sleep
    failover_pause = regular_pause if args.failover_sleep is None else args.failover_sleep
    blocking = args.blocking

    class Recorder(Handler):
        def do(self, ctx: Context) -> None:
            start = time.time()
            _append(
                events,
                {
                    "event": "start",
                    "pid": pid,
                    "shard": ctx.shard.index,
                    "is_failover": bool(ctx.is_failover),
                    "start": start,
                    "scheduled_time": ctx.scheduled_time.timestamp(),
                    "token": ctx.fencing_token,
                },
            )
            cancelled = False
            pause = failover_pause if ctx.is_failover else regular_pause
            if pause > 0:
                if blocking:
                    time.sleep(pause)
                else:
                    cancelled = ctx.wait(pause)
            _append(
                events,
                {
                    "event": "end",
                    "pid": pid,
                    "shard": ctx.shard.index,
                    "t": time.time(),
                    "cancelled": cancelled,
                },
            )

    if args.publish_events:
        protocol = discovery_config(args.discovery, args.session_timeout).protocol
        _log_publishes(events, pid, backend_class(protocol))
    if args.start_when:
        # Everything run() needs is imported before the barrier.
        importlib.import_module("goworker_py.cluster.membership")

        _append(events, {"event": "armed", "pid": pid, "t": time.time()})
        while not os.path.exists(args.start_when):
            time.sleep(0.01)
    started = time.time()
    worker = cluster_worker(
        args.discovery,
        args.service,
        args.total,
        handler=Recorder,
        cron=args.cron,
        session_timeout=args.session_timeout,
        shutdown_timeout=args.shutdown_timeout,
        name=f"w{pid}",
        handle_signals=True,
    )
    worker.run()
    host = worker.host
    member = getattr(host, "_member", None)
    _append(
        events,
        {
            "event": "ready",
            "pid": pid,
            "t": time.time(),
            "startup_s": time.time() - started,
            "instance": host.instance.id,
            # ZooKeeper: the instance node's name and the session id (bench_zk_load, re-balance).
            "node": None if member is None else member.key,
            "rank": None if member is None else member.rank,
            "session": getattr(host.backend, "session_id", None),
            "lease": host.backend.lease_id,
        },
    )
    reason = worker.wait()
    _append(events, {"event": "exit", "pid": pid, "t": time.time(), "reason": reason.value})
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    print("usage: python benchmarks/_cluster.py worker --discovery D --service S --events F ...")
    sys.exit(2)
