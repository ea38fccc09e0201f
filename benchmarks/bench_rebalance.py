"""B6 bench_rebalance: re-balance convergence after a join or a clean leave, and its ZK cost.

In-process cluster workers (each with its own kazoo client and session; daily schedule, so no
run fires) share ``T`` shards. After the cluster has settled, an event happens:

- **join**: one more worker is started — from just before its ``run()`` (connect, register,
  first pass) until the cluster has converged;
- **clean leave**: the oldest worker (rank 0) is ``cancel()``\\ ed — until converged again.

*Converged* (``_cluster.cluster_state``): every shard claimed by exactly one worker, each with
a live shard thread and nothing left to release; every worker sees the same members with the
same published shards; loads differ by at most one; and a fresh ``StickyStrategy`` computation
over the claims keeps them (a fixed point). An observer client then reads every claim node
and checks ZooKeeper agrees. For each event: convergence time, shards moved (owners before
vs after) against the minimal move count (``T // (N+1)`` for a join, the leaver's shards for a
leave), ZooKeeper requests (``mntr`` ``zk_packets_received`` delta until 0.3 s after
convergence, minus the idle ping rate), supervisor passes, and CPU seconds of the process.

Figures: 20 instances x 1,000 shards, instance 21 joins (issue #3: ≤ 2 s) and one leaves;
the B6 grid 3/5/10 instances x 16/64/256 shards (2 x (join, leave) per cell). All these
instances share one process and one GIL, on 2 cores: their work is serialised, so the figures
are pessimistic compared with one process per instance.

Worker-process variant (``--no-processes`` skips it): 20 ``_cluster.py worker`` processes x
1,000 shards settle, a 21st joins, then rank 0 leaves (``SIGTERM``). Each process logs every
publish of its shards; convergence is replayed from those events (the first instant the live
instances' published shards are a sticky fixed point), timed from the joiner's instance-node
creation (its ``ctime``) or from the ``SIGTERM``. The processes start behind a barrier: each
imports everything, then all connect at once.

**100 instances x 1,000 shards** (issue #5; ``--no-large`` skips it) run as 100 worker
processes, the same way, with 2 x (a 101st joins, then rank 0 leaves) and the default session
timeout, 10 s: with 4 s, on a machine busy with other work too, worker processes died while
100 of them started (their own instance node gone: ``NoNodeError`` from ``publish`` in
``run()``). A worker process that dies ends the scenario at once (reported as not measured).
Not in-process: 100 in-process instances (about 1,300 threads on one GIL) took about 250 s to
start one by one, a join about 8 s to converge, and some supervisors died of a
``KazooTimeoutError`` under that load. Reported: join and clean-leave convergence (max),
shards moved against the minimal count (``T // (N+1)`` for a join, the leaver's shards for a
leave; owners from the publishes before the event and at convergence), ZooKeeper requests per
join and per leave (packets minus kazoo's idle ping rate, at least the ``mntr`` write + read
counts, which are reported too), the publishes per join (and how many repeated an instance's
shards unchanged), the CPU seconds of all worker processes per join (``/proc/<pid>/stat``: 100
instances share this machine's 2 cores, so convergence here is bounded by CPU, not by
ZooKeeper) and the joiner's ``run()``.
Each process holds about 33 MiB resident (3.3 GiB in all). ``--quick``: 30 processes.

**etcd and Redis** (issue #11, every backend side by side): the in-process 20 instances x
1,000 shards scenario again on a private etcd and a private Redis (``--backend-reps`` x (join,
leave), default 1; ``--quick``: 10 instances; the instances start at once, then settle: a
claim costs an etcd round trip of 2 ms, and growing one by one took minutes). Requests are the
server's own count (``_targets.Target.counter``) minus the idle rate measured before; the
observer reads the claims through the seam. Figures carry the backend: ``re-balance after
instance 21 joins, 20 instances x 1,000 shards: convergence (max) [etcd]``. The grid and the
worker-process scenarios stay on ZooKeeper.

About 75 s for ZooKeeper plus about 20 s per other backend (``--quick`` about 30 s + 15 s
each).

Run: ``.venv/bin/python benchmarks/bench_rebalance.py [--quick] [--reps N] [--big-reps N]
[--large-reps N] [--no-grid] [--no-processes] [--no-large] [--backends zookeeper etcd redis]
[--backend-reps N]``
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from typing import Any

from _cluster import (
    ClusterState,
    EventLog,
    Observer,
    PacketCounter,
    ProcessPool,
    WorkerPool,
    ZkTarget,
    cluster_state,
    cluster_worker,
    expected_ping_rate,
    member_sequence,
    service_name,
    settled,
)
from _common import (
    Report,
    cpu_seconds,
    fmt_stats,
    parse_args,
    proc_status,
    quiet_logging,
    remove_file,
    stats,
)
from _observers import observer
from _targets import BACKENDS, Target, each_server, figure_name

TARGET_S = 2.0
SESSION_TIMEOUT = 4.0
#: 100 processes on 2 cores (plus whatever else runs there) can starve a client or the server
#: for seconds: the 100-process scenario uses the production default session timeout.
LARGE_SESSION_TIMEOUT = 10.0
SETTLE_S = 0.3


def beliefs_agree(workers: list[Any], state: ClusterState) -> bool:
    """Every worker's view of every member's published shards matches the real claims."""
    by_owner: dict[str, set[int]] = {}
    for shard, owner in state.owners.items():
        by_owner.setdefault(owner, set()).add(shard)
    try:
        for worker in workers:
            for member in worker.host.members():
                if set(member.shards) != by_owner.get(member.id, set()):
                    return False
    except RuntimeError:
        return False
    return True


def converge(workers: list[Any], total: int, timeout: float) -> tuple[float | None, ClusterState]:
    """``perf_counter`` when converged with all beliefs agreeing, or None after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while True:
        at, state = settled(workers, total, max(deadline - time.perf_counter(), 0.0))
        if at is None:
            return None, state
        if beliefs_agree(workers, state):
            return at, state
        if time.perf_counter() > deadline:
            state.why = "members' published shards differ from the claims"
            return None, state
        time.sleep(0.002)


