"""Shared helpers for the cluster tests: workers, an observer of ZooKeeper, a run ledger.

- ``cluster`` makes cluster-mode workers on this test's chroot (``handle_signals=False``) and
  cancels every one of them at teardown.
- ``observer`` reads ``/goworker/<service>/claims`` and ``.../instances`` with a kazoo client of
  its own, never the workers' clients, so what it sees is what ZooKeeper holds.
- :class:`Ledger` records every run's interval (per shard, instance, fencing token) so a test
  can check that no two instances were ever inside one shard's run at once.
- :func:`settle_problems` / :func:`wait_settled_by`: when a service is settled, whoever reads it
  (this observer, or ``tests/backends``' readers through ``ClusterAdmin``).
- :class:`Book` and ``groups``: the runs of :class:`WorkerGroup` s, one group per instance.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import WorkerTracker, wait_until
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from goworker_py import (
    Context,
    DiscoveryConfig,
    Handler,
    HealthStatus,
    Model,
    Worker,
    WorkerConfig,
    WorkerGroup,
    WorkerInstance,
)
from goworker_py.testing import ZooKeeperServer

NAMESPACE = "goworker"
SERVICE = "svc"

# -- the run ledger -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run as its handler saw it; times are ``time.monotonic()`` (system-wide on Linux)."""

    shard: int
    instance: str
    token: int | None
    scheduled: float
    start: float
    end: float
    failover: bool = False
    pid: int = 0
    #: The run was cancelled (``ctx.cancelled`` when ``do`` returned).
    cancelled: bool = False

    @classmethod
    def of(cls, ctx: Context, start: float) -> RunRecord:
        """The record of ``ctx``'s run, begun at ``start`` and ending now."""
        return cls(
            shard=ctx.shard.index,
            instance=ctx.instance.id,
            token=ctx.fencing_token,
            scheduled=ctx.scheduled_time.timestamp(),
            start=start,
            end=time.monotonic(),
            failover=ctx.is_failover,
            cancelled=ctx.cancelled,
        )

    @classmethod
    def from_json(cls, line: str) -> RunRecord:
        data = json.loads(line)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Ledger:
    """A thread-safe list of :class:`RunRecord`, filled by :meth:`handler` runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[RunRecord] = []
        self._in_flight: dict[tuple[int, str], float] = {}

    def add(self, record: RunRecord) -> None:
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[RunRecord]:
        with self._lock:
            return list(self.records)

    def in_flight(self) -> dict[tuple[int, str], float]:
        """``{(shard, instance id): start}`` of the runs going on now."""
        with self._lock:
            return dict(self._in_flight)

    def handler(self, duration: float = 0.0, linger: float = 0.0) -> type[Handler]:
        """A handler class whose ``do`` takes ``duration`` s and records it.

        A cancelled run returns early, after ``linger`` more seconds (a slow clean-up).
        """
        ledger = self

        class LedgerHandler(Handler):
            def do(self, ctx: Context) -> None:
                start = time.monotonic()
                key = (ctx.shard.index, ctx.instance.id)
                with ledger._lock:
                    ledger._in_flight[key] = start
                try:
                    if duration and ctx.wait(duration) and linger:
                        time.sleep(linger)
                finally:
                    with ledger._lock:
                        ledger._in_flight.pop(key, None)
                    ledger.add(RunRecord.of(ctx, start))

        return LedgerHandler


def check_ledger(
    records: Sequence[RunRecord],
    excuse: Callable[[RunRecord, RunRecord], bool] = lambda earlier, later: False,
) -> None:
    """No two runs of one shard overlap in time; fencing tokens never decrease per shard.

    ``excuse(earlier, later)`` may accept an overlap the test expects (a stale owner's run).
    """
    by_shard: dict[int, list[RunRecord]] = {}
    for record in records:
        by_shard.setdefault(record.shard, []).append(record)
    for shard, runs in by_shard.items():
        runs.sort(key=lambda r: r.start)
        latest: RunRecord | None = None
        for run in runs:
            if latest is not None:
                assert run.start >= latest.end or excuse(latest, run), (
                    f"shard {shard}: run of {run.instance[:8]} (token {run.token}) started "
                    f"{latest.end - run.start:.3f} s before the run of {latest.instance[:8]} "
                    f"(token {latest.token}) ended"
                )
                assert (run.token or 0) >= (latest.token or 0), (
                    f"shard {shard}: fencing token went back from {latest.token} to {run.token}"
                )
            if latest is None or run.end > latest.end:
                latest = run


# -- when a service is settled ---------------------------------------------------------------------


def settle_problems(
    published: Mapping[str, Sequence[int]],
    owners: Mapping[int, str],
    total: int,
    count: int,
    workers: Sequence[Worker] = (),
    green: bool = False,
) -> list[str]:
    """What keeps a service from being settled: [] once every shard is claimed by one of
    ``count`` members, evenly, each member publishes exactly the shards it holds, and each of
    ``workers`` (in-process) runs exactly the shards it holds (and, with ``green``, is GREEN).

    ``published``: ``{member id: the shards it publishes}``; ``owners``: ``{shard: owner id}``.
    """
    problems: list[str] = []
    if len(published) != count:
        problems.append(f"{len(published)} instance(s), expected {count}")
    if sorted(owners) != list(range(total)):
        problems.append(f"claimed shards {sorted(owners)}")
    held: dict[str, list[int]] = {member: [] for member in published}
    for shard, owner in sorted(owners.items()):
        if owner not in held:
            problems.append(f"shard {shard} claimed by {owner[:8]}, not a member")
            continue
        held[owner].append(shard)
    counts = [len(shards) for shards in held.values()]
    if counts and max(counts) - min(counts) > 1:
        problems.append(f"uneven loads {counts}")
    for member, shards in published.items():
        if list(shards) != held[member]:
            problems.append(f"{member[:8]} publishes {list(shards)} but holds {held[member]}")
    for worker in workers:
        mine = sorted(s for s, o in owners.items() if o == worker.host.instance.id)
        if list(worker.shards) != mine or (green and worker.health is not HealthStatus.GREEN):
            problems.append(
                f"{worker.host.instance.id[:8]} runs {list(worker.shards)} "
                f"({worker.health.name}), holds {mine}"
            )
    return problems


def wait_settled_by(problems: Callable[[], list[str]], timeout: float) -> None:
    """Wait until ``problems()`` (:func:`settle_problems` of a fresh read) finds none."""
    last: list[str] = []

    def settled() -> bool:
        nonlocal last
        last = problems()
        return not last

    try:
        wait_until(settled, timeout, interval=0.02)
    except AssertionError:
        raise AssertionError(f"cluster not settled within {timeout} s: {last}") from None


# -- observing ZooKeeper --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimNode:
    """A claim node as ZooKeeper holds it."""

    owner: str
    session: int
    token: int


@dataclass
class Sample:
    at: float
    claims: dict[int, ClaimNode]
    instances: dict[str, WorkerInstance] = field(default_factory=dict)


class Observer:
    """Reads a service's claims and instance nodes with a client of its own."""

    def __init__(self, client: KazooClient, service: str = SERVICE) -> None:
        self.client = client
        self.root = f"/{NAMESPACE}/{service}"

    def _children(self, path: str) -> list[str]:
        try:
            return list(self.client.get_children(path))
        except NoNodeError:
            return []

    def claims(self) -> dict[int, ClaimNode]:
        """``{shard: claim}`` for every claim node."""
        path = f"{self.root}/claims"
        children = [c for c in self._children(path) if c.isdigit()]
        requests = [(int(c), self.client.get_async(f"{path}/{c}")) for c in children]
        result: dict[int, ClaimNode] = {}
        for shard, request in requests:
            try:
                raw, stat = request.get(timeout=10)
            except NoNodeError:
                continue
            data = json.loads(raw)
            result[shard] = ClaimNode(str(data["owner"]), int(stat.ephemeralOwner), stat.czxid)
        return result

    def owners(self) -> dict[int, str]:
        """``{shard: owning instance id}``."""
        return {shard: claim.owner for shard, claim in self.claims().items()}

    def instances(self) -> dict[str, WorkerInstance]:
        """Live instances by id, in rank order."""
        path = f"{self.root}/instances"
        children = sorted(self._children(path), key=lambda c: int(c.rsplit("-", 1)[1]))
        requests = [self.client.get_async(f"{path}/{c}") for c in children]
        result: dict[str, WorkerInstance] = {}
        for request in requests:
            try:
                raw, _ = request.get(timeout=10)
            except NoNodeError:
                continue
            instance = WorkerInstance.from_json(raw)
            result[instance.id] = instance
        return result

    def marker(self, shard: int) -> dict[str, Any] | None:
        """The run marker of ``shard`` (``running/<shard>``), if any."""
        try:
            raw, _ = self.client.get(f"{self.root}/running/{shard}")
        except NoNodeError:
            return None
        data: dict[str, Any] = json.loads(raw)
        return data

    def config(self) -> dict[str, Any] | None:
        try:
            raw, _ = self.client.get(f"{self.root}/config")
        except NoNodeError:
            return None
        data: dict[str, Any] = json.loads(raw)
        return data

    def wait_settled(
        self,
        total: int,
        count: int,
        timeout: float = 15.0,
        workers: Sequence[Worker] = (),
    ) -> dict[int, str]:
        """Wait until the service is settled (:func:`settle_problems`); return its owners."""
        owners: dict[int, str] = {}

        def problems() -> list[str]:
            nonlocal owners
            owners = self.owners()
            published = {i: m.shards for i, m in self.instances().items()}
            return settle_problems(published, owners, total, count, workers)

        wait_settled_by(problems, timeout)
        return owners

    def sample(self) -> Sample:
        """Claims, and the members read just before and just after them (not atomic)."""
        at = time.monotonic()
        members = self.instances()
        claims = self.claims()
        members.update(self.instances())
        return Sample(at, claims, members)


class Sampler:
    """Samples the claims (and instances) on a thread until stopped."""

    def __init__(self, observer: Observer, interval: float = 0.005) -> None:
        self.observer = observer
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="test-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.observer.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# -- making workers -------------------------------------------------------------------------------


class Idle(Handler):
    """A handler that does nothing."""

    def do(self, ctx: Context) -> None:
        pass


class Cluster:
    """Makes cluster workers on this test's chroot; every one is cancelled at teardown."""

    def __init__(self, hosts: str, tracker: WorkerTracker) -> None:
        self.hosts = hosts
        self.tracker = tracker

    def discovery(self, **settings: Any) -> DiscoveryConfig:
        """The discovery settings of this cluster's workers (``settings`` override them)."""
        return DiscoveryConfig(**{"hosts": self.hosts, **settings})

    def config(
        self,
        session_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        **discovery: Any,
    ) -> WorkerConfig:
        """Settings of a worker of this cluster (``discovery``: more discovery settings)."""
        return WorkerConfig(
            discovery=self.discovery(
                session_timeout=session_timeout, connect_timeout=connect_timeout, **discovery
            ),
            shutdown_timeout=shutdown_timeout,
        )

    def make(
        self,
        handler: Any = Idle,
        *,
        total: int = 6,
        cron: str | None = "@every 200ms",
        service: str = SERVICE,
        params: str = "",
        session_timeout: float = 2.0,
        config: WorkerConfig | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> Worker:
        """A cluster worker (started unless ``start=False``)."""
        worker = self.tracker.make(
            handler,
            config=config or self.config(session_timeout=session_timeout),
            cron=cron,
            model=Model.CLUSTER,
            service_name=service,
            sharding_total_count=total,
            params=params,
            **kwargs,
        )
        if start:
            worker.run()
        return worker

    @staticmethod
    def stop(worker: Worker, timeout: float = 10.0) -> float:
        """Cancel ``worker`` and wait for it; return how long that took."""
        began = time.monotonic()
        worker.cancel()
        worker.wait(timeout)
        return time.monotonic() - began


@pytest.fixture
def cluster(zk_hosts: str) -> Iterator[Cluster]:
    tracker = WorkerTracker()
    try:
        yield Cluster(zk_hosts, tracker)
    finally:
        tracker.close()


@pytest.fixture
def private_cluster(zookeeper_private: ZooKeeperServer) -> Iterator[Cluster]:
    """Cluster workers on a server of this test's own (to stop, kill or freeze)."""
    tracker = WorkerTracker()
    try:
        yield Cluster(zookeeper_private.hosts, tracker)
    finally:
        tracker.close()


@pytest.fixture
def observer(zk_client: KazooClient) -> Observer:
    return Observer(zk_client)


def poll(predicate: Callable[[], object], timeout: float, what: str = "") -> float:
    """``wait_until`` that returns the seconds it took."""
    began = time.monotonic()
    wait_until(predicate, timeout, interval=0.005, what=what)
    return time.monotonic() - began


def owners_by(owners: Mapping[int, str]) -> dict[str, list[int]]:
    """``{instance id: sorted shards}`` from ``{shard: instance id}``."""
    result: dict[str, list[int]] = {}
    for shard, owner in sorted(owners.items()):
        result.setdefault(owner, []).append(shard)
    return result


# -- worker groups ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupRun:
    """One run of a group's worker, as its handler saw it (times: ``time.monotonic()``)."""

    worker: str
    instance: str
    shard: int
    fire: float
    start: float
    end: float
    ok: bool
    cancelled: bool = False


class Book:
    """Every run of the workers of some :class:`WorkerGroup` s (each group one instance)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[GroupRun] = []
        self._counts: dict[tuple[str, int], int] = {}

    def handler(
        self, fail_shard: int | None = None, duration: float = 0.02, every_other: bool = False
    ) -> type[Handler]:
        """A handler whose runs take ``duration`` s and go in the book; a run of ``fail_shard``
        fails (raises), or with ``every_other`` every other run of that worker's shard does
        (its downstream then skips those fire times)."""
        book = self

        class Recorded(Handler):
            def do(self, ctx: Context) -> None:
                start = time.monotonic()
                ctx.wait(duration)
                key = (ctx.worker_name, ctx.shard.index)
                with book.lock:
                    book._counts[key] = count = book._counts.get(key, 0) + 1
                    ok = ctx.shard.index != fail_shard or (every_other and count % 2 == 0)
                    book.runs.append(
                        GroupRun(
                            ctx.worker_name,
                            ctx.instance.id,
                            ctx.shard.index,
                            ctx.scheduled_time.timestamp(),
                            start,
                            time.monotonic(),
                            ok,
                            ctx.cancelled,
                        )
                    )
                if not ok:
                    raise RuntimeError(f"{ctx.worker_name} fails on shard {ctx.shard.index}")

        return Recorded

    def of(self, worker: str) -> list[GroupRun]:
        with self.lock:
            return [r for r in self.runs if r.worker == worker]


@pytest.fixture
def groups() -> Iterator[list[WorkerGroup]]:
    """Worker groups the test makes (and runs); every one cancelled and waited for after it."""
    made: list[WorkerGroup] = []
    yield made
    for group in made:
        group.cancel()
    for group in made:
        try:
            group.wait(20)
        except Exception as exc:  # noqa: BLE001 (teardown goes on with the other groups)
            print(f"group did not end cleanly: {exc!r}")
