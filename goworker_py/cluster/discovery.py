"""The discovery registry (the seed's ``SetDiscovery`` / ``GetDiscovery``).

A discovery backend is what cluster mode talks to for membership, claims and run records: a
:class:`~goworker_py.cluster.backend.CoordinationBackend`. Built in, with the seed's names:
``"zookeeper"`` (the default), ``"etcdv3"`` (alias ``"etcd"``; extra ``goworker-py[etcd]``),
``"redis"`` (extra ``goworker-py[redis]``) and ``"memory"`` (in-process). Another backend
registers a factory under its protocol name::

    set_discovery("myproto", lambda config, service: MyBackend(config, service))

and is chosen with ``DiscoveryConfig(protocol="myproto", ...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from goworker_py.cluster.backend import CoordinationBackend
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendMissing, DiscoveryError

DiscoveryFactory = Callable[[DiscoveryConfig, str], CoordinationBackend]

_lock = threading.Lock()
_factories: dict[str, DiscoveryFactory] = {}
#: Other names of built-in protocols.
ALIASES = {"etcd": "etcdv3"}


def set_discovery(protocol: str, factory: DiscoveryFactory) -> None:
    """Register ``factory(config, service_name)`` for ``DiscoveryConfig(protocol=protocol)``."""
    if not protocol or not isinstance(protocol, str):
        raise DiscoveryError(f"discovery protocol must be a non-empty string, got {protocol!r}")
    if not callable(factory):
        raise DiscoveryError(f"discovery factory for {protocol!r} must be callable")
    with _lock:
        _factories[protocol] = factory


def get_discovery(config: DiscoveryConfig, service: str) -> CoordinationBackend:
    """Build the backend ``config.protocol`` names; unknown protocols are an error."""
    protocol = ALIASES.get(config.protocol, config.protocol)
    with _lock:
        factory = _factories.get(protocol)
        known = ", ".join(sorted([*_factories, *ALIASES]))
    if factory is None:
        raise DiscoveryError(
            f"unknown discovery protocol {config.protocol!r}: registered protocols are {known} "
            "(register another with set_discovery)"
        )
    return factory(config, service)


def missing_extra(protocol: str, extra: str, exc: ImportError) -> BackendMissing:
    """The error of a backend whose client library is not installed."""
    return BackendMissing(
        f"discovery protocol {protocol!r} needs its client library ({exc.name or exc}): "
        f"pip install 'goworker-py[{extra}]'"
    )


def _zookeeper(config: DiscoveryConfig, service: str) -> CoordinationBackend:
    from goworker_py.cluster.backends.zookeeper import ZooKeeperBackend

    return ZooKeeperBackend(config, service)


def _memory(config: DiscoveryConfig, service: str) -> CoordinationBackend:
    from goworker_py.cluster.backends.memory import MemoryBackend

    return MemoryBackend(config, service)


def _etcd(config: DiscoveryConfig, service: str) -> CoordinationBackend:
    try:
        from goworker_py.cluster.backends.etcd import EtcdBackend
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] not in ("etcd3gw", "requests", "futurist"):
            raise
        raise missing_extra("etcdv3", "etcd", exc) from exc
    return EtcdBackend(config, service)


def _redis(config: DiscoveryConfig, service: str) -> CoordinationBackend:
    try:
        from goworker_py.cluster.backends.redis import RedisBackend
    except ModuleNotFoundError as exc:
        if exc.name != "redis" and not str(exc.name).startswith("redis."):
            raise
        raise missing_extra("redis", "redis", exc) from exc
    return RedisBackend(config, service)


set_discovery("zookeeper", _zookeeper)
set_discovery("etcdv3", _etcd)
set_discovery("redis", _redis)
set_discovery("memory", _memory)
