"""The ZooKeeper backend (kazoo): :class:`ZooKeeperBackend`; the layout is described in
:mod:`goworker_py.cluster.backends.zookeeper.backend`."""

from goworker_py.cluster.backends.zookeeper.backend import ZooKeeperBackend
from goworker_py.cluster.backends.zookeeper.client import kazoo_client, service_root, start_client

__all__ = ["ZooKeeperBackend", "kazoo_client", "service_root", "start_client"]
