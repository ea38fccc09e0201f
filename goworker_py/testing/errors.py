"""The errors raised by :mod:`goworker_py.testing`, all under :class:`ZooKeeperError`."""

from __future__ import annotations

from goworker_py.errors import GoWorkerError


class ZooKeeperError(GoWorkerError):
    """Base of the errors raised by :mod:`goworker_py.testing`."""


class ZooKeeperNotFound(ZooKeeperError):
    """No ZooKeeper (or no Java) to start; the message says what to install."""


class ZooKeeperStartError(ZooKeeperError):
    """A server process was started but did not come up; the message has its log tail."""


class FaultInjectionUnsupported(ZooKeeperError):
    """A fault helper needs the server process, but the server is external (``ZK_HOSTS``)."""


class EtcdNotFound(ZooKeeperError):
    """No etcd binary to start; the message says what to install."""


class EtcdStartError(ZooKeeperError):
    """An etcd process was started but did not come up; the message has its log tail."""


class RedisNotFound(ZooKeeperError):
    """No ``redis-server`` to start; the message says what to install."""


class RedisStartError(ZooKeeperError):
    """A ``redis-server`` process was started but did not come up; the message has its log."""
