"""Test handlers and clusters: a :class:`~goworker_py.Context` for a handler's unit tests
(:func:`make_context`), and real ZooKeeper (and Redis) servers to start, break and expire
sessions on.

For pytest, add ``pytest_plugins = ["goworker_py.testing.pytest_plugin"]`` to a ``conftest.py``
and use the fixtures ``zookeeper``, ``zk_chroot``, ``zk_hosts``, ``zk_client``,
``zookeeper_private`` and ``zookeeper_ensemble``. Outside pytest::

    with ZooKeeperServer() as server:       # a real server on a free loopback port
        client = KazooClient(server.hosts)
        ...
        server.pause()                      # SIGSTOP: a partition, as clients see it
        expire_session(client)              # a real, server-side session expiry

:class:`EtcdServer` and :class:`EtcdCluster` do the same for etcd (fixtures ``etcd_server``,
``etcd_namespace``, ``etcd_private``, ``etcd_cluster``).

``python -m goworker_py.testing ensure-zookeeper`` (and ``ensure-etcd``) checks (and, as root on
Debian, installs) what these need.
"""

from __future__ import annotations

from goworker_py.testing.clients import observer_client
from goworker_py.testing.context import make_context
from goworker_py.testing.ensemble import ZooKeeperEnsemble
from goworker_py.testing.errors import (
    EtcdNotFound,
    EtcdStartError,
    FaultInjectionUnsupported,
    RedisNotFound,
    RedisStartError,
    ZooKeeperError,
    ZooKeeperNotFound,
    ZooKeeperStartError,
)
from goworker_py.testing.etcd import ETCD_INSTALL_HINT, EtcdCluster, EtcdServer, find_etcd
from goworker_py.testing.external import ExternalZooKeeper
from goworker_py.testing.install import (
    INSTALL_HINT,
    REDIS_INSTALL_HINT,
    ZooKeeperInstall,
    find_redis_server,
    find_zookeeper,
)
from goworker_py.testing.network import four_letter_word, free_ports, parse_mntr, with_chroot
from goworker_py.testing.redis import RedisServer
from goworker_py.testing.sessions import expire_session
from goworker_py.testing.zookeeper import ZooKeeperServer

__all__ = [
    # Handlers
    "make_context",
    # Servers
    "EtcdCluster",
    "EtcdServer",
    "ExternalZooKeeper",
    "RedisServer",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    # Faults
    "expire_session",
    "observer_client",
    # Finding ZooKeeper
    "INSTALL_HINT",
    "REDIS_INSTALL_HINT",
    "ZooKeeperInstall",
    "find_redis_server",
    "find_zookeeper",
    "ETCD_INSTALL_HINT",
    "find_etcd",
    # Helpers
    "four_letter_word",
    "free_ports",
    "parse_mntr",
    "with_chroot",
    # Errors
    "EtcdNotFound",
    "EtcdStartError",
    "FaultInjectionUnsupported",
    "RedisNotFound",
    "RedisStartError",
    "ZooKeeperError",
    "ZooKeeperNotFound",
    "ZooKeeperStartError",
]