class Passes:
    """Counts supervisor passes (``host.step``) of the workers it instruments."""

    def __init__(self) -> None:
        self.count = 0

    def instrument(self, worker: Any) -> None:
        host = worker.host
        original = host.step

        def step() -> None:
            self.count += 1
            original()

        host.step = step


class Cluster:
    """N in-process workers of one fresh service, plus an observer."""

    def __init__(self, zk: Target, pool: WorkerPool, total: int, prefix: str) -> None:
        self.zk = zk
        self.pool = pool
        self.total = total
        self.service = service_name(prefix)
        self.workers: list[Any] = []
        self.passes = Passes()
        self.packets = zk.counter()
        self.ping_rate = 0.0
        self.last_join_s = 0.0
        self._count = 0

    def new_worker(self) -> Any:
        self._count += 1
        return cluster_worker(
            self.zk.discovery,
            self.service,
            self.total,
            name=f"{self.service[-8:]}-{self._count}",
            session_timeout=SESSION_TIMEOUT,
        )

    def grow(
        self, size: int, timeout: float, limit: float | None = None, together: bool = False
    ) -> None:
        """Start workers one by one (each join settled) until there are ``size``.

        Raises ``RuntimeError`` when a join does not converge within ``timeout``, or when
        ``limit`` seconds have passed (saying how many workers were running then).
        ``together``: start them all at once (each ``run()`` on a thread of its own), then wait
        for the cluster to converge: each claims its share instead of the first claiming every
        shard and handing most of them on (a set-up of seconds, not minutes, where a claim
        costs a few milliseconds).
        """
        began = time.perf_counter()
        if together:
            fresh = [self.new_worker() for _ in range(size - len(self.workers))]
            starters = [threading.Thread(target=self.pool.start, args=(w,)) for w in fresh]
            for thread in starters:
                thread.start()
            for thread in starters:
                thread.join()
            for worker in fresh:
                self.passes.instrument(worker)
                self.workers.append(worker)
            at, state = converge(self.workers, self.total, max(timeout, 10.0 * size))
            if at is None:
                raise RuntimeError(f"{len(self.workers)} workers never converged: {state.why}")
            return
        while len(self.workers) < size:
            if limit is not None and time.perf_counter() - began > limit:
                raise RuntimeError(
                    f"start-up gave up after {limit:g} s with {len(self.workers)} of {size} "
                    f"workers (the last join took {self.last_join_s:.1f} s)"
                )
            joined = time.perf_counter()
            worker = self.pool.start(self.new_worker())
            self.passes.instrument(worker)
            self.workers.append(worker)
            at, state = converge(self.workers, self.total, timeout)
            if at is None:
                raise RuntimeError(f"{len(self.workers)} workers never converged: {state.why}")
            self.last_join_s = at - joined

    def measure_pings(self, seconds: float) -> None:
        start, before = time.perf_counter(), self.packets.read()
        time.sleep(seconds)
        self.ping_rate = (self.packets.read() - before) / (time.perf_counter() - start)

    def owners(self) -> dict[int, str]:
        return cluster_state(self.workers, self.total).owners

    def event(self, kind: str, timeout: float) -> dict[str, Any]:
        """A join or a clean leave, measured."""
        before_owners = self.owners()
        n_before = len(self.workers)
        passes0, packets0, cpu0 = self.passes.count, self.packets.read(), cpu_seconds()
        run_s: float | None = None
        if kind == "join":
            worker = self.new_worker()
            minimal = self.total // (n_before + 1)
            start = time.perf_counter()
            self.pool.start(worker)
            run_s = time.perf_counter() - start
            self.passes.instrument(worker)  # its first pass ran inside run()
            self.passes.count += 1
            self.workers.append(worker)
            leaver = None
        else:
            leaver = min(self.workers, key=member_sequence)
            minimal = len(leaver.host.claims)
            self.workers.remove(leaver)
            start = time.perf_counter()
            leaver.cancel()
        at, state = converge(self.workers, self.total, timeout)
        converged_s = None if at is None else at - start
        cpu = cpu_seconds() - cpu0
        if leaver is not None:
            self.pool.stop(leaver, 30)
        time.sleep(SETTLE_S)
        elapsed = time.perf_counter() - start
        requests = self.packets.read() - packets0 - self.ping_rate * elapsed
        after = state.owners
        moved = sum(1 for shard, owner in before_owners.items() if after.get(shard) != owner)
        return {
            "kind": kind,
            "instances_before": n_before,
            "instances_after": len(self.workers),
            "converged_s": converged_s,
            "run_returned_s": run_s,
            "why_not": "" if at is not None else state.why,
            "moved": moved,
            "minimal": minimal,
            "zk_requests": round(requests),
            "passes": self.passes.count - passes0,
            "cpu_s": round(cpu, 3),
        }

    def verify_with_observer(self) -> int:
        """Claims in ZooKeeper that disagree with the workers' own (0 when consistent)."""
        with observer(self.zk, self.service) as watcher:
            in_zk = watcher.claim_owners()
        mine = self.owners()
        return sum(1 for s in set(in_zk) | set(mine) if in_zk.get(s) != mine.get(s))

    def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        for worker in self.workers:
            self.pool.stop(worker, 30)
        self.workers = []


