"""Who runs what: a worker instance, its health, and what ``Handler.watch`` is told.

A :class:`WorkerInstance` describes one process's membership of a service: in cluster mode it
is the JSON stored in the instance's ephemeral node, in local mode a cluster of one.
"""

from __future__ import annotations

import enum
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from goworker_py.version import __version__


class HealthStatus(enum.IntEnum):
    """An instance's health (the seed's values: Green 0, Yellow 1, Red 2)."""

    #: Connected and registered: runs may start.
    GREEN = 0
    #: Connection to ZooKeeper suspended: no new run starts.
    YELLOW = 1
    #: Session lost or self-fenced: in-flight runs are cancelled, the instance re-registers.
    RED = 2


@dataclass(frozen=True)
class WorkerInstance:
    """One member of a service.

    ``shards`` are the shard indexes the instance owns; ``shard_index`` is the shard of the
    thread looking at it (``-1`` when the view is not about one shard), as in the seed.
    """

    id: str
    service: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    created_at: float = field(default_factory=time.time)
    version: str = __version__
    shard_index: int = -1
    shards: tuple[int, ...] = ()
    health: HealthStatus = HealthStatus.GREEN

    @classmethod
    def create(cls, service: str, shards: tuple[int, ...] = ()) -> WorkerInstance:
        """A new instance of ``service`` (owning ``shards``) with a fresh id."""
        return cls(id=uuid.uuid4().hex, service=service, shards=shards)

    def with_shard(self, shard_index: int) -> WorkerInstance:
        """This instance as seen from the thread of ``shard_index``."""
        return replace(self, shard_index=shard_index)

    def to_json(self) -> bytes:
        """Serialise for a ZooKeeper node."""
        data = asdict(self)
        data["shards"] = list(self.shards)
        data["health"] = int(self.health)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInstance:
        """Parse what :meth:`to_json` wrote; unknown keys are ignored (newer versions)."""
        data: dict[str, Any] = json.loads(raw)
        known = {name for name in cls.__dataclass_fields__}
        kwargs = {key: value for key, value in data.items() if key in known}
        kwargs["shards"] = tuple(kwargs.get("shards", ()))
        kwargs["health"] = HealthStatus(kwargs.get("health", 0))
        return cls(**kwargs)


@dataclass(frozen=True)
class WatchInfo:
    """What ``Handler.watch`` receives: the seed's ``WatchInfo``.

    ``current_instance.shard_index`` is the shard of the thread the call is made on, ``param``
    that shard's parameter and ``cluster_instances`` every live member of the service.
    """

    current_instance: WorkerInstance
    param: str
    cluster_instances: tuple[WorkerInstance, ...] = ()
