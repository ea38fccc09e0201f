"""Real cluster-mode workers on each server backend, observed through :class:`ClusterAdmin`.

The worker-level tests of ``tests/cluster/`` observe ZooKeeper with a kazoo client of their own;
these helpers do the same on any backend, through the seam only:

- :class:`BackendCluster` makes cluster workers (``handle_signals=False``) on a
  :class:`~backends.conftest.BackendKit`'s server and namespace, and gives the discovery URL
  (with the namespace) for OS-process workers and the ``goworker-py`` command line.
- :class:`AdminObserver` reads what the server holds (members, owners, fencing tokens, run
  records) with a :class:`ClusterAdmin` of its own, never the workers' connections.
- :data:`WORKER` runs an instance as an OS process; :func:`read_ledger` reads the runs it wrote.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.conftest import SERVICE, Cluster, RunRecord, settle_problems, wait_settled_by
from helpers import WorkerTracker

from goworker_py import DiscoveryConfig, Worker
from goworker_py.cluster.admin import ClusterAdmin, ServiceStatus
from goworker_py.cluster.backend import RunRecord as BackendRunRecord
from goworker_py.errors import ClusterError

if TYPE_CHECKING:
    from .conftest import BackendKit

#: The scheme of each protocol's discovery URL.
_SCHEMES = {"zookeeper": "zookeeper", "etcdv3": "etcd", "redis": "redis"}
#: A cluster worker in an OS process of its own (``worker_process.py --help``).
WORKER = str(Path(__file__).with_name("worker_process.py"))


def owners_of(status: ServiceStatus) -> dict[int, str]:
    """``{shard: owning instance id}`` of the claimed shards."""
    return {s.shard: s.owner for s in status.shards if s.owner is not None}


def tokens_of(status: ServiceStatus) -> dict[int, int]:
    """``{shard: fencing token}`` of the claimed shards."""
    return {s.shard: s.token for s in status.shards if s.token is not None}


def read_ledger(path: Path) -> list[RunRecord]:
    """The runs :data:`WORKER` processes wrote to the ledger file ``path`` so far."""
    # The text after the last newline may be a line still being written: leave it for later.
    complete = path.read_text().rpartition("\n")[0]
    return [RunRecord.from_json(line) for line in complete.split("\n") if line]


def ran(records: Sequence[RunRecord], owners: Mapping[int, str], since: float) -> bool:
    """Every shard has a (finished) run of its owner that started after ``since``."""
    done = {(r.shard, r.instance) for r in records if r.start > since}
    return set(owners.items()) <= done


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

    def record(self, shard: int) -> BackendRunRecord | None:
        """The run record of ``shard`` as the server holds it."""
        return self.admin.backend.read_run(shard)

    def leases(self) -> dict[int, str]:
        """``{pid: lease id}`` of the live members."""
        return {m.instance.pid: m.lease for m in self.admin.backend.members()}

    def wait_settled(
        self,
        total: int,
        count: int,
        timeout: float = 15.0,
        workers: Sequence[Worker] = (),
        green: bool = False,
    ) -> ServiceStatus:
        """Wait until the service is settled (:func:`~cluster.conftest.settle_problems`: with
        ``workers`` (in-process) each running exactly the shards it holds, and with ``green``
        GREEN); return that status. A server that does not answer (yet) is not settled."""
        found: list[ServiceStatus] = []

        def problems() -> list[str]:
            try:
                status = self.status()
            except ClusterError as exc:  # no instance has started yet, or the server is down
                return [str(exc)]
            found[:] = [status]
            published = {m.instance.id: m.instance.shards for m in status.instances}
            return settle_problems(published, owners_of(status), total, count, workers, green)

        wait_settled_by(problems, timeout)
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

    def discovery(self, **settings: Any) -> DiscoveryConfig:
        """The kit's discovery settings (protocol, server, namespace); ``settings`` override."""
        return self.kit.config(**settings)

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