def run_scenario(
    zk: Target,
    instances: int,
    total: int,
    reps: int,
    timeout: float,
    limit: float | None = None,
    together: bool = False,
) -> dict[str, Any]:
    """``instances`` workers on ``total`` shards; ``reps`` x (join, then leave of rank 0)
    (``together``: see :meth:`Cluster.grow`)."""
    with WorkerPool() as pool:
        cluster = Cluster(zk, pool, total, f"rb{instances}x{total}")
        try:
            began = time.perf_counter()
            cluster.grow(instances, timeout, limit, together)
            setup_s = time.perf_counter() - began
            cluster.measure_pings(1.0)
            events: list[dict[str, Any]] = []
            mismatches = 0
            for _ in range(reps):
                for kind in ("join", "leave"):
                    events.append(cluster.event(kind, timeout))
                    mismatches += cluster.verify_with_observer()
            threads = proc_status("Threads")
        finally:
            cluster.close()
    joins = [e for e in events if e["kind"] == "join"]
    leaves = [e for e in events if e["kind"] == "leave"]
    return {
        "instances": instances,
        "shards": total,
        "setup_s": round(setup_s, 2),
        "idle_ping_rate_per_s": round(cluster.ping_rate, 2),
        "threads": threads,
        "observer_mismatches": mismatches,
        "join_s": stats([e["converged_s"] for e in joins if e["converged_s"] is not None]),
        "leave_s": stats([e["converged_s"] for e in leaves if e["converged_s"] is not None]),
        "join_run_returned_s": stats([e["run_returned_s"] for e in joins]),
        "unconverged": sum(1 for e in events if e["converged_s"] is None),
        "events": events,
    }


def _rank(node: str) -> int:
    return int(node.rsplit("-", 1)[1])


def _converged(owned: dict[str, set[int]], ranked: list[str], total: int) -> bool:
    """Every shard owned once, even loads, and a fixed point of the sticky strategy."""
    from goworker_py.cluster.sharding import StickyStrategy

    owners: dict[int, str] = {}
    for iid in ranked:
        for shard in owned.get(iid, set()):
            if shard in owners:
                return False
            owners[shard] = iid
    if len(owners) != total:
        return False
    loads = [len(owned.get(i, set())) for i in ranked]
    if max(loads) - min(loads) > 1:
        return False
    fresh = StickyStrategy().assign(ranked, total, owners)
    return all(set(fresh[i]) == owned.get(i, set()) for i in ranked)


