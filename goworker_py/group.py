"""Many workers in one process: :class:`WorkerGroup`, with dependencies between them.

::

    group = WorkerGroup()
    group.add(Worker(Extract, cron="0 * * * *", name="extract", sharding_total_count=4))
    group.add(Worker(Load, name="load", sharding_total_count=4), depends_on=["extract"])
    group.run()
    ...
    group.add(Worker(Report, cron="*/5 * * * *", name="report"))   # while running
    group.remove("report")
    group.wait()

**Dependencies.** A worker added with ``depends_on`` has no schedule of its own: each of its
runs serves a fire time of its upstreams and starts once every upstream's run for that fire
time succeeded — shard by shard when upstream and downstream have the same number of shards
(shard ``i`` waits for shard ``i``), else after every shard of the upstream. A failed upstream
run holds its downstream runs of that fire time back; the next fire time starts afresh. Upstreams
may be added after their downstreams; a cycle is rejected at :meth:`WorkerGroup.add`. When all
upstreams have ended (run-once workers), the downstream finishes what it was given and ends too.

In cluster mode (upstream and downstream both cluster-mode workers, every instance running the
same group) the upstream shard and the downstream shard may be owned by different instances:
the downstream shard's owner follows its upstream shards' run markers in ZooKeeper
(:mod:`goworker_py.cluster.upstream`).

**Signals.** The group handles SIGINT/SIGTERM for all its workers (a first signal stops them
gracefully, a second fast); the workers' own ``handle_signals`` is turned off.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

from goworker_py.errors import ConfigError, GoWorkerError, RunFailed
from goworker_py.feed import UpstreamFeed, required_upstream_shards
from goworker_py.signals import REGISTRY
from goworker_py.worker import ExitReason, Model, Worker, WorkerState

#: Fire times a downstream shard remembers while waiting for the rest of its upstreams.
MAX_PENDING_FIRES = 256


class _Node:
    """A worker of the group and its place in the dependency graph."""

    def __init__(self, worker: Worker, upstreams: tuple[str, ...]) -> None:
        self.worker = worker
        self.upstreams = upstreams
        # A local downstream is fed here, in the process; a cluster downstream from ZooKeeper.
        local = Model(worker.model) is Model.LOCAL
        self.feed = UpstreamFeed(worker.sharding_total_count) if upstreams and local else None
        #: ``{downstream shard: {fire timestamp: {(upstream, upstream shard) done}}}``
        self.pending: dict[int, dict[float, set[tuple[str, int]]]] = {}


class WorkerGroup:
    """Runs many workers in one process; add and remove them while running.

    :param handle_signals: install SIGINT/SIGTERM handlers for the group when ``run()`` is
        called on the main thread.
    """

    def __init__(self, *, handle_signals: bool = True) -> None:
        self.handle_signals = handle_signals
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._running = False
        self._stopping = False
        self._forced = False
        self._signals_installed = False
        self._anchor: datetime | None = None
        #: Names of the workers some local downstream waits for (see _index): every run of
        #: every worker ends in _upstream_succeeded, which most can leave at once.
        self._feeding: frozenset[str] = frozenset()

    # -- membership -----------------------------------------------------------------------------

    @property
    def workers(self) -> dict[str, Worker]:
        """The group's workers by name."""
        with self._lock:
            return {name: node.worker for name, node in self._nodes.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __getitem__(self, name: str) -> Worker:
        return self._nodes[name].worker

    def add(self, worker: Worker, *, depends_on: Sequence[str] = ()) -> Worker:
        """Add ``worker`` (started at once if the group runs); return it.

        ``depends_on`` names upstream workers (by ``worker.name``), which may be added later.
        Raises :class:`ConfigError` for a duplicate name, a cycle, a worker that was already
        started, or a downstream with a schedule of its own.
        """
        if not isinstance(worker, Worker):
            raise ConfigError(f"WorkerGroup.add() takes a Worker, got {worker!r}")
        if isinstance(depends_on, str):
            depends_on = [depends_on]
        upstreams = tuple(dict.fromkeys(depends_on))
        if not all(isinstance(name, str) and name for name in upstreams):
            raise ConfigError(f"depends_on must be worker names, got {list(depends_on)!r}")
        name = worker.name
        with self._lock:
            if self._stopping:
                raise GoWorkerError("the group is stopping: no worker can be added")
            if name in self._nodes:
                raise ConfigError(
                    f"the group already has a worker named {name!r}: give each a unique name="
                )
            if worker.state is not WorkerState.INITIALIZED:
                raise ConfigError(f"worker {name!r} was already started: add it before run()")
            if upstreams:
                self._check_downstream(worker, upstreams)
            self._check_cycle(name, upstreams)
            for other_name, other in self._nodes.items():
                if name in other.upstreams:
                    self._check_upstream_fits(other.worker, worker)
                if other_name in upstreams:
                    self._check_upstream_fits(worker, other.worker)
            worker.handle_signals = False
            node = _Node(worker, upstreams)
            worker._feed = node.feed
            worker._run_listeners.append(functools.partial(self._upstream_succeeded, name))
            worker._end_listeners.append(functools.partial(self._worker_ended, name))
            self._nodes[name] = node
            self._index()
            start = self._running
            if start:
                try:
                    self._prepare_start(node)
                except BaseException:
                    del self._nodes[name]
                    self._index()
                    raise
                worker._anchor = self._anchor
        if start:
            # Outside the lock: a cluster worker's start waits for ZooKeeper, and the other
            # workers' shard threads take the lock after each run.
            try:
                worker.run()
            except BaseException:
                with self._lock:
                    self._nodes.pop(name, None)  # not started: not part of the group
                    self._index()
                raise
        return worker

    def remove(self, name: str, timeout: float | None = None) -> ExitReason:
        """Stop the worker ``name`` gracefully, wait for it and drop it from the group.

        Raises :class:`ConfigError` if another worker depends on it (remove that one first),
        ``KeyError`` for an unknown name, and ``TimeoutError`` if it does not end in time.
        """
        with self._lock:
            if name not in self._nodes:
                raise KeyError(f"the group has no worker named {name!r}")
            dependants = sorted(n for n, node in self._nodes.items() if name in node.upstreams)
            if dependants:
                raise ConfigError(
                    f"cannot remove {name!r}: {', '.join(map(repr, dependants))} depend(s) on "
                    "it; remove those first"
                )
            worker = self._nodes[name].worker
        worker.cancel()
        try:
            reason = (
                worker.wait(timeout)
                if worker.state is not WorkerState.INITIALIZED
                else (ExitReason.CANCELLED)
            )
        except RunFailed:
            reason = ExitReason.COMPLETED
        with self._lock:
            self._nodes.pop(name, None)
            self._index()
        return reason

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self) -> None:
        """Start every worker (each validated first: nothing starts if one is invalid)."""
        with self._lock:
            if self._running or self._stopping:
                raise GoWorkerError("the group was already started")
            missing = sorted(
                {up for node in self._nodes.values() for up in node.upstreams} - set(self._nodes)
            )
            if missing:
                raise ConfigError(
                    f"depends_on names worker(s) not in the group: {', '.join(map(repr, missing))}"
                )
            for node in self._nodes.values():
                node.worker.validate()
                self._prepare_start(node)
            if self.handle_signals:
                self._signals_installed = REGISTRY.register(self)
            self._running = True
            # One anchor: every "@every" worker of the group fires at the same instants.
            anchor = self._anchor = datetime.now(timezone.utc)
            workers = [node.worker for node in self._nodes.values()]
            for worker in workers:
                worker._anchor = anchor
        # Outside the lock (see add()).
        started: list[Worker] = []
        try:
            for worker in workers:
                worker.run()
                started.append(worker)
        except BaseException:
            # One could not start (ZooKeeper unreachable, ...): stop the others, so that a
            # failed run() leaves nothing running behind.
            for worker in started:
                worker.cancel()
            for worker in started:
                with contextlib.suppress(Exception):
                    worker.wait(60)
            with self._lock:
                self._running, self._stopping = False, True
            if self._signals_installed:
                REGISTRY.unregister(self)
                self._signals_installed = False
            raise

    def wait(self, timeout: float | None = None) -> dict[str, ExitReason]:
        """Block until every worker ended; return how each ended, by name.

        Raises :class:`RunFailed` (the first one) when a run-once worker's run gave up, and
        ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        results: dict[str, ExitReason] = {}
        failure: RunFailed | None = None
        while True:
            with self._lock:
                pending = [(n, node.worker) for n, node in self._nodes.items() if n not in results]
            if not pending:
                break
            for name, worker in pending:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
                if worker.state is WorkerState.INITIALIZED:
                    if not self._running:
                        raise GoWorkerError("the group was not started: call run() first")
                    results[name] = ExitReason.CANCELLED  # never started (run() failed)
                    continue
                try:
                    results[name] = worker.wait(remaining)
                except RunFailed as exc:
                    results[name] = ExitReason.COMPLETED
                    failure = failure or exc
        if self._signals_installed:
            REGISTRY.unregister(self)
            self._signals_installed = False
        if failure is not None:
            raise failure
        return results

    def cancel(self) -> None:
        """Stop every worker gracefully (idempotent, from any thread)."""
        with self._lock:
            self._stopping = True
            workers = [node.worker for node in self._nodes.values()]
        for worker in workers:
            worker.cancel()

    def on_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM: a first stops every worker gracefully, a second fast."""
        with self._lock:
            self._stopping = True
            workers = [node.worker for node in self._nodes.values()]
        for worker in workers:
            worker.on_signal(signum)

    def __repr__(self) -> str:
        return f"<WorkerGroup {sorted(self._nodes)}>"

    # -- dependencies ---------------------------------------------------------------------------

    @staticmethod
    def _check_downstream(worker: Worker, upstreams: tuple[str, ...]) -> None:
        if worker.name in upstreams:
            raise ConfigError(f"worker {worker.name!r} cannot depend on itself")
        if worker.cron is not None:
            raise ConfigError(
                f"worker {worker.name!r} has depends_on and a schedule ({worker.cron!r}): a "
                "downstream runs when its upstreams' runs succeed; give it no cron"
            )

    @staticmethod
    def _check_upstream_fits(downstream: Worker, upstream: Worker) -> None:
        if Model(upstream.model) is not Model(downstream.model):
            raise ConfigError(
                f"worker {downstream.name!r} ({Model(downstream.model).name.lower()} mode) "
                f"depends on {upstream.name!r} ({Model(upstream.model).name.lower()} mode): "
                "both must be local-mode workers or both cluster-mode workers"
            )

    def _prepare_start(self, node: _Node) -> None:
        """Before a worker starts: a cluster downstream learns its upstream services."""
        worker = node.worker
        if not node.upstreams or Model(worker.model) is not Model.CLUSTER:
            return
        missing = [name for name in node.upstreams if name not in self._nodes]
        if missing:
            raise ConfigError(
                f"worker {worker.name!r} depends on {', '.join(map(repr, missing))}, not in "
                "the group: add the upstreams of a cluster-mode worker first"
            )
        worker._cluster_upstreams = tuple(
            (
                self._nodes[name].worker.service_name or self._nodes[name].worker.name,
                self._nodes[name].worker.sharding_total_count,
            )
            for name in node.upstreams
        )

    def _check_cycle(self, name: str, upstreams: Iterable[str]) -> None:
        graph = {n: node.upstreams for n, node in self._nodes.items()}
        graph[name] = tuple(upstreams)
        path: list[str] = []
        visiting: set[str] = set()

        def visit(current: str) -> None:
            if current in visiting:
                cycle = [*path[path.index(current) :], current]
                raise ConfigError(f"depends_on would make a cycle: {' -> '.join(cycle)}")
            if current not in graph:
                return
            visiting.add(current)
            path.append(current)
            for upstream in graph[current]:
                visit(upstream)
            path.pop()
            visiting.discard(current)

        visit(name)

    def _index(self) -> None:
        """Under the lock, after ``_nodes`` changed: which workers feed a local downstream."""
        self._feeding = frozenset(
            name
            for node in self._nodes.values()
            if node.feed is not None
            for name in node.upstreams
        )

    def _upstream_succeeded(self, upstream: str, shard: int, fire: datetime) -> None:
        """A run of ``upstream`` succeeded: release the downstream runs it completes."""
        if upstream not in self._feeding:
            return  # no local downstream: the common case, kept off the lock
        ready: list[tuple[UpstreamFeed, int]] = []
        with self._lock:
            up_node = self._nodes.get(upstream)
            if up_node is None:
                return
            up_total = up_node.worker.sharding_total_count
            key = fire.timestamp()
            for node in self._nodes.values():
                if upstream not in node.upstreams or node.feed is None:
                    continue
                total = node.worker.sharding_total_count
                targets = [shard] if total == up_total else list(range(total))
                for target in targets:
                    fires = node.pending.setdefault(target, {})
                    done = fires.setdefault(key, set())
                    done.add((upstream, shard))
                    if done >= self._required(node, target):
                        del fires[key]
                        ready.append((node.feed, target))
                    while len(fires) > MAX_PENDING_FIRES:
                        del fires[min(fires)]
        for feed, target in ready:
            feed.push(target, fire)

    def _required(self, node: _Node, shard: int) -> set[tuple[str, int]]:
        """The (upstream, shard) runs downstream ``shard`` waits for, for one fire time."""
        if any(name not in self._nodes for name in node.upstreams):
            return {("", -1)}  # an upstream not added yet: never complete
        upstreams = tuple(
            (name, self._nodes[name].worker.sharding_total_count) for name in node.upstreams
        )
        return set(required_upstream_shards(upstreams, node.worker.sharding_total_count, shard))

    def _worker_ended(self, name: str) -> None:
        """A worker ended: downstreams whose upstreams all ended get no more fire times."""
        with self._lock:
            for node in self._nodes.values():
                if name not in node.upstreams or node.feed is None:
                    continue
                if all(
                    up in self._nodes and self._nodes[up].worker.state is WorkerState.SHUTDOWN
                    for up in node.upstreams
                ):
                    node.feed.close()
