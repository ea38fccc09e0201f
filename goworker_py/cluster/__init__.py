"""Cluster mode: instances of a service share its shards through a coordination backend.

- :mod:`~goworker_py.cluster.backend` — the seam: what cluster mode asks of a backend, in
  backend-neutral records, events, errors and guarantees.
- :mod:`~goworker_py.cluster.backends` — the backends: ZooKeeper, etcd v3, Redis, memory.
- :mod:`~goworker_py.cluster.discovery` — the registry of backends by protocol name.
- :mod:`~goworker_py.cluster.sharding` — who should own which shard (pluggable strategies).
- :mod:`~goworker_py.cluster.membership` — keeping this instance's shards right as the cluster
  changes, its health, and self-fencing (with :mod:`~goworker_py.cluster.fence`), re-balancing
  (:mod:`~goworker_py.cluster.rebalance`) and each shard's run records
  (:mod:`~goworker_py.cluster.runs`).
- :mod:`~goworker_py.cluster.service` — the service's shared settings and control state.
- :mod:`~goworker_py.cluster.upstream` — WorkerGroup dependencies across instances.
- :mod:`~goworker_py.cluster.admin` — a service seen and steered from outside.
"""

from goworker_py.cluster.backend import CoordinationBackend
from goworker_py.cluster.discovery import get_discovery, set_discovery
from goworker_py.cluster.sharding import AverageStrategy, ShardingStrategy, StickyStrategy

__all__ = [
    "AverageStrategy",
    "CoordinationBackend",
    "ShardingStrategy",
    "StickyStrategy",
    "get_discovery",
    "set_discovery",
]