def converged_from_events(
    log: EventLog, live: dict[str, str], total: int, since: float
) -> float | None:
    """When the published shards of the ``live`` instances (id -> node) first converged.

    Replays the ``publish`` events in time order; None if they have not converged yet.
    """
    ranked = sorted(live, key=lambda i: _rank(live[i]))
    owned: dict[str, set[int]] = {}
    result: float | None = None
    for event in sorted((e for e in log.events if e["event"] == "publish"), key=lambda e: e["t"]):
        if event["instance"] not in live:
            continue
        owned[event["instance"]] = set(event["shards"])
        if event["t"] >= since and _converged(owned, ranked, total):
            result = result if result is not None else event["t"]
        else:
            result = None
    if result is None and _converged(owned, ranked, total):
        return since  # nothing needed to change after ``since``
    return result


def published_owners(
    log: EventLog, live: dict[str, str], until: float
) -> tuple[dict[int, str], dict[str, set[int]]]:
    """``({shard: owner}, {instance: shards})`` from the last publish of each ``live``
    instance at or before ``until``."""
    owned: dict[str, set[int]] = {}
    for event in sorted((e for e in log.events if e["event"] == "publish"), key=lambda e: e["t"]):
        if event["t"] > until:
            break
        if event["instance"] in live:
            owned[event["instance"]] = set(event["shards"])
    owners = {shard: iid for iid, shards in owned.items() for shard in shards}
    return owners, owned


def publishes_between(log: EventLog, start: float, end: float) -> tuple[int, int]:
    """(publishes in ``[start, end]``, how many of them repeated the instance's shards)."""
    last: dict[str, list[int]] = {}
    count = same = 0
    for event in sorted((e for e in log.events if e["event"] == "publish"), key=lambda e: e["t"]):
        shards = sorted(event["shards"])
        if start <= event["t"] <= end:
            count += 1
            same += int(last.get(event["instance"]) == shards)
        last[event["instance"]] = shards
    return count, same


def process_cpu(pids: list[int]) -> dict[int, float]:
    """``{pid: user + system CPU seconds}`` from ``/proc/<pid>/stat`` (gone: left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return cpu


def process_rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB (0 if gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two :func:`process_cpu` readings (a process gone: 0)."""
    return sum(after.get(pid, used) - before.get(pid, 0.0) for pid, used in after.items())


