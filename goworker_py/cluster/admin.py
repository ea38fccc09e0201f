"""A service seen and steered from outside: ``goworker-py status|pause|resume|trigger|stop-run``.

:class:`ClusterAdmin` connects to a service's coordination backend (ZooKeeper, etcd, Redis) as a
plain client — it never registers as a member and never claims a shard — and reads or writes
through the seam of :mod:`goworker_py.cluster.backend`::

    with ClusterAdmin(DiscoveryConfig.from_url("etcd://127.0.0.1:2379"), "billing") as admin:
        print(format_status(admin.status()))
        admin.pause()

``pause`` / ``resume`` set the control state's ``paused`` flag: every instance keeps its shards
and starts no run until resumed. ``trigger`` and ``stop_run`` increment a request counter: each
instance then starts one run now on (or cancels the in-flight run of) every shard it owns. A
``trigger`` of a paused service is refused (:class:`~goworker_py.errors.ServicePaused`) and not
counted: it would start nothing. Writes are compare-and-set, so concurrent requests are never
lost. A server that refuses connections on every host fails at once, not after the connect
timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from goworker_py.cluster.backend import ControlState, RunRecord, RunState, server_name
from goworker_py.cluster.discovery import get_discovery
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import (
    ClusterError,
    DiscoveryError,
    InvalidScheduleError,
    ServicePaused,
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
    """Reads and steers one service through its coordination backend (a context manager:
    connects on entry). It never registers as a member and never claims a shard."""

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError(
                "ClusterAdmin needs the discovery hosts: DiscoveryConfig(hosts='zk1:2181,zk2:2181')"
            )
        if not service:
            raise ClusterError("ClusterAdmin needs the name of the service to read or steer")
        self.config = config
        self.service = service
        self.root = "/" + "/".join(p for p in (config.namespace.strip("/"), service) if p)
        self.backend = get_discovery(config, service)

    def __enter__(self) -> ClusterAdmin:
        self.backend.connect()
        try:
            self._check_service()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def _check_service(self) -> None:
        backend = self.backend
        if not (backend.read_settings() or backend.members() or backend.runs()):
            raise ClusterError(
                f"no service {self.service!r} in {server_name(self.backend.protocol)} at "
                f"{self.config.hosts!r} (nothing under {self.root}): check the service name "
                "and the namespace"
            )

    # -- reading --------------------------------------------------------------------------------

    def control(self) -> dict[str, Any]:
        """The control state (nothing requested when none was written)."""
        return self.backend.read_control().to_dict()

    def status(self, zone: str | tzinfo | None = "UTC") -> ServiceStatus:
        """Read everything at once; next fire times are computed with the schedule in ``zone``."""
        backend = self.backend
        settings = backend.read_settings()
        control = backend.read_control()
        members = backend.members()
        instances = [InstanceStatus(m.rank, m.key, m.instance) for m in members]
        leases = {m.lease for m in members}
        schedule = None
        cron = (settings or {}).get("schedule")
        if cron:
            try:
                schedule = parse_schedule(str(cron), _zone(zone))
            except InvalidScheduleError:
                schedule = None
        claims = backend.claims()
        runs = backend.runs()
        total = (settings or {}).get("sharding_total_count")
        indexes = set(range(total)) if isinstance(total, int) else set()
        indexes.update(claims, runs)
        now = datetime.now(timezone.utc)
        shards = []
        for index in sorted(indexes):
            claim = claims.get(index)
            record = runs.get(index)
            if record is not None and record.state is RunState.CLAIMED:
                record = None  # claimed, never run yet
            after = now
            if record is not None:
                after = max(now, datetime.fromtimestamp(record.fire_time, timezone.utc))
            shards.append(
                ShardStatus(
                    shard=index,
                    owner=claim.owner if claim is not None else None,
                    token=claim.token if claim is not None else None,
                    state=_run_state(record, leases),
                    run_id=record.run_id if record is not None else None,
                    fire_time=record.fire_time if record is not None else None,
                    next_fire=schedule.next_after(after) if schedule else None,
                )
            )
        return ServiceStatus(
            service=self.service,
            root=self.root,
            settings=settings,
            paused=control.paused,
            requests={"trigger": control.trigger, "stop_run": control.stop_run},
            instances=tuple(instances),
            shards=tuple(shards),
        )

    # -- steering -------------------------------------------------------------------------------

    def pause(self) -> dict[str, Any]:
        """Pause the whole service: every instance keeps its shards and starts no run."""
        return self._update(lambda state: replace(state, paused=True))

    def resume(self) -> dict[str, Any]:
        """Undo :meth:`pause`."""
        return self._update(lambda state: replace(state, paused=False))

    def trigger(self) -> dict[str, Any]:
        """One run now on every shard (each instance on the shards it owns).

        Raises :class:`ServicePaused` (and counts nothing) while the service is paused.
        """

        def change(state: ControlState) -> ControlState:
            if state.paused:
                raise ServicePaused(
                    f"service {self.service!r} is paused: trigger starts no run while paused, so "
                    "nothing was triggered; resume the service first"
                )
            return replace(state, trigger=state.trigger + 1)

        return self._update(change)

    def stop_run(self) -> dict[str, Any]:
        """Cancel every in-flight run of the service; the workers keep running."""
        return self._update(lambda state: replace(state, stop_run=state.stop_run + 1))

    def _update(self, change: Callable[[ControlState], ControlState]) -> dict[str, Any]:
        """Compare-and-set the control state with ``change``; return the new state."""
        return self.backend.update_control(change).to_dict()


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


def _run_state(record: RunRecord | None, leases: set[str]) -> str | None:
    """The record's state; ``interrupted`` for a ``running`` record whose lease is gone.

    The record names the lease of the instance that ran it; every live member holds a lease.
    No live member of that lease: nobody is running it any more.
    """
    if record is None:
        return None
    if record.state is RunState.RUNNING and record.lease not in leases:
        return RunState.INTERRUPTED.value
    return record.state.value


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
