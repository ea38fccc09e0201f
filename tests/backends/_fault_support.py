"""Support for the worker-level server-fault tests (``test_worker_faults.py``).

- :class:`FaultCluster` makes cluster-mode :class:`~goworker_py.Worker` s of one backend kind
  (``handle_signals=False``) on a given connection string — the server's, or a proxy's in front
  of it — and cancels every one of them at teardown.
- :class:`Watch` records what one worker's host went through: each time its fence tripped (with
  the earliest moment the server could then expire the lease: the fence margin), its health
  changes, its leases.
- :class:`Owners` reads who owns what through :class:`~goworker_py.cluster.admin.ClusterAdmin`
  — a client of its own, never a worker's (``workers.AdminObserver``) — and waits for the
  cluster to settle.

Runs are recorded in a :class:`~cluster.conftest.Ledger` (``tests/cluster/conftest.py``) and
judged by its ``check_ledger``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cluster.conftest import Cluster, Ledger, RunRecord
from helpers import WorkerTracker, wait_until

from goworker_py import DiscoveryConfig, HealthStatus, Worker, WorkerConfig
from goworker_py.errors import ClusterError

from .workers import AdminObserver

SERVICE = "svc"
#: The session timeout (lease TTL) of every test, unless one says otherwise.
T = 2.0
#: Seconds a moving shard's run may go on before it is cancelled (``WorkerConfig``).
HANDOVER_TIMEOUT = 0.3

#: ``DiscoveryConfig.protocol`` of each backend kind of ``conftest.SERVER_BACKENDS``.
PROTOCOLS = {"zookeeper": "zookeeper", "etcd": "etcdv3", "redis": "redis"}


@dataclass(frozen=True)
class Fenced:
    """One trip of a worker's fence."""

    #: ``time.monotonic()`` when it tripped.
    at: float
    #: ``lease_valid_until()`` at that instant: what the fence counts from.
    valid_until: float
    #: The send time of the last renewal the server answered, plus the lease's time to live:
    #: the server's own clock cannot expire the lease before it.
    expiry: float
    lease: str
    why: str

    @property
    def margin(self) -> float:
        """Seconds the fence came before the earliest moment the server could expire the
        lease by its time to live."""
        return self.expiry - self.at

    @property
    def on_deadline(self) -> bool:
        """Tripped by its own clock (the lease not renewed in time), not by a lost lease."""
        return self.why.startswith("the lease was not renewed")


class Watch:
    """Records one worker's fence trips, health changes and leases from now on."""

    def __init__(self, worker: Worker) -> None:
        host = worker.host
        self.worker = worker
        self.fences: list[Fenced] = []
        self.health: list[tuple[float, HealthStatus]] = []
        self.leases: list[str] = [host.backend.lease_id]
        self._lock = threading.Lock()
        fence, backend = host.fence, host.backend
        on_fence: Callable[[str], None] = fence._on_fence
        set_health: Callable[[HealthStatus], None] = host._set_health

        def fenced(why: str) -> None:
            # The fence thread (or the supervisor on a lost lease), before the runs are told.
            record = Fenced(
                fence.fenced_at or time.monotonic(),
                backend.lease_valid_until(),
                backend.answered_at + backend.negotiated_timeout,
                backend.lease_id,
                why,
            )
            with self._lock:
                self.fences.append(record)
            on_fence(why)

        def health(status: HealthStatus) -> None:
            with self._lock:
                if status is not host._health:
                    self.health.append((time.monotonic(), status))
                lease = backend.lease_id
                if lease and lease != self.leases[-1]:
                    self.leases.append(lease)
            set_health(status)

        fence._on_fence = fenced
        host._set_health = health

    def states(self) -> list[HealthStatus]:
        with self._lock:
            return [status for _, status in self.health]

    def fences_after(self, since: float) -> list[Fenced]:
        with self._lock:
            return [f for f in self.fences if f.at >= since]

    @property
    def instance_id(self) -> str:
        instance_id: str = self.worker.host.instance.id
        return instance_id


