"""Cluster mode: instances of a service share its shards through ZooKeeper.

- :mod:`~goworker_py.cluster.sharding` — who should own which shard (pluggable strategies).
- :mod:`~goworker_py.cluster.zookeeper` — the nodes in ZooKeeper: members, claims, run markers.
- :mod:`~goworker_py.cluster.membership` — keeping this instance's shards right as the cluster
  changes, its health, and self-fencing.
- :mod:`~goworker_py.cluster.discovery` — the registry of discovery backends.
"""

from goworker_py.cluster.discovery import WorkerDiscovery, get_discovery, set_discovery
from goworker_py.cluster.sharding import AverageStrategy, ShardingStrategy, StickyStrategy

__all__ = [
    "AverageStrategy",
    "ShardingStrategy",
    "StickyStrategy",
    "WorkerDiscovery",
    "get_discovery",
    "set_discovery",
]
