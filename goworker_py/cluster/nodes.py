"""What cluster mode keeps in ZooKeeper, as values: members, claims, run markers; and how to
reach it (a configured kazoo client, a service's root path). The layout is described in
:mod:`goworker_py.cluster.zookeeper`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.security import make_digest_acl

from goworker_py.config import DiscoveryConfig
from goworker_py.errors import ZooKeeperUnavailable
from goworker_py.instance import WorkerInstance


@dataclass(frozen=True)
class Member:
    """A live instance as read from ZooKeeper: its node, rank sequence and data."""

    node: str
    sequence: int
    instance: WorkerInstance


@dataclass(frozen=True)
class Claim:
    """A shard claim this instance holds.

    ``member`` is the instance node of the session that made the claim. A claim node is never
    changed, so its version (0) cannot tell it from a later owner's claim of the same shard;
    the member node, ephemeral and uniquely named per session, can.
    """

    shard: int
    token: int
    version: int
    member: str = ""


#: Run marker states: a run in flight, and the ways a run ends. ``interrupted``: cut short by
#: a hand-over, a graceful stop or self-fencing — the shard's next run re-runs that fire time
#: (SPEC 4.3); ``cancelled``: ended for good (an operator's stop-run, a misfire skipped).
RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
#: Marker states that are no run: the fire time passed while the service was paused; and a
#: shard claimed before its first run (``fire_time``: when — fire times after it are owed).
PAUSED, CLAIMED = "paused", "claimed"
#: Completed fire times a marker remembers (what a cluster ``depends_on`` downstream reads).
COMPLETED_KEPT = 64


@dataclass(frozen=True)
class RunMarker:
    """A shard's persistent run marker: the last run of the shard and how far it got.

    ``state`` is ``running`` from the start of a run until its end, then ``done``, ``failed``
    or ``cancelled``. A new owner that finds ``running`` written by another session knows its
    predecessor died mid-run (failover); any other state tells it the last fire time handled,
    so that no fire is lost or run twice across a hand-over.
    """

    shard: int
    owner: str
    session: int
    run_id: str
    fire_time: float
    token: int
    state: str = RUNNING
    version: int = -1
    completed: tuple[float, ...] = ()

    @classmethod
    def parse(cls, shard: int, raw: bytes, version: int = -1) -> RunMarker:
        """A marker from its node's data (raises ``ValueError`` if it is not one)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"run marker of shard {shard} is not a JSON object")
        completed = data.get("completed", [])
        if not isinstance(completed, list):
            raise ValueError(f"run marker of shard {shard}: 'completed' is not a list")
        return cls(
            shard=shard,
            owner=str(data.get("owner", "")),
            session=int(data.get("session", 0)),
            run_id=str(data.get("run_id", "")),
            fire_time=float(data.get("fire_time", 0.0)),
            token=int(data.get("token", 0)),
            state=str(data.get("state", RUNNING)),
            version=version,
            completed=tuple(float(fire) for fire in completed),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "session": self.session,
                "run_id": self.run_id,
                "fire_time": self.fire_time,
                "token": self.token,
                "state": self.state,
                "completed": self.completed,
            },
            separators=(",", ":"),
        ).encode()


def service_root(namespace: str, service: str) -> str:
    """``/<namespace>/<service>``: where a service's nodes live."""
    return "/" + "/".join(p for p in (namespace.strip("/"), service) if p)


def kazoo_client(config: DiscoveryConfig) -> KazooClient:
    """A (not yet started) kazoo client for ``config``: hosts, timeouts, digest auth, TLS."""
    auth: list[tuple[str, str]] = []
    acl = None
    if config.auth_user:
        auth = [("digest", f"{config.auth_user}:{config.auth_password or ''}")]
        acl = [make_digest_acl(config.auth_user, config.auth_password or "", all=True)]
    return KazooClient(
        hosts=config.hosts,
        timeout=config.session_timeout,
        auth_data=auth or None,
        default_acl=acl,
        use_ssl=config.use_ssl,
        certfile=config.certfile,
        keyfile=config.keyfile,
        ca=config.ca,
        verify_certs=config.verify_certs,
        # kazoo's default reconnect backoff grows to an hour: after a long outage an instance
        # would stay cut off long after ZooKeeper is back. Retry forever, at most 1 s apart.
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
    )


def start_client(client: KazooClient, config: DiscoveryConfig) -> None:
    """Connect ``client`` within ``config.connect_timeout``; a clear error instead of a hang."""
    try:
        client.start(timeout=config.connect_timeout)
    except Exception as exc:
        client.stop()
        client.close()
        raise ZooKeeperUnavailable(
            f"cannot reach ZooKeeper at {config.hosts!r} within {config.connect_timeout} s "
            "(connect_timeout): is the server running and the address right?"
        ) from exc
