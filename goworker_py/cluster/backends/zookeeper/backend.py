"""The ZooKeeper coordination backend (kazoo): the seam of :mod:`goworker_py.cluster.backend`.

Layout under ``/<namespace>/<service>/``:

- ``config`` — persistent: the service's settings (shard count, params, schedule).
- ``instances/inst-<uuid>-<seq>`` — ephemeral sequential, one per live instance (its member
  entry); data is its :class:`~goworker_py.instance.WorkerInstance` JSON. The uuid makes the
  create *protected*: after a connection loss the instance finds its own node instead of
  creating a twin. The sequence number is the rank; the node's owner session is the lease.
- ``claims/<shard>`` — ephemeral, held by the owner of the shard. Its creation zxid
  (``czxid``) is the shard's **fencing token**: zxids only grow, so every new claim of a shard
  carries a larger token than any before it, across server restarts too.
- ``fences/<shard>`` — persistent; every claim sets it in the transaction that creates the
  claim node, so its version identifies the claim: a claim node looks the same for every
  owner (same path, version 0), a fence version never repeats.
- ``running/<shard>`` — persistent run record (:class:`~goworker_py.cluster.backend.RunRecord`).
  Written with a transaction that checks the claim node, this claim's fence version and this
  instance's member node (unique per session): a stale owner — a released claim, a lost
  session — can never overwrite the record.
- ``control`` — persistent, optional: the operator's :class:`ControlState`.

The lease is the ZooKeeper session: ``lease_id`` is its id in hex. Watch callbacks run on
kazoo's thread and only report a :class:`Change`. kazoo's one-shot watches are re-armed by the
reads that follow (the seam's contract: a change after the last read is always reported).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    Guarantee,
    Member,
    RunRecord,
    ShardClaim,
)
from goworker_py.cluster.backends.zookeeper.client import (
    kazoo_client,
    service_root,
    start_client,
    translated,
)
from goworker_py.cluster.backends.zookeeper.clock import ReplyClock
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendUnavailable, DiscoveryError, MemberGone
from goworker_py.instance import WorkerInstance

_INSTANCE_PREFIX = "inst-"
_STATES = {
    KazooState.CONNECTED: ConnectionState.CONNECTED,
    KazooState.SUSPENDED: ConnectionState.SUSPENDED,
    KazooState.LOST: ConnectionState.LOST,
}


class ZooKeeperBackend:
    """One instance's (or admin client's) connection to ZooKeeper, for one service."""

    protocol = "zookeeper"
    guarantees = frozenset(Guarantee)

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError("discovery hosts are empty: set DiscoveryConfig(hosts='zk:2181')")
        self.config = config
        self.service = service
        self.namespace = config.namespace
        root = service_root(config.namespace, service)
        self.root = root
        self.instances_path = f"{root}/instances"
        self.claims_path = f"{root}/claims"
        self.fences_path = f"{root}/fences"
        self.running_path = f"{root}/running"
        self.config_path = f"{root}/config"
        self.control_path = f"{root}/control"
        self.client = kazoo_client(config)
        self._clock = ReplyClock(self.client, config.session_timeout)
        self._on_change: Callable[[Change], None] = lambda change: None
        #: This instance's member node (None when not registered).
        self.node: str | None = None
        #: Shards whose run node exists (a create or a set is needed to write it).
        self._runs_exist: set[int] = set()
        #: Shards whose fence node exists.
        self._fences_exist: set[int] = set()
        self._members_session = -1
        self._member_list_dirty = True
        self._member_order: list[tuple[int, str]] = []
        self._member_cache: dict[str, Member] = {}
        self._dirty_members: set[str] = set()
        self.client.add_listener(self._state_listener)

    # -- connection and lease ---------------------------------------------------------------------

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        """Connect and check access; raise a clear error instead of hanging."""
        if on_change is not None:
            self._on_change = on_change
        start_client(self.client, self.config)
        try:
            with translated(f"access to {self.root}"):
                for path in (
                    self.instances_path,
                    self.claims_path,
                    self.fences_path,
                    self.running_path,
                ):
                    self.client.ensure_path(path)
                self.client.get_children(self.instances_path)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the client; its ephemeral nodes vanish at once (a clean session close)."""
        try:
            self.client.stop()
        finally:
            self.client.close()

    def _state_listener(self, state: str) -> None:
        # kazoo's thread: report only.
        self._on_change(Change.CONNECTION)

    @property
    def state(self) -> ConnectionState:
        return _STATES.get(self.client.state, ConnectionState.SUSPENDED)

    @property
    def session_id(self) -> int:
        """The current ZooKeeper session id (0 when there is none)."""
        client_id = self.client.client_id
        return int(client_id[0]) if client_id else 0

    @property
    def lease_id(self) -> str:
        session = self.session_id
        return f"{session:#x}" if session else ""

    @property
    def negotiated_timeout(self) -> float:
        return self._clock.negotiated_timeout

    @property
    def answered_at(self) -> float:
        return self._clock.answered_at

    def lease_valid_until(self) -> float:
        return self._clock.lease_valid_until()

    def round_trip(self, timeout: float) -> None:
        with translated("a round trip"):
            self.client.exists_async(self.instances_path).get(timeout=timeout)

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> Member:
        """Create this instance's ephemeral sequential node (protected)."""
        marker = uuid.uuid4().hex
        prefix = f"{self.instances_path}/{_INSTANCE_PREFIX}{marker}-"
        for _ in range(10):
            try:
                with translated("registering"):
                    try:
                        path = self.client.create(
                            prefix, instance.to_json(), ephemeral=True, sequence=True
                        )
                    except ConnectionLoss:
                        # The create may have happened: look for our uuid before retrying.
                        self._wait_connected(self.negotiated_timeout)
                        found = [c for c in self._children(self.instances_path) if marker in c]
                        if not found:
                            continue
                        path = found[0]
            except BackendUnavailable:
                continue
            self.node = path.rsplit("/", 1)[-1]
            return Member(self.node, _rank(self.node), self.lease_id, instance)
        raise BackendUnavailable("could not register the instance in ZooKeeper after 10 attempts")

    def unregister(self) -> None:
        if self.node is None:
            return
        with contextlib.suppress(
            NoNodeError, SessionExpiredError, ConnectionLoss, KazooTimeoutError
        ):
            self.client.delete(f"{self.instances_path}/{self.node}")
        self.node = None

    def registered(self) -> bool:
        if self.node is None:
            return False
        with translated("reading this instance's node"):
            return self.client.exists(f"{self.instances_path}/{self.node}") is not None

    def publish(self, instance: WorkerInstance) -> None:
        if self.node is None:
            raise MemberGone("this instance is not registered")
        with translated("publishing this instance's data"):
            try:
                self.client.set(f"{self.instances_path}/{self.node}", instance.to_json())
            except NoNodeError as exc:
                raise MemberGone(f"this instance's node {self.node} vanished") from exc

    def _members_watch(self, *_event: Any) -> None:
        self._member_list_dirty = True
        self._on_change(Change.MEMBERS)

    def _member_watch(self, event: Any = None) -> None:
        path = getattr(event, "path", None)
        if path:
            self._dirty_members.add(path.rsplit("/", 1)[1])
        else:
            self._member_list_dirty = True
        self._on_change(Change.MEMBERS)

    def members(self) -> list[Member]:
        """Live members in rank order, re-reading only what changed since the last call.

        The member list and each member's data are cached behind their own watches, so a
        re-balance pass costs a read per *changed* node, not one per member: with N members
        publishing in turn, re-reading everyone on every pass would cost O(N^2) reads.
        """
        with translated("reading the members"):
            session = self.session_id
            if session != self._members_session:
                # Watches belong to a session: start over on a new one.
                self._members_session = session
                self._member_cache.clear()
                self._member_list_dirty = True
            if self._member_list_dirty:
                self._member_list_dirty = False
                children = self.client.get_children(self.instances_path, watch=self._members_watch)
                self._member_order = sorted(
                    (_rank(child), child)
                    for child in children
                    if child.startswith(_INSTANCE_PREFIX)
                )
                live = {child for _, child in self._member_order}
                for gone in set(self._member_cache) - live:
                    del self._member_cache[gone]
            stale = set(self._dirty_members)
            self._dirty_members -= stale
            pending = [
                (
                    rank,
                    child,
                    self.client.get_async(f"{self.instances_path}/{child}", self._member_watch),
                )
                for rank, child in self._member_order
                if child in stale or child not in self._member_cache
            ]
            for rank, child, request in pending:
                try:
                    raw, stat = request.get(timeout=self.negotiated_timeout)
                except NoNodeError:
                    self._member_cache.pop(child, None)
                    continue
                lease = f"{int(stat.ephemeralOwner):#x}"
                self._member_cache[child] = Member(
                    child, rank, lease, WorkerInstance.from_json(raw)
                )
        return [
            self._member_cache[child]
            for _, child in self._member_order
            if child in self._member_cache
        ]

    def _children(self, path: str) -> list[str]:
        try:
            return list(self.client.get_children(path))
        except NoNodeError:
            return []

    def _wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.client.state != KazooState.CONNECTED and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- claims -----------------------------------------------------------------------------------

    def _claims_watch(self, *_event: Any) -> None:
        self._on_change(Change.CLAIMS)

    def claim(self, shard: int, owner: str) -> ShardClaim | None:
        """Take the claim of ``shard``; None (and a watch armed) if someone else holds it.

        One transaction creates the claim node and sets the shard's fence node (whose new
        version identifies this claim); its creation zxid is read back as the token.
        """
        path = f"{self.claims_path}/{shard}"
        data = json.dumps({"owner": owner, "session": self.session_id}).encode()
        with translated(f"claiming shard {shard}"):
            self._ensure_fence(shard)
            transaction = self.client.transaction()
            transaction.create(path, data, ephemeral=True)
            transaction.set_data(f"{self.fences_path}/{shard}", data, -1)
            try:
                results = transaction.commit()
            except ConnectionLoss:
                self._wait_connected(self.negotiated_timeout)
                results = [NodeExistsError()]  # applied or not: read what is there
            if not any(isinstance(r, Exception) for r in results):
                return self._claim_held(shard, owner, int(results[1].version))
            try:
                raw, stat = self.client.get(path)
            except NoNodeError:
                self._claims_watch()  # it vanished meanwhile: look again at once
                return None
            if stat.ephemeralOwner == self.session_id and _json_object(raw).get("owner") == owner:
                _, fence = self.client.get(f"{self.fences_path}/{shard}")
                return self._claim_held(shard, owner, int(fence.version))
            if self.client.exists(path, watch=self._claims_watch) is None:
                self._claims_watch()
            return None

    def _ensure_fence(self, shard: int) -> None:
        if shard in self._fences_exist:
            return
        with contextlib.suppress(NodeExistsError):
            self.client.create(f"{self.fences_path}/{shard}", b"")
        self._fences_exist.add(shard)

    def _claim_held(self, shard: int, owner: str, fence_version: int) -> ShardClaim | None:
        stat = self.client.exists(f"{self.claims_path}/{shard}")
        if stat is None or stat.ephemeralOwner != self.session_id:
            return None
        return ShardClaim(shard, int(stat.czxid), owner, (fence_version, self.node or ""))

    def release(self, claim: ShardClaim) -> None:
        """Give the claim up — only if it is still exactly this claim (its fence version)."""
        version = claim.handle[0] if isinstance(claim.handle, tuple) else -1
        transaction = self.client.transaction()
        transaction.check(f"{self.fences_path}/{claim.shard}", version)
        transaction.delete(f"{self.claims_path}/{claim.shard}")
        try:
            transaction.commit()  # a failed check means: no longer ours, nothing to do
        except SessionExpiredError:
            pass
        except (ConnectionLoss, KazooTimeoutError, KazooException) as exc:
            raise BackendUnavailable(f"could not release shard {claim.shard}: {exc!r}") from exc

    def claims(self) -> dict[int, ShardClaim]:
        found: dict[int, ShardClaim] = {}
        with translated("reading the claims"):
            children = [c for c in self._children(self.claims_path) if c.isdigit()]
            pending = [(int(c), self.client.get_async(f"{self.claims_path}/{c}")) for c in children]
            for shard, request in pending:
                try:
                    raw, stat = request.get(timeout=self.negotiated_timeout)
                except NoNodeError:
                    continue
                owner = _json_object(raw).get("owner")
                found[shard] = ShardClaim(
                    shard, int(stat.czxid), str(owner or ""), f"{int(stat.ephemeralOwner):#x}"
                )
        return found

    # -- run records ------------------------------------------------------------------------------

    def read_run(self, shard: int, timeout: float | None = None) -> RunRecord | None:
        with translated(f"reading the run record of shard {shard}"):
            try:
                raw, _ = self.client.get_async(f"{self.running_path}/{shard}").get(timeout=timeout)
            except NoNodeError:
                self._runs_exist.discard(shard)
                return None
        self._runs_exist.add(shard)
        try:
            return RunRecord.parse(shard, raw)
        except (ValueError, TypeError):
            return None

    def runs(self) -> dict[int, RunRecord]:
        found: dict[int, RunRecord] = {}
        with translated("reading the run records"):
            children = [c for c in self._children(self.running_path) if c.isdigit()]
            pending = [
                (int(c), self.client.get_async(f"{self.running_path}/{c}")) for c in children
            ]
            for shard, request in pending:
                try:
                    raw, _ = request.get(timeout=self.negotiated_timeout)
                    found[shard] = RunRecord.parse(shard, raw)
                except (NoNodeError, ValueError, TypeError):
                    continue
        return found

    def begin_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """Check the claim and the member node, and write the record: one transaction.

        A lost reply does not mean a lost write: like ``register``, find our own record.
        """
        session = self.session_id
        try:
            return self._fenced_write(claim, record)
        except ConnectionLoss:
            return self._committed(record, session)
        except (SessionExpiredError, KazooException, KazooTimeoutError):
            return False

    def end_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        try:
            return self._fenced_write(claim, record)
        except (ConnectionLoss, KazooTimeoutError) as exc:
            raise BackendUnavailable(
                f"could not record the end of the run of shard {claim.shard}: {exc!r}"
            ) from exc
        except (SessionExpiredError, KazooException):
            return False

    def _fenced_write(self, claim: ShardClaim, record: RunRecord) -> bool:
        shard = claim.shard
        version, member = claim.handle if isinstance(claim.handle, tuple) else (-1, "")
        path = f"{self.running_path}/{shard}"
        for create in (shard not in self._runs_exist, shard in self._runs_exist):
            transaction = self.client.transaction()
            transaction.check(f"{self.claims_path}/{shard}", -1)
            transaction.check(f"{self.fences_path}/{shard}", version)
            if member:
                transaction.check(f"{self.instances_path}/{member}", -1)
            if create:
                transaction.create(path, record.to_json())
            else:
                transaction.set_data(path, record.to_json(), -1)
            results = transaction.commit()
            failures = [r for r in results if isinstance(r, Exception)]
            if not failures:
                self._runs_exist.add(shard)
                return True
            last = results[-1]
            if isinstance(last, NodeExistsError):
                self._runs_exist.add(shard)  # created meanwhile (by us, a reply ago): set it
            elif isinstance(last, NoNodeError):
                self._runs_exist.discard(shard)
            else:
                return False  # the claim or the member check failed: fenced out
        return False

    def _committed(self, record: RunRecord, session: int) -> bool:
        """After a lost reply: True if the transaction was applied in ``session``.

        The transaction is atomic: a record carrying our run id means the claim and member
        checks passed too, and the same session after reconnecting means they still hold.
        Waits for the connection at most a third of the session timeout (the shard's thread
        must stay responsive in an outage); when in doubt the run does not start.
        """
        bound = self.negotiated_timeout / 3.0
        self._wait_connected(bound)
        if self.client.state != KazooState.CONNECTED or self.session_id != session:
            return False
        try:
            current = self.read_run(record.shard, timeout=bound)
        except BackendUnavailable:
            return False
        except Exception:  # noqa: BLE001 - in doubt: the run does not start
            return False
        return (
            current is not None
            and current.lease == record.lease
            and (current.run_id == record.run_id)
        )

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        path = f"{service_root(self.namespace, service)}/running/{shard}"

        def on_data(raw: bytes | None, stat: Any, *_event: Any) -> bool:
            try:
                record = None if raw is None else RunRecord.parse(shard, raw)
            except (ValueError, TypeError):
                record = None
            return callback(record)

        with translated(f"watching {service}'s run record of shard {shard}"):
            self.client.DataWatch(path, on_data)

    # -- settings and control ---------------------------------------------------------------------

    def _settings_watch(self, *_event: Any) -> None:
        self._on_change(Change.SETTINGS)

    def read_settings(self) -> dict[str, Any] | None:
        with translated("reading the service settings"):
            try:
                raw, _ = self.client.get(self.config_path, watch=self._settings_watch)
            except NoNodeError:
                self.client.exists(self.config_path, watch=self._settings_watch)
                return None
        return _json_object(raw)

    def write_settings(self, settings: dict[str, Any], create_only: bool) -> bool:
        raw = json.dumps(settings, sort_keys=True).encode()
        with translated("writing the service settings"):
            try:
                self.client.create(self.config_path, raw, makepath=True)
                return True
            except NodeExistsError:
                if create_only:
                    return False
            self.client.set(self.config_path, raw)
        return True

    def _control_watch(self, *_event: Any) -> None:
        self._on_change(Change.CONTROL)

    def read_control(self) -> ControlState:
        with translated("reading the control node"):
            try:
                raw, _ = self.client.get(self.control_path, watch=self._control_watch)
            except NoNodeError:
                self.client.exists(self.control_path, watch=self._control_watch)
                return ControlState()
        return ControlState.from_dict(_json_object(raw))

    def update_control(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Compare-and-set on the node's version, so concurrent requests are never lost."""
        with translated("writing the control node"):
            while True:
                try:
                    raw, stat = self.client.get(self.control_path)
                except NoNodeError:
                    state = change(ControlState())
                    try:
                        self.client.create(
                            self.control_path, json.dumps(state.to_dict()).encode(), makepath=True
                        )
                        return state
                    except NodeExistsError:
                        continue
                state = change(ControlState.from_dict(_json_object(raw)))
                try:
                    self.client.set(
                        self.control_path, json.dumps(state.to_dict()).encode(), stat.version
                    )
                    return state
                except BadVersionError:
                    continue


def _rank(node: str) -> int:
    return int(node.rsplit("-", 1)[1])


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