class FaultCluster:
    """Cluster workers of one backend kind, in one namespace; every one cancelled at the end."""

    def __init__(self, kind: str, hosts: str, namespace: str) -> None:
        self.kind = kind
        self.protocol = PROTOCOLS[kind]
        self.hosts = hosts
        self.namespace = namespace
        self.tracker = WorkerTracker()
        self._cluster = Cluster(hosts, self.tracker)

    def discovery(self, hosts: str | None = None, session_timeout: float = T) -> DiscoveryConfig:
        return DiscoveryConfig(
            protocol=self.protocol,
            hosts=hosts or self.hosts,
            namespace=self.namespace,
            session_timeout=session_timeout,
            connect_timeout=5.0,
        )

    def make(
        self,
        ledger: Ledger,
        *,
        duration: float,
        total: int = 6,
        hosts: str | None = None,
        session_timeout: float = T,
    ) -> Worker:
        """A started worker whose runs (``duration`` s, every 100 ms) go to ``ledger``."""
        config = WorkerConfig(
            discovery=self.discovery(hosts, session_timeout),
            shutdown_timeout=5.0,
            # A shard that moves while its (long) run goes on: cut short soon, re-run by its
            # next owner (a failover), so that a join settles within a second.
            handover_timeout=HANDOVER_TIMEOUT,
        )
        return self._cluster.make(
            ledger.handler(duration=duration),
            total=total,
            cron="@every 100ms",
            service=SERVICE,
            config=config,
        )

    def stop(self, workers: Sequence[Worker]) -> None:
        for worker in workers:
            worker.cancel()
        for worker in workers:
            worker.wait(10.0)

    def close(self) -> None:
        self.tracker.close()


@dataclass
class Settled:
    """The cluster once settled: ``{shard: (owner, token)}`` and the members."""

    claims: dict[int, tuple[str, int]]
    members: list[str]
    at: float = field(default_factory=time.monotonic)

    def owners(self) -> dict[int, str]:
        return {shard: owner for shard, (owner, _) in self.claims.items()}

    def tokens(self) -> dict[int, int]:
        return {shard: token for shard, (_, token) in self.claims.items()}


class Owners:
    """Who owns what, read through ``ClusterAdmin`` on the server itself (never a proxy)."""

    def __init__(self, config: DiscoveryConfig, service: str = SERVICE) -> None:
        self.observer = AdminObserver(config, service)

    def __enter__(self) -> Owners:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.observer.close()

    def members(self) -> list[str] | None:
        """The members in rank order; None while the server does not answer."""
        try:
            status = self.observer.status()
        except ClusterError:
            return None
        return [m.instance.id for m in status.instances]

    def wait_settled(
        self, total: int, workers: Sequence[Worker], count: int | None = None, timeout: float = 20.0
    ) -> Settled:
        """Wait until every shard is owned once by one of ``count`` members (default: one per
        worker), evenly, as they publish, and each of ``workers`` is GREEN and runs exactly the
        shards it holds; the claims and members then."""
        count = len(workers) if count is None else count
        status = self.observer.wait_settled(total, count, timeout, workers, green=True)
        claims = {
            s.shard: (s.owner, s.token)
            for s in status.shards
            if s.owner is not None and s.token is not None
        }
        return Settled(claims, [m.instance.id for m in status.instances])


def every_shard_ran(ledger: Ledger, owners: dict[int, str], since: float) -> bool:
    """Every shard has a run (begun after ``since``) by its owner, finished or in flight."""
    done = {(r.shard, r.instance) for r in ledger.snapshot() if r.start > since}
    going = {key for key, start in ledger.in_flight().items() if start > since}
    return set(owners.items()) <= done | going


def wait_runs_everywhere(
    ledger: Ledger, owners: dict[int, str], since: float, timeout: float = 10.0
) -> float:
    """Wait until :func:`every_shard_ran`; return when (``time.monotonic()``)."""
    wait_until(lambda: every_shard_ran(ledger, owners, since), timeout, what="runs on every shard")
    return time.monotonic()


def in_flight_everywhere(ledger: Ledger, owners: dict[int, str], timeout: float = 10.0) -> None:
    """Wait until every shard is inside a run of its owner."""
    wait_until(
        lambda: set(owners.items()) <= set(ledger.in_flight()),
        timeout,
        what="every shard inside a run",
    )


def longest_gap(records: Sequence[RunRecord], since: float, until: float) -> float:
    """The longest time within ``[since, until]`` during which some shard had no run going."""
    worst = 0.0
    by_shard: dict[int, list[RunRecord]] = {}
    for record in records:
        by_shard.setdefault(record.shard, []).append(record)
    for runs in by_shard.values():
        covered_until = since
        for run in sorted(runs, key=lambda r: r.start):
            if run.end < since:
                continue
            if run.start > until:
                break
            worst = max(worst, run.start - covered_until)
            covered_until = max(covered_until, run.end)
        worst = max(worst, until - covered_until)
    return worst


@dataclass
class Sampled:
    """Members and owners sampled on a thread, to see when a lease vanished from the server."""

    owners: Owners
    interval: float = 0.01
    samples: list[tuple[float, list[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampled:
        self._thread = threading.Thread(target=self._loop, name="test-owners", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            members = self.owners.members()
            if members is not None:
                self.samples.append((at, members))
            self._stop.wait(self.interval)

    def gone_at(self, member: str) -> float | None:
        """When ``member`` was first sampled gone (after having been seen)."""
        seen = False
        for at, members in list(self.samples):
            if member in members:
                seen = True
            elif seen:
                return at
        return None