def process_scenario(
    zk: ZkTarget,
    instances: int,
    total: int,
    timeout: float,
    reps: int = 1,
    session_timeout: float = SESSION_TIMEOUT,
) -> dict[str, Any]:
    """Worker processes: ``instances`` settle; ``reps`` x (one more joins, then rank 0 leaves).

    Each event records its convergence time (replayed from the ``publish`` events), the shards
    moved (owners published before the event vs at convergence) against the minimal count,
    the ZooKeeper requests until ``SETTLE_S`` after convergence (the ``mntr`` packet delta
    minus kazoo's idle ping rate, but never less than the server's write + read count; writes
    and reads also apart), the publishes meanwhile (and how many repeated the instance's
    shards unchanged), and the CPU seconds of all worker processes.
    """
    service = service_name(f"rbp{instances}x{total}")
    counter = PacketCounter(zk)
    with ProcessPool() as procs, Observer(zk.hosts, service) as observer:
        log = EventLog(procs.path("events.jsonl"))

        go = procs.path("go")

        def spawn(barrier: bool = False) -> Any:
            return procs.spawn_worker(
                zk.hosts,
                service,
                total,
                log.path,
                session_timeout=session_timeout,
                publish_events=True,
                start_when=go if barrier else "",
            )

        members: dict[str, dict[str, Any]] = {}

        def check_alive(count: int = 0) -> None:
            """Raise if a member process (or, with ``count``, any of them) has died."""
            pids = {e["pid"] for e in members.values()}
            for proc in procs.procs:
                if (count or proc.pid in pids) and proc.poll() is not None:
                    raise RuntimeError(
                        f"worker process {proc.pid} exited ({proc.returncode}):\n"
                        + procs.stderr_tail(8)
                    )

        def wait_events(kind: str, count: int) -> list[dict[str, Any]]:
            deadline = time.monotonic() + timeout
            while True:
                found = log.wait_count(lambda e: e["event"] == kind, count, 0.2)
                if len(found) >= count:
                    return found
                check_alive(count)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker processes not {kind}:\n" + procs.stderr_tail())

        def wait_converged(live: dict[str, str], since: float) -> float | None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                check_alive()
                log.poll()
                at = converged_from_events(log, live, total, since)
                if at is not None:
                    return at
                time.sleep(0.05)
            return None

        # Start-up: every process imports first, then all connect at once (a barrier): each
        # instance then sees a few membership changes instead of one per instance.
        spawned = time.time()
        for _ in range(instances):
            spawn(barrier=True)
        wait_events("armed", instances)
        imports_s = time.time() - spawned
        began = time.time()
        open(go, "wb").close()
        ready = wait_events("ready", instances)
        members.update((e["instance"], e) for e in ready)
        live = {iid: e["node"] for iid, e in members.items()}
        if wait_converged(live, began) is None:
            raise RuntimeError(f"{instances} worker processes never converged")
        setup_s = time.time() - began
        rss = [process_rss_mib(e["pid"]) for e in members.values()]
        time.sleep(1.0)
        # The idle pings of one instance (kazoo's rate; measuring it needs several periods:
        # instances started together ping in step).
        ping_rate = expected_ping_rate(session_timeout)

        def measure(kind: str, since: float, minimal: int, act: Any) -> dict[str, Any]:
            """Counters around ``act()`` (which returns the instant to time from)."""
            before_live = dict(live)
            pids = [e["pid"] for e in members.values()]
            z0, t0, cpu0 = counter.snapshot(), time.perf_counter(), process_cpu(pids)
            start = act()
            at = wait_converged(live, start)
            time.sleep(SETTLE_S)
            pids = sorted(set(pids) | {e["pid"] for e in members.values()})
            cpu = cpu_delta(cpu0, process_cpu(pids))
            z1, elapsed = counter.snapshot(), time.perf_counter() - t0
            requests = z1["requests"] - z0["requests"]
            writes, reads = z1["writes"] - z0["writes"], z1["reads"] - z0["reads"]
            pings = ping_rate * elapsed * (len(before_live) + len(live)) / 2
            log.poll()
            end = (at if at is not None else time.time()) + SETTLE_S
            owners_before, _ = published_owners(log, before_live, since)
            owners_after, _ = published_owners(log, live, end)
            publishes, repeated = publishes_between(log, since, end)
            return {
                "kind": kind,
                "instances_before": len(before_live),
                "instances_after": len(live),
                "converged_s": None if at is None else round(at - start, 4),
                "converged_at": at,
                "moved": sum(1 for s, o in owners_before.items() if owners_after.get(s) != o),
                "minimal": minimal,
                "zk_requests": round(max(requests - pings, writes + reads)),
                "zk_writes": writes,
                "zk_reads": reads,
                "publishes": publishes,
                "publishes_unchanged": repeated,
                "cpu_s": round(cpu, 3),
            }

        joined: list[dict[str, Any]] = []

        def join() -> float:
            """Start one more process; return when its instance node was created."""
            proc = spawn()
            deadline = time.monotonic() + timeout
            while True:
                new = log.wait_for(lambda e: e["event"] == "ready" and e["pid"] == proc.pid, 0.2)
                if new is not None:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the joining worker process never got ready:\n" + procs.stderr_tail(8)
                    )
            stat = observer.client.exists(f"{observer.instances_path}/{new['node']}")
            joined.append(new)
            members[new["instance"]] = new
            live[new["instance"]] = new["node"]
            return stat.ctime / 1000.0 if stat is not None else float(new["t"])

        def leave() -> float:
            """SIGTERM to rank 0; return when it was sent."""
            leaver = min(members.values(), key=lambda e: _rank(e["node"]))
            del live[leaver["instance"]]
            del members[leaver["instance"]]
            signalled = time.time()
            os.kill(leaver["pid"], signal.SIGTERM)
            return signalled

        events: list[dict[str, Any]] = []
        for _ in range(reps):
            spawned = time.time()
            event = measure("join", spawned, total // (len(live) + 1), join)
            at = event["converged_at"]
            event["from_spawn_s"] = None if at is None else round(at - spawned, 4)
            event["startup_s"] = round(joined[-1]["startup_s"], 3)
            events.append(event)
            log.poll()
            rank0 = min(members.values(), key=lambda e: _rank(e["node"]))
            _, owned = published_owners(log, live, time.time())
            minimal = len(owned.get(rank0["instance"], set()))
            events.append(measure("leave", time.time(), minimal, leave))
    joins = [e for e in events if e["kind"] == "join"]
    leaves = [e for e in events if e["kind"] == "leave"]
    return {
        "instances": instances,
        "shards": total,
        "session_timeout_s": session_timeout,
        "imports_s": round(imports_s, 2),
        "rss_mib_per_process": round(sum(rss) / max(len(rss), 1), 1),
        "setup_s": round(setup_s, 2),
        "idle_pings_per_s": round(ping_rate * instances, 2),
        "join_s": stats([e["converged_s"] for e in joins if e["converged_s"] is not None]),
        "leave_s": stats([e["converged_s"] for e in leaves if e["converged_s"] is not None]),
        "unconverged": sum(1 for e in events if e["converged_s"] is None),
        "events": events,
    }


def summarize(label: str, result: dict[str, Any]) -> str:
    joins = [e for e in result["events"] if e["kind"] == "join"]
    leaves = [e for e in result["events"] if e["kind"] == "leave"]

    def avg(items: list[dict[str, Any]], key: str) -> float:
        return sum(e[key] for e in items) / len(items) if items else float("nan")

    return (
        f"  {label}: join {fmt_stats(result['join_s'], 's')}; leave "
        f"{fmt_stats(result['leave_s'], 's')}; moved join {avg(joins, 'moved'):.3g} "
        f"(minimal {avg(joins, 'minimal'):.3g}), leave {avg(leaves, 'moved'):.3g} (minimal "
        f"{avg(leaves, 'minimal'):.3g}); ZK requests join {avg(joins, 'zk_requests'):.0f}, "
        f"leave {avg(leaves, 'zk_requests'):.0f}; passes join {avg(joins, 'passes'):.0f}; "
        f"setup {result['setup_s']} s"
    )


def summarize_processes(label: str, result: dict[str, Any]) -> str:
    lines = [
        f"  {label} processes: start-up {result['imports_s']} s, then settled in "
        f"{result['setup_s']} s; {result['rss_mib_per_process']} MiB each; idle pings "
        f"{result['idle_pings_per_s']}/s (kazoo's rate)"
    ]
    for e in result["events"]:
        extra = ""
        if e["kind"] == "join":
            extra = f", {e['from_spawn_s']} s from spawn (its run() {e['startup_s']} s)"
        lines.append(
            f"    {e['kind']} {e['instances_before']} -> {e['instances_after']}: converged "
            f"{e['converged_s']} s{extra}; moved {e['moved']} (minimal {e['minimal']}); ZK "
            f"requests {e['zk_requests']} (writes {e['zk_writes']}, reads {e['zk_reads']}); "
            f"publishes {e['publishes']} ({e['publishes_unchanged']} unchanged); worker CPU "
            f"{e['cpu_s']} s"
        )
    return "\n".join(lines)


def report_processes(report: Report, result: dict[str, Any], big: bool) -> None:
    """Figures of one :func:`process_scenario`; ``big`` adds moves, publishes and CPU."""
    n, t = result["instances"], result["shards"]
    label = f"{n} worker processes x {t:,} shards"
    joins = [e for e in result["events"] if e["kind"] == "join"]
    leaves = [e for e in result["events"] if e["kind"] == "leave"]
    suffix = f" (max of {len(joins)})" if len(joins) > 1 else ""

    def mean(items: list[dict[str, Any]], key: str) -> float | None:
        values = [e[key] for e in items if e[key] is not None]
        return round(sum(values) / len(values), 3) if values else None

    def worst(items: list[dict[str, Any]], key: str) -> float | None:
        values = [e[key] for e in items if e[key] is not None]
        return max(values) if len(values) == len(items) and values else None

    report.add(
        f"re-balance after process {n + 1} joins, {label}: convergence{suffix}",
        worst(joins, "converged_s"),
        "s",
        TARGET_S,
        note="from its instance node's creation; "
        f"{worst(joins, 'from_spawn_s')} s from the process spawn",
    )
    report.add(
        f"re-balance after a clean leave (SIGTERM), {label}: convergence{suffix}",
        worst(leaves, "converged_s"),
        "s",
        TARGET_S,
    )
    report.add(
        f"ZooKeeper requests per join re-balance, {label}",
        mean(joins, "zk_requests"),
        "requests",
        note=f"writes {mean(joins, 'zk_writes')}, reads {mean(joins, 'zk_reads')}",
    )
    if not big:
        return
    report.add(
        f"ZooKeeper requests per leave re-balance, {label}",
        mean(leaves, "zk_requests"),
        "requests",
        note=f"writes {mean(leaves, 'zk_writes')}, reads {mean(leaves, 'zk_reads')}",
    )
    moved = sum(e["moved"] for e in joins)
    report.add(
        f"shards moved per join / minimal, {label}",
        round(moved / max(sum(e["minimal"] for e in joins), 1), 3),
        "x minimal",
        1.0,
        note=f"{moved} moved in {len(joins)} join(s)",
    )
    moved = sum(e["moved"] for e in leaves)
    report.add(
        f"shards moved per clean leave / minimal, {label}",
        round(moved / max(sum(e["minimal"] for e in leaves), 1), 3),
        "x minimal",
        1.0,
        note=f"{moved} moved in {len(leaves)} leave(s)",
    )
    report.add(
        f"instance publishes per join re-balance, {label}",
        mean(joins, "publishes"),
        "publishes",
        note=f"{mean(joins, 'publishes_unchanged')} of them with the instance's shards unchanged",
    )
    report.add(
        f"CPU of all worker processes per join re-balance, {label}",
        mean(joins, "cpu_s"),
        "s",
        note="incl. the joiner's start-up; 2 cores shared by all instances",
    )
    report.add(
        f"joining process's run() (connect + register + first pass), {label}, max",
        worst(joins, "startup_s"),
        "s",
    )


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=None, help="join+leave reps per grid cell")
    parser.add_argument("--big-reps", type=int, default=None, help="reps of 20 x 1,000")
    parser.add_argument("--large-reps", type=int, default=None, help="reps of 100 x 1,000")
    parser.add_argument(
        "--no-large", action="store_true", help="skip 100 worker processes x 1,000 shards"
    )
    parser.add_argument("--no-grid", action="store_true", help="skip the B6 grid")
    parser.add_argument(
        "--no-processes", action="store_true", help="skip the worker-process variant"
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument(
        "--backend-reps", type=int, default=None, help="reps of 20 x 1,000 on etcd and Redis"
    )


def report_big(report: Report, backend: str, big_n: int, big: dict[str, Any]) -> None:
    """The figures of the in-process ``big_n`` x 1,000 scenario on ``backend``."""
    joins = [e for e in big["events"] if e["kind"] == "join"]
    leaves = [e for e in big["events"] if e["kind"] == "leave"]
    label = f"{big_n} instances x 1,000 shards"

    def name(figure: str, zookeeper: str | None = None) -> str:
        return figure_name(backend, figure, zookeeper)

    report.add(
        name(f"re-balance after instance {big_n + 1} joins, {label}: convergence (max)"),
        big["join_s"].get("max"),
        "s",
        TARGET_S,
        note="from just before the new worker's run()",
    )
    report.add(
        name(
            f"re-balance after instance {big_n + 1} joins, {label}: from its run() returning (max)"
        ),
        max((e["converged_s"] - e["run_returned_s"] for e in joins), default=None),
        "s",
    )
    report.add(
        name(f"joining worker's run() (connect + register + first pass), {label}, max"),
        big["join_run_returned_s"].get("max"),
        "s",
    )
    report.add(
        name(f"re-balance after a clean leave, {label}: convergence (max)"),
        big["leave_s"].get("max"),
        "s",
        TARGET_S,
    )
    report.add(
        name(
            f"backend requests per join re-balance, {label}",
            f"ZooKeeper requests per join re-balance, {label}",
        ),
        sum(e["zk_requests"] for e in joins) / max(len(joins), 1),
        "requests",
    )
    report.add(
        name(
            f"backend requests per leave re-balance, {label}",
            f"ZooKeeper requests per leave re-balance, {label}",
        ),
        sum(e["zk_requests"] for e in leaves) / max(len(leaves), 1),
        "requests",
    )
    report.add(
        name(f"supervisor passes (all instances) per join, {label}"),
        sum(e["passes"] for e in joins) / max(len(joins), 1),
        "passes",
    )
    report.add(
        name(f"process CPU per join, {label}"),
        sum(e["cpu_s"] for e in joins) / max(len(joins), 1),
        "s",
    )
    report.add(
        name(f"shards moved per join / minimal, {label}"),
        sum(e["moved"] for e in joins) / max(sum(e["minimal"] for e in joins), 1),
        "x minimal",
        1.0,
    )
    report.add(
        name(
            f"claims in the backend disagreeing with the workers, {label}",
            f"claims in ZooKeeper disagreeing with the workers, {label}",
        ),
        big["observer_mismatches"],
        "",
    )


def measure_zookeeper(
    report: Report, details: dict[str, Any], zk: Target, args: argparse.Namespace
) -> None:
    """B6 on ZooKeeper: 20 (or 10) x 1,000 in-process, the processes, the grid, 100 x 1,000."""
    reps = args.reps or (1 if args.quick else 2)
    big_reps = args.big_reps or (1 if args.quick else 2)
    large_reps = args.large_reps or (1 if args.quick else 2)
    big_n = 10 if args.quick else 20
    print(f"{big_n} instances x 1,000 shards, {big_reps} x (join, leave) ...", flush=True)
    big = run_scenario(zk, big_n, 1000, big_reps, 60)
    print(summarize(f"{big_n} x 1000", big), flush=True)
    details[f"{big_n}x1000"] = big
    report_big(report, "zookeeper", big_n, big)
    if not args.no_processes:
        pn, pt = (5, 256) if args.quick else (20, 1000)
        print(
            f"worker processes: {pn} x {pt:,} shards, one joins, then rank 0 leaves ...",
            flush=True,
        )
        proc = process_scenario(zk, pn, pt, 60)
        details[f"processes_{pn}x{pt}"] = proc
        print(summarize_processes(f"{pn} x {pt}", proc), flush=True)
        report_processes(report, proc, big=False)
    if not args.no_grid:
        grid_n = (3, 5) if args.quick else (3, 5, 10)
        grid_t = (16, 256) if args.quick else (16, 64, 256)
        print(f"B6 grid {grid_n} x {grid_t}, {reps} x (join, leave) each ...", flush=True)
        grid: dict[str, Any] = {}
        for n in grid_n:
            for t in grid_t:
                cell = run_scenario(zk, n, t, reps, 30)
                print(summarize(f"{n} x {t}", cell), flush=True)
                grid[f"{n}x{t}"] = cell
        details["grid"] = grid
        cells = list(grid.values())
        all_events = [e for c in cells for e in c["events"]]
        join_max = max(
            (c["join_s"].get("max", 0.0) for c in cells if c["join_s"].get("n")),
            default=None,
        )
        leave_max = max(
            (c["leave_s"].get("max", 0.0) for c in cells if c["leave_s"].get("n")),
            default=None,
        )
        report.add("B6 grid: join convergence, worst cell max", join_max, "s", TARGET_S)
        report.add("B6 grid: leave convergence, worst cell max", leave_max, "s", TARGET_S)
        report.add(
            "B6 grid: shards moved / minimal (all events)",
            sum(e["moved"] for e in all_events) / max(sum(e["minimal"] for e in all_events), 1),
            "x minimal",
            1.0,
        )
        report.add(
            "B6 grid: events that never converged",
            sum(c["unconverged"] for c in cells),
            "",
        )
        for key, cell in grid.items():
            join_p50 = cell["join_s"].get("p50")
            report.add(f"B6 grid {key}: join convergence p50", join_p50, "s")
            report.add(f"B6 grid {key}: leave convergence p50", cell["leave_s"].get("p50"), "s")
    if not args.no_large:
        ln, lt = (30, 1000) if args.quick else (100, 1000)
        print(
            f"worker processes: {ln} x {lt:,} shards (session timeout "
            f"{LARGE_SESSION_TIMEOUT:g} s), {large_reps} x (one joins, then rank 0 "
            "leaves) ...",
            flush=True,
        )
        try:
            large = process_scenario(
                zk, ln, lt, 60, large_reps, session_timeout=LARGE_SESSION_TIMEOUT
            )
        except RuntimeError as exc:
            print(f"  {ln} x {lt} processes not measured: {exc}", flush=True)
            details[f"processes_{ln}x{lt}"] = {"error": str(exc)}
            report.add(
                f"re-balance after process {ln + 1} joins, {ln} worker processes x "
                f"{lt:,} shards: convergence",
                None,
                "s",
                TARGET_S,
                note=f"not measured: {str(exc).splitlines()[0]}",
            )
        else:
            details[f"processes_{ln}x{lt}"] = large
            print(summarize_processes(f"{ln} x {lt}", large), flush=True)
            report_processes(report, large, big=True)


def measure_backend(
    report: Report, details: dict[str, Any], server: Target, args: argparse.Namespace
) -> None:
    """20 (or 10) instances x 1,000 shards, in-process, on etcd or Redis."""
    big_n = 10 if args.quick else 20
    reps = args.backend_reps or 1
    print(
        f"{server.label}: {big_n} instances x 1,000 shards, {reps} x (join, leave) ...", flush=True
    )
    big = run_scenario(server, big_n, 1000, reps, 60, together=True)
    print(summarize(f"{server.label} {big_n} x 1000", big), flush=True)
    details[f"{server.name} {big_n}x1000"] = big
    report_big(report, server.name, big_n, big)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    report = Report("bench_rebalance", "B6", args.quick)
    log_path = quiet_logging("INFO")
    details: dict[str, Any] = {}

    def measure_on(server: Target) -> None:
        if server.name == "zookeeper":
            measure_zookeeper(report, details, server, args)
        else:
            measure_backend(report, details, server, args)

    try:
        each_server(report, args.backends, measure_on)
        report.details = details
    finally:
        remove_file(log_path)
    report.emit()


if __name__ == "__main__":
    main()
