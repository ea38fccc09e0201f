"""Real cluster-mode workers on each server backend, observed through :class:`ClusterAdmin`.

The worker-level tests of ``tests/cluster/`` observe ZooKeeper with a kazoo client of their own;
these helpers do the same on any backend, through the seam only:

- :class:`BackendCluster` makes cluster workers (``handle_signals=False``) on a
  :class:`~backends.conftest.BackendKit`'s server and namespace, and gives the discovery URL
  (with the namespace) for OS-process workers and the ``goworker-py`` command line.
- :class:`AdminObserver` reads what the server holds (members, owners, fencing tokens, run
  records) with a :class:`ClusterAdmin` of its own, never the workers' connections.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cluster.conftest import SERVICE, Cluster
from helpers import WorkerTracker, wait_until

from goworker_py import DiscoveryConfig, Worker, WorkerConfig
from goworker_py.cluster.admin import ClusterAdmin, ServiceStatus
from goworker_py.cluster.backend import RunRecord
from goworker_py.errors import ClusterError

if TYPE_CHECKING:
    from .conftest import BackendKit

#: The scheme of each protocol's discovery URL.
_SCHEMES = {"zookeeper": "zookeeper", "etcdv3": "etcd", "redis": "redis"}


def owners_of(status: ServiceStatus) -> dict[int, str]:
    """``{shard: owning instance id}`` of the claimed shards."""
    return {s.shard: s.owner for s in status.shards if s.owner is not None}


def tokens_of(status: ServiceStatus) -> dict[int, int]:
    """``{shard: fencing token}`` of the claimed shards."""
    return {s.shard: s.token for s in status.shards if s.token is not None}


class AdminObserver:
    """Reads one service through a :class:`ClusterAdmin` (opened once the service exists)."""

    def __init__(self, config: DiscoveryConfig, service: str = SERVICE) -> None:
        self.config = config
        self.service = service
        self._admin: ClusterAdmin | None = None

    @property
    def admin(self) -> ClusterAdmin:
        """The connected admin; raises :class:`ClusterError` while the service does not exist."""
        if self._admin is None:
            admin = ClusterAdmin(self.config, self.service)
            admin.__enter__()
            self._admin = admin
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def status(self) -> ServiceStatus:
        return self.admin.status()

    def owners(self) -> dict[int, str]:
        return owners_of(self.status())

    def record(self, shard: int) -> RunRecord | None:
        """The run record of ``shard`` as the server holds it."""
        return self.admin.backend.read_run(shard)

    def leases(self) -> dict[int, str]:
        """``{pid: lease id}`` of the live members."""
        return {m.instance.pid: m.lease for m in self.admin.backend.members()}

    @staticmethod
    def problems(status: ServiceStatus, total: int, count: int) -> list[str]:
        """What keeps the cluster from being settled: [] once every shard is claimed by one
        of ``count`` members, evenly, and each member publishes exactly the shards it holds."""
        problems: list[str] = []
        members = {m.instance.id: m.instance for m in status.instances}
        if len(members) != count:
            problems.append(f"{len(members)} instance(s), expected {count}")
        owners = owners_of(status)
        if sorted(owners) != list(range(total)):
            problems.append(f"claimed shards {sorted(owners)}")
        held: dict[str, list[int]] = {i: [] for i in members}
        for shard, owner in sorted(owners.items()):
            if owner not in held:
                problems.append(f"shard {shard} claimed by {owner[:8]}, not a member")
                continue
            held[owner].append(shard)
        if held:
            counts = [len(s) for s in held.values()]
            if max(counts) - min(counts) > 1:
                problems.append(f"uneven loads {counts}")
        for instance_id, instance in members.items():
            if list(instance.shards) != held.get(instance_id, []):
                problems.append(
                    f"{instance_id[:8]} publishes {list(instance.shards)} "
                    f"but holds {held.get(instance_id)}"
                )
        return problems

    def wait_settled(
        self,
        total: int,
        count: int,
        timeout: float = 15.0,
        workers: Sequence[Worker] = (),
    ) -> ServiceStatus:
        """Wait until the service is settled (:meth:`problems`) and each of ``workers``
        (in-process) runs exactly the shards it holds; return that status."""
        last: list[str] = []
        found: list[ServiceStatus] = []

        def settled() -> bool:
            nonlocal last
            try:
                status = self.status()
            except ClusterError as exc:  # no instance has started yet
                last = [str(exc)]
                return False
            last = self.problems(status, total, count)
            if not last:
                owners = owners_of(status)
                for worker in workers:
                    mine = sorted(s for s, o in owners.items() if o == worker.host.instance.id)
                    if list(worker.shards) != mine:
                        last = [f"{worker.host.instance.id[:8]} runs {worker.shards}, holds {mine}"]
            if not last:
                found.append(status)
            return not last

        try:
            wait_until(settled, timeout, interval=0.02)
        except AssertionError:
            raise AssertionError(f"cluster not settled within {timeout} s: {last}") from None
        return found[-1]


class BackendCluster(Cluster):
    """:class:`~cluster.conftest.Cluster` on a backend kit's server and namespace."""

    def __init__(self, kit: BackendKit, tracker: WorkerTracker) -> None:
        super().__init__(kit.hosts, tracker)
        self.kit = kit
        self.observers: list[AdminObserver] = []

    @property
    def name(self) -> str:
        return self.kit.name

    def discovery(self, **overrides: Any) -> DiscoveryConfig:
        return self.kit.config(**overrides)

    def config(
        self,
        session_timeout: float = 2.0,
        connect_timeout: float = 5.0,
        shutdown_timeout: float = 5.0,
        hosts: str | None = None,
        **discovery: Any,
    ) -> WorkerConfig:
        assert hosts is None, "a backend cluster's hosts are its kit's"
        return WorkerConfig(
            discovery=self.discovery(
                session_timeout=session_timeout, connect_timeout=connect_timeout, **discovery
            ),
            shutdown_timeout=shutdown_timeout,
        )

    @property
    def url(self) -> str:
        """The discovery URL of the kit's server (the namespace goes apart: ``cli_args``)."""
        scheme = _SCHEMES[self.kit.protocol]
        database = "/0" if scheme == "redis" else ""
        return f"{scheme}://{self.kit.hosts}{database}"

    def cli_args(self, service: str = SERVICE) -> list[str]:
        """``--discovery URL --namespace NS --service S`` for ``goworker-py``."""
        return ["--discovery", self.url, "--namespace", self.kit.namespace, "--service", service]

    def observer(self, service: str = SERVICE) -> AdminObserver:
        """An observer of ``service`` (closed after the test)."""
        observer = AdminObserver(self.discovery(connect_timeout=5.0), service)
        self.observers.append(observer)
        return observer

    def close(self) -> None:
        for observer in self.observers:
            observer.close()


def since(moment: float) -> float:
    """Seconds since ``moment`` (``time.monotonic()``)."""
    return time.monotonic() - moment
