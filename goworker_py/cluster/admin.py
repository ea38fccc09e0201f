"""A service seen and steered from outside: ``goworker-py status|pause|resume|trigger|stop-run``.

:class:`ClusterAdmin` connects to ZooKeeper as a plain client — it never registers as a member
and never claims a shard — and reads or writes a service's nodes (layout in
:mod:`goworker_py.cluster.zookeeper`)::

    with ClusterAdmin(DiscoveryConfig(hosts="zk1:2181"), "billing") as admin:
        print(format_status(admin.status()))
        admin.pause()

``pause`` / ``resume`` set the control node's ``paused`` flag: every instance keeps its shards
and starts no run until resumed. ``trigger`` and ``stop_run`` increment a request counter: each
instance then starts one run now on (or cancels the in-flight run of) every shard it owns. A
``trigger`` of a paused service is refused (:class:`~goworker_py.errors.ServicePaused`) and not
counted: it would start nothing. Writes are compare-and-set on the node's version, so
concurrent requests are never lost.

A ZooKeeper that refuses connections on every host fails at once, not after the connect timeout.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import Any

from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
)
from kazoo.hosts import collect_hosts

from goworker_py.cluster.nodes import CLAIMED, RUNNING, kazoo_client, service_root, start_client
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import (
    ClusterError,
    DiscoveryError,
    InvalidScheduleError,
    ServicePaused,
    ZooKeeperUnavailable,
)
from goworker_py.instance import WorkerInstance
from goworker_py.schedule import _zone, parse_schedule


@dataclass(frozen=True)
class InstanceStatus:
    """A live member: its rank (node sequence number) and what it published."""

    rank: int
    node: str
    instance: WorkerInstance


@dataclass(frozen=True)
class ShardStatus:
    """One shard: who owns it, how its last run went, when it fires next."""

    shard: int
    owner: str | None = None
    #: The owner's fencing token (the claim's creation zxid), as handlers see it.
    token: int | None = None
    #: How the last run went: ``running``; ``interrupted`` (cut short by a hand-over, a stop or
    #: self-fencing, or its marker still says running but the instance that ran it is gone: the
    #: next owner re-runs it unless failover is off); ``done``, ``failed``, ``cancelled`` or
    #: ``paused`` (the fire time passed while paused). None: the shard never ran.
    state: str | None = None
    run_id: str | None = None
    #: The fire time the last run served (Unix seconds).
    fire_time: float | None = None
    #: The next fire time after now (None without a schedule).
    next_fire: datetime | None = None


@dataclass(frozen=True)
class ServiceStatus:
    """A service at a glance: settings, control state, members and shards."""

    service: str
    root: str
    settings: dict[str, Any] | None
    paused: bool
    requests: dict[str, int]
    instances: tuple[InstanceStatus, ...] = ()
    shards: tuple[ShardStatus, ...] = ()
    taken_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``status --json``: every time in ISO 8601 (UTC), health as its name."""
        data = asdict(self)
        data["taken_at"] = _iso(self.taken_at)
        data["instances"] = []
        for member in self.instances:
            published = json.loads(member.instance.to_json())
            published["health"] = member.instance.health.name
            published["created_at"] = _iso(member.instance.created_at)
            data["instances"].append({"rank": member.rank, "node": member.node, **published})
        for shard in data["shards"]:
            shard["fire_time"] = _iso(shard["fire_time"])
            if shard["next_fire"] is not None:
                shard["next_fire"] = shard["next_fire"].astimezone(timezone.utc).isoformat()
        return data


