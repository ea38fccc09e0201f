"""The coordination seam: everything cluster mode asks of a backend, in backend-neutral terms.

Cluster mode (:mod:`~goworker_py.cluster.membership`, the service's settings and control,
``depends_on`` across instances, :class:`~goworker_py.cluster.admin.ClusterAdmin`, metrics and the
CLI) talks to its coordination server only through a :class:`CoordinationBackend`. A backend —
ZooKeeper (kazoo), etcd v3, Redis, or the in-process ``memory`` one — translates these calls into
its own client's, and its client's errors into the :class:`~goworker_py.errors.BackendError`
tree; nothing above the seam imports a client library.

The model, in every backend:

- **Lease.** An instance holds one lease (a ZooKeeper session, an etcd lease, a set of Redis
  keys with a TTL) that the *server* expires when it stops hearing from the instance. Every
  member entry and shard claim lives and dies with it. ``lease_valid_until()`` is computed from
  completed replies only: self-fencing counts from it.
- **Members.** ``register`` adds this instance's entry; members are ranked by the order in which
  they registered (a sequence number, a create revision, a counter).
- **Claims.** ``claim`` takes a shard if nobody holds it. Its **fencing token** is an integer
  that grows with every new owner of the shard, whatever happened in between (restarts
  included, where the backend declares :attr:`Guarantee.TOKENS_GROW`).
- **Run records.** Persistent, one per shard: how its latest run went (:class:`RunRecord`).
  ``begin_run`` and ``end_run`` write one atomically *if and only if* the claim and this
  instance's member entry still exist (:attr:`Guarantee.FENCED_BEGIN`): a stale owner can never
  overwrite its successor's record.
- **Settings and control.** The service's shared settings, and the operator's control state
  (pause, trigger and stop-run counters).
- **Changes** reach the host as :class:`Change` events through the callback given to
  ``connect``; the callback runs on the backend's own thread and must only signal. A change
  made after the host last read that kind of state is always followed by an event (a backend
  whose watches are one-shot re-arms them on that read); after a new lease the host reads
  everything again.

Threads: the supervisor thread calls everything except :meth:`~CoordinationBackend.begin_run`,
:meth:`~CoordinationBackend.end_run` and :meth:`~CoordinationBackend.lease_valid_until`, which
shard threads call (and the fence thread, for the last). A call may block on the network up to
the backend's timeouts; none blocks forever.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from goworker_py.instance import WorkerInstance


class ConnectionState(enum.Enum):
    """The connection to the coordination server, as the backend sees it."""

    #: Connected, the lease held.
    CONNECTED = "connected"
    #: Not connected (or not answering); the lease may still be held by the server.
    SUSPENDED = "suspended"
    #: The server expired the lease: every member entry and claim of it is gone.
    LOST = "lost"


class Change(enum.Enum):
    """What changed, as a backend reports it to the host (which then looks again)."""

    MEMBERS = "members"
    SETTINGS = "settings"
    CONTROL = "control"
    #: A claim another instance held vanished (a shard we wait for may be free).
    CLAIMS = "claims"
    #: The connection state changed (see :attr:`CoordinationBackend.state`).
    CONNECTION = "connection"


class RunState(str, enum.Enum):
    """The states of a shard's run record."""

    #: A run in flight (begun, not yet ended).
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: Ended for good: an operator's stop-run, or a misfire skipped.
    CANCELLED = "cancelled"
    #: Cut short by a hand-over, a graceful stop or self-fencing: the fire is re-run.
    INTERRUPTED = "interrupted"
    #: No run: the fire time passed while the service was paused.
    PAUSED = "paused"
    #: No run yet: the shard was claimed at ``fire_time`` (fire times after it are owed).
    CLAIMED = "claimed"


