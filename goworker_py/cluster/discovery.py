"""The discovery registry (the seed's ``SetDiscovery`` / ``GetDiscovery``).

A discovery backend is what cluster mode talks to for membership, claims and run markers.
``"zookeeper"`` is built in; another backend registers a factory under its protocol name::

    set_discovery("myproto", lambda config, service: MyDiscovery(config, service))

and is chosen with ``DiscoveryConfig(protocol="myproto", ...)``. A backend implements the
:class:`WorkerDiscovery` protocol (``ZooKeeperDiscovery`` is the reference).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, cast

from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendMissing, DiscoveryError
from goworker_py.instance import WorkerInstance


class WorkerDiscovery(Protocol):
    """What cluster mode needs from a discovery backend."""

    protocol: str
    node: str | None
    config_dirty: bool
    control_dirty: bool
    on_change: Callable[[], None]
    on_state: Callable[[str], None]

    @property
    def negotiated_timeout(self) -> float:
        """The session (lease) timeout the server granted, in seconds."""

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` send time of the latest request the server answered."""

    def lease_valid_until(self) -> float:
        """``time.monotonic()`` instant before which the server certainly keeps our session;
        from completed replies only (self-fencing counts from it)."""

    def round_trip(self, timeout: float) -> None:
        """One request answered by the server within ``timeout`` s; raises otherwise."""

    @property
    def session_id(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def register(self, instance: WorkerInstance) -> str: ...

    def unregister(self) -> None: ...

    def node_exists(self) -> bool: ...

    def publish(self, instance: WorkerInstance) -> None: ...

    def members(self) -> list[Any]: ...

    def claim(self, shard: int, owner: str) -> Any: ...

    def release(self, claim: Any) -> None: ...

    def read_marker(self, shard: int) -> Any: ...

    def adopt_marker(self, shard: int, marker: Any) -> None: ...

    def begin_run(self, claim: Any, marker: Any) -> bool: ...

    def end_run(self, marker: Any) -> None: ...

    def read_service_config(self, watch: bool = True) -> dict[str, Any] | None: ...

    def write_service_config(self, settings: dict[str, Any], create_only: bool) -> bool: ...

    def read_control(self) -> dict[str, Any] | None: ...

    def watch_marker(self, service: str, shard: int, callback: Callable[[Any], bool]) -> None: ...


DiscoveryFactory = Callable[[DiscoveryConfig, str], WorkerDiscovery]

_lock = threading.Lock()
_factories: dict[str, DiscoveryFactory] = {}


def set_discovery(protocol: str, factory: DiscoveryFactory) -> None:
    """Register ``factory(config, service_name)`` for ``DiscoveryConfig(protocol=protocol)``."""
    if not protocol or not isinstance(protocol, str):
        raise DiscoveryError(f"discovery protocol must be a non-empty string, got {protocol!r}")
    if not callable(factory):
        raise DiscoveryError(f"discovery factory for {protocol!r} must be callable")
    with _lock:
        _factories[protocol] = factory


def get_discovery(config: DiscoveryConfig, service: str) -> WorkerDiscovery:
    """Build the discovery backend ``config.protocol`` names; unknown protocols are an error."""
    with _lock:
        factory = _factories.get(config.protocol)
        known = ", ".join(sorted(_factories))
    if factory is None:
        raise DiscoveryError(
            f"unknown discovery protocol {config.protocol!r}: registered protocols are {known} "
            "(register another with set_discovery)"
        )
    return factory(config, service)


def _zookeeper(config: DiscoveryConfig, service: str) -> WorkerDiscovery:
    from goworker_py.cluster.zookeeper import ZooKeeperDiscovery

    return ZooKeeperDiscovery(config, service)


def _redis(config: DiscoveryConfig, service: str) -> WorkerDiscovery:
    try:
        from goworker_py.cluster.backends.redis import RedisBackend
    except ModuleNotFoundError as exc:
        if exc.name != "redis" and not str(exc.name).startswith("redis."):
            raise
        raise BackendMissing(
            "discovery protocol 'redis' needs redis-py: pip install 'goworker-py[redis]'"
        ) from exc
    return cast(WorkerDiscovery, RedisBackend(config, service))


set_discovery("zookeeper", _zookeeper)
set_discovery("redis", _redis)