def _iso(seconds: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC (microseconds kept), None as None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


class ClusterAdmin:
    """Reads and steers one service in ZooKeeper (a context manager: connects on entry)."""

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError(
                "ClusterAdmin needs ZooKeeper hosts: DiscoveryConfig(hosts='zk1:2181,zk2:2181')"
            )
        if not service:
            raise ClusterError("ClusterAdmin needs the name of the service to read or steer")
        self.config = config
        self.service = service
        self.root = service_root(config.namespace, service)
        self.client = kazoo_client(config)

    def __enter__(self) -> ClusterAdmin:
        _fail_fast_if_refused(self.config)
        start_client(self.client, self.config)
        try:
            self._check_service()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.stop()
        self.client.close()

    def _check_service(self) -> None:
        try:
            found = self.client.exists(self.root) is not None
            if found:
                self.client.get_children(self.root)
        except (NoAuthError, AuthFailedError) as exc:
            raise DiscoveryError(
                f"ZooKeeper denied access to {self.root}: check auth_user/auth_password"
            ) from exc
        if not found:
            raise ClusterError(
                f"no service {self.service!r} in ZooKeeper at {self.config.hosts!r} (no node "
                f"{self.root}): check the service name and the namespace"
            )

    # -- reading --------------------------------------------------------------------------------

    def _json(self, path: str) -> tuple[Any, Any]:
        """``(parsed data, stat)`` of ``path``; ``(None, None)`` if it does not exist."""
        try:
            raw, stat = self.client.get(path)
        except NoNodeError:
            return None, None
        try:
            return json.loads(raw.decode() or "null"), stat
        except ValueError:
            return None, stat

    def _children(self, path: str) -> list[str]:
        try:
            return list(self.client.get_children(path))
        except NoNodeError:
            return []

    def control(self) -> dict[str, Any]:
        """The control node's data (``{}`` when nothing was ever requested)."""
        data, _ = self._json(f"{self.root}/control")
        return data if isinstance(data, dict) else {}

    def status(self, zone: str | tzinfo | None = "UTC") -> ServiceStatus:
        """Read everything at once; next fire times are computed with the schedule in ``zone``."""
        settings, _ = self._json(f"{self.root}/config")
        settings = settings if isinstance(settings, dict) else None
        control = self.control()
        instances: list[InstanceStatus] = []
        sessions: set[int] = set()
        for node in self._children(f"{self.root}/instances"):
            data, stat = self._json(f"{self.root}/instances/{node}")
            if stat is not None:
                sessions.add(stat.ephemeralOwner)
            if not isinstance(data, dict):
                continue
            rank = node.rsplit("-", 1)[-1]
            instance = WorkerInstance.from_json(json.dumps(data))
            instances.append(InstanceStatus(int(rank) if rank.isdigit() else -1, node, instance))
        instances.sort(key=lambda i: i.rank)
        schedule = None
        cron = (settings or {}).get("schedule")
        if cron:
            try:
                schedule = parse_schedule(str(cron), _zone(zone))
            except InvalidScheduleError:
                schedule = None
        total = (settings or {}).get("sharding_total_count")
        indexes = set(range(total)) if isinstance(total, int) else set()
        for kind in ("claims", "running"):
            indexes.update(int(c) for c in self._children(f"{self.root}/{kind}") if c.isdigit())
        now = datetime.now(timezone.utc)
        shards = []
        for index in sorted(indexes):
            claim, claim_stat = self._json(f"{self.root}/claims/{index}")
            marker, _ = self._json(f"{self.root}/running/{index}")
            marker = marker if isinstance(marker, dict) else {}
            if marker.get("state") == CLAIMED:
                marker = {}  # claimed, never run yet
            fire = marker.get("fire_time")
            after = now
            if isinstance(fire, (int, float)):
                after = max(now, datetime.fromtimestamp(fire, timezone.utc))
            shards.append(
                ShardStatus(
                    shard=index,
                    owner=claim.get("owner") if isinstance(claim, dict) else None,
                    token=claim_stat.czxid if claim_stat is not None else None,
                    state=_run_state(marker, sessions),
                    run_id=marker.get("run_id"),
                    fire_time=fire if isinstance(fire, (int, float)) else None,
                    next_fire=schedule.next_after(after) if schedule else None,
                )
            )
        return ServiceStatus(
            service=self.service,
            root=self.root,
            settings=settings,
            paused=control.get("paused") is True,
            requests={key: int(control.get(key) or 0) for key in ("trigger", "stop_run")},
            instances=tuple(instances),
            shards=tuple(shards),
        )

    # -- steering -------------------------------------------------------------------------------

    def pause(self) -> dict[str, Any]:
        """Pause the whole service: every instance keeps its shards and starts no run."""
        return self._update(lambda data: {**data, "paused": True})

    def resume(self) -> dict[str, Any]:
        """Undo :meth:`pause`."""
        return self._update(lambda data: {**data, "paused": False})

    def trigger(self) -> dict[str, Any]:
        """One run now on every shard (each instance on the shards it owns).

        Raises :class:`ServicePaused` (and counts nothing) while the service is paused.
        """

        def change(data: dict[str, Any]) -> dict[str, Any]:
            if data.get("paused") is True:
                raise ServicePaused(
                    f"service {self.service!r} is paused: trigger starts no run while paused, so "
                    "nothing was triggered; resume the service first"
                )
            return {**data, "trigger": int(data.get("trigger") or 0) + 1}

        return self._update(change)

    def stop_run(self) -> dict[str, Any]:
        """Cancel every in-flight run of the service; the workers keep running."""
        return self._update(lambda data: {**data, "stop_run": int(data.get("stop_run") or 0) + 1})

    def _update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Compare-and-set the control node with ``change(current data)``; return the new data."""
        path = f"{self.root}/control"
        while True:
            data, stat = self._json(path)
            current = data if isinstance(data, dict) else {}
            updated = {**change(current), "updated_at": time.time()}
            raw = json.dumps(updated, sort_keys=True).encode()
            try:
                if stat is None:
                    self.client.create(path, raw)
                else:
                    self.client.set(path, raw, version=stat.version)
            except (BadVersionError, NodeExistsError, NoNodeError):
                continue  # someone else wrote in between: read again
            return updated


def format_status(status: ServiceStatus) -> str:
    """``goworker-py status``: a few lines a person can read at a glance."""
    lines = [f"service {status.service!r} ({status.root})"]
    settings = status.settings
    if settings is None:
        lines.append("  settings: none stored (no instance has started yet)")
    else:
        lines.append(
            f"  settings: {settings.get('sharding_total_count')} shard(s), schedule "
            f"{settings.get('schedule') or 'none (run once)'!r}, params "
            f"{settings.get('params') or '-'!r}"
        )
    state = "PAUSED" if status.paused else "active"
    requests = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in status.requests.items())
    lines.append(f"  control: {state} (requests so far: {requests})")
    lines.append(f"instances ({len(status.instances)}):")
    for member in status.instances:
        inst = member.instance
        up = max(status.taken_at - inst.created_at, 0.0)
        lines.append(
            f"  #{member.rank:<4} {inst.id[:12]}  {inst.host} pid {inst.pid}  "
            f"{inst.health.name:<6} up {_duration(up)}  shards {list(inst.shards)}"
        )
    if not status.instances:
        lines.append("  (none running)")
    lines.append(f"shards ({len(status.shards)}):")
    lines.append(f"  {'shard':<6} {'owner':<13} {'token':<13} {'last run':<36} next fire")
    for shard in status.shards:
        owner = shard.owner[:12] if shard.owner else "(unowned)"
        token = str(shard.token) if shard.token is not None else "-"
        if shard.state is None:
            last = "never"
        else:
            when = (
                datetime.fromtimestamp(shard.fire_time, timezone.utc).isoformat(timespec="seconds")
                if shard.fire_time is not None
                else "?"
            )
            last = f"{shard.state} {when}"
        upcoming = shard.next_fire.isoformat(timespec="seconds") if shard.next_fire else "-"
        lines.append(f"  {shard.shard:<6} {owner:<13} {token:<13} {last:<36} {upcoming}")
    return "\n".join(lines)


def _run_state(marker: dict[str, Any], sessions: set[int]) -> str | None:
    """The marker's state; ``interrupted`` for a ``running`` marker whose session is gone.

    The marker records the session of the instance that ran it; a live instance's node is
    owned by its session. No live member node of that session: nobody is running it.
    """
    state = marker.get("state")
    if state == RUNNING and marker.get("session") not in sessions:
        return "interrupted"
    return state if isinstance(state, str) else None


def _fail_fast_if_refused(config: DiscoveryConfig) -> None:
    """Raise :class:`ZooKeeperUnavailable` at once if every host refuses connections.

    kazoo retries refused connections until the connect timeout; a host that answers a TCP
    connect with a refusal (nothing listens there) or whose name does not resolve will not
    do better a few seconds later. Anything else (a host that does not answer at all, one
    that accepts) is left to the client and its timeout.
    """
    try:
        hosts, _ = collect_hosts(config.hosts)
    except ValueError as exc:
        raise DiscoveryError(f"bad ZooKeeper hosts {config.hosts!r}: {exc}") from exc
    reasons: list[str] = []
    for host, port in hosts:
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            reasons.append(f"{host}: unknown host ({exc.strerror})")
            continue
        for family, kind, proto, _, address in addresses:
            try:
                with socket.socket(family, kind, proto) as probe:
                    probe.settimeout(min(config.connect_timeout, 2.0))
                    probe.connect(address)
            except ConnectionRefusedError:
                continue
            except OSError:
                return  # no answer, or some other trouble: let the client try
            return  # something listens there
        reasons.append(f"{host}:{port} refused the connection")
    raise ZooKeeperUnavailable(
        f"cannot reach ZooKeeper at {config.hosts!r}: {'; '.join(reasons)}. "
        "Is the server running and the address right?"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