class Guarantee(enum.Enum):
    """What a backend promises; a feature that needs one checks for it."""

    #: A shard's fencing token grows with every new owner, across server restarts too.
    TOKENS_GROW = "fencing tokens grow with every new owner"
    #: Claims and member entries vanish with the lease that made them.
    CLAIMS_VANISH_WITH_LEASE = "claims vanish with their lease"
    #: ``begin_run`` is one atomic operation that checks the claim and the member entry.
    FENCED_BEGIN = "begin_run is atomic and fenced"
    #: Lease expiry is decided by the server, never by comparing hosts' clocks.
    SERVER_EXPIRY = "lease expiry is decided by the server"
    #: Everything written survives a restart of the server.
    DURABLE = "state survives a server restart"


@dataclass(frozen=True)
class Member:
    """A live instance: the backend's ``key`` for it, its ``rank`` order, the ``lease`` that
    holds its entry, and its data."""

    key: str
    rank: int
    lease: str
    instance: WorkerInstance


@dataclass(frozen=True)
class ShardClaim:
    """A shard claim: its fencing ``token``, the ``owner`` instance id, and the backend's
    opaque ``handle`` (what it needs to check or release exactly this claim)."""

    shard: int
    token: int
    owner: str
    handle: Any = None


#: Completed fire times a run record remembers (what a cluster ``depends_on`` downstream reads).
COMPLETED_KEPT = 64


