"""A worker's lifecycle in names: where its shards come from (:class:`Model`), the state it is
in (:class:`WorkerState`) and how it ended (:class:`ExitReason`)."""

from __future__ import annotations

import enum


class Model(enum.IntEnum):
    """Where a worker's shards come from (the seed's ``WorkerModel``)."""

    #: One process owns every shard; no ZooKeeper.
    LOCAL = 1
    #: Instances of a service share its shards through ZooKeeper.
    CLUSTER = 2


class WorkerState(enum.IntEnum):
    """A worker's lifecycle state (the seed's four)."""

    INITIALIZED = 0
    PENDING = 1
    RUNNING = 2
    SHUTDOWN = 3


class ExitReason(enum.Enum):
    """How a worker ended, as returned by :meth:`Worker.wait`."""

    #: A run-once worker's runs finished (successfully: a failure raises ``RunFailed``).
    COMPLETED = "completed"
    #: ``cancel()`` was called.
    CANCELLED = "cancelled"
    #: SIGINT or SIGTERM arrived.
    SIGNALLED = "signalled"
    #: The worker's ``timeout`` elapsed (the seed's context deadline).
    TIMED_OUT = "timed_out"