@dataclass(frozen=True)
class RunRecord:
    """A shard's persistent run record: its latest run, and how far it got.

    ``lease`` identifies the lease (session) of the instance that wrote it: a ``running`` record
    of another lease than the reader's means the run's instance died mid-run. ``completed``
    holds the latest fire times run successfully (at most :data:`COMPLETED_KEPT`, oldest first).
    """

    shard: int
    owner: str
    lease: str
    run_id: str
    fire_time: float
    token: int
    state: RunState = RunState.RUNNING
    completed: tuple[float, ...] = ()

    @classmethod
    def parse(cls, shard: int, raw: bytes | str) -> RunRecord:
        """A record from its stored JSON (raises ``ValueError`` if it is not one)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"run record of shard {shard} is not a JSON object")
        completed = data.get("completed", [])
        if not isinstance(completed, list):
            raise ValueError(f"run record of shard {shard}: 'completed' is not a list")
        return cls(
            shard=shard,
            owner=str(data.get("owner", "")),
            lease=str(data.get("lease", "")),
            run_id=str(data.get("run_id", "")),
            fire_time=float(data.get("fire_time", 0.0)),
            token=int(data.get("token", 0)),
            state=RunState(str(data.get("state", RunState.RUNNING.value))),
            completed=tuple(float(fire) for fire in completed),
        )

    def to_json(self) -> bytes:
        """The stored JSON."""
        return json.dumps(
            {
                "owner": self.owner,
                "lease": self.lease,
                "run_id": self.run_id,
                "fire_time": self.fire_time,
                "token": self.token,
                "state": self.state.value,
                "completed": self.completed,
            },
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True)
class ControlState:
    """The operator's requests to a service: a pause, and trigger / stop-run counters (each
    instance acts when a counter grows)."""

    paused: bool = False
    trigger: int = 0
    stop_run: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> ControlState:
        """From stored JSON data; anything malformed counts as nothing requested."""
        if not isinstance(data, dict):
            return cls()

        def counter(value: Any) -> int:
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            paused=data.get("paused") is True,
            trigger=counter(data.get("trigger")),
            stop_run=counter(data.get("stop_run")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"paused": self.paused, "trigger": self.trigger, "stop_run": self.stop_run}


#: How messages name each built-in backend's server.
SERVER_NAMES = {"zookeeper": "ZooKeeper", "etcdv3": "etcd", "redis": "Redis", "memory": "memory"}


def server_name(protocol: str) -> str:
    """``"ZooKeeper"``, ``"etcd"``, ... for messages (the protocol name for others)."""
    return SERVER_NAMES.get(protocol, protocol)


class CoordinationBackend(Protocol):
    """One instance's (or one admin client's) connection to a coordination server.

    Every method raises only :class:`~goworker_py.errors.BackendError` subclasses:
    :class:`~goworker_py.errors.BackendUnavailable` when the server cannot be reached in time,
    :class:`~goworker_py.errors.LeaseLost` when the call needed this instance's lease and it
    is gone, :class:`~goworker_py.errors.AccessDenied` for refused credentials.
    """

    #: The protocol name it is registered under (``"zookeeper"``, ``"etcdv3"``, ...).
    protocol: str
    #: What it promises (see :class:`Guarantee`).
    guarantees: frozenset[Guarantee]

    # -- connection and lease ---------------------------------------------------------------------

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        """Connect within the configured connect timeout and check access; ``on_change`` is
        called (on the backend's thread; it must only signal) for every :class:`Change`."""

    def close(self) -> None:
        """Release the lease (its entries and claims vanish at once) and disconnect."""

    @property
    def state(self) -> ConnectionState:
        """The connection state (see :class:`ConnectionState`)."""

    @property
    def lease_id(self) -> str:
        """The current lease's id ("" when none); it changes when a lost lease is replaced."""

    @property
    def negotiated_timeout(self) -> float:
        """The lease's time to live the server granted, in seconds."""

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` send time of the latest request the server answered."""

    def lease_valid_until(self) -> float:
        """``time.monotonic()`` instant before which the server certainly keeps the lease,
        computed from completed replies only (self-fencing counts from it)."""

    def round_trip(self, timeout: float) -> None:
        """One request answered by the server within ``timeout`` seconds (else raises)."""

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> Member:
        """Add this instance's member entry, attached to the lease (exactly one, even when a
        reply is lost and the request retried)."""

    def unregister(self) -> None:
        """Remove this instance's member entry (a clean leave)."""

    def registered(self) -> bool:
        """True while this instance's member entry exists."""

    def publish(self, instance: WorkerInstance) -> None:
        """Replace this instance's member data (its shards and health)."""

    def members(self) -> list[Member]:
        """The live members, in rank order."""

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, shard: int, owner: str) -> ShardClaim | None:
        """Take ``shard`` if nobody holds it (attached to the lease); None if someone does —
        a :attr:`Change.CLAIMS` follows when that claim vanishes."""

    def release(self, claim: ShardClaim) -> None:
        """Give ``claim`` up, only if it is still exactly this claim."""

    def claims(self) -> dict[int, ShardClaim]:
        """Every claim of the service (admin and observers)."""

    # -- run records ------------------------------------------------------------------------------

    def read_run(self, shard: int) -> RunRecord | None:
        """The run record of ``shard``, if any (one that cannot be parsed counts as none)."""

    def runs(self) -> dict[int, RunRecord]:
        """Every run record of the service (admin)."""

    def begin_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """Write ``record`` atomically if ``claim`` and the member entry still exist; False if
        they do not (the run must not start). When the reply is lost, find out whether the
        write happened before answering (at most a third of the lease's time to live).
        Also writes records that are no run (``claimed``)."""

    def end_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """Record how a run ended (or that a fire time passed paused) — fenced as
        :meth:`begin_run`; False (nothing written) once the claim or the member entry is gone:
        the shard's record then belongs to its next owner."""

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        """Call ``callback`` with ``service``'s run record of ``shard`` now and on each change
        (on the backend's thread), until it returns False. ``service`` is another service of the
        same namespace (a WorkerGroup upstream)."""

    # -- settings and control ---------------------------------------------------------------------

    def read_settings(self) -> dict[str, Any] | None:
        """The service's stored settings, or None."""

    def write_settings(self, settings: dict[str, Any], create_only: bool) -> bool:
        """Store the settings; False if ``create_only`` and some are stored already."""

    def read_control(self) -> ControlState:
        """The service's control state (nothing requested when none was written)."""

    def update_control(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Apply ``change`` atomically (compare-and-set, retried); return the new state."""
