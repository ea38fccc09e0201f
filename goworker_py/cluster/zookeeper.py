"""The ZooKeeper side of cluster mode: every node goworker-py reads or writes, through kazoo.

Layout under ``/<namespace>/<service>/``:

- ``config`` — persistent: the service's ``sharding_total_count``, ``params`` and schedule.
- ``instances/inst-<uuid>-<seq>`` — ephemeral sequential, one per live instance; data is its
  :class:`~goworker_py.instance.WorkerInstance` JSON (with the shards it owns). The uuid makes
  the create *protected*: after a connection loss the instance finds its own node instead of
  creating a twin. The sequence number is the instance's rank.
- ``claims/<shard>`` — ephemeral, held by the owner of the shard while it owns it. Its creation
  zxid (``czxid``) is the shard's **fencing token**: ZooKeeper's zxids only grow, so every new
  claim of a shard carries a larger token than any before it.
- ``running/<shard>`` — persistent run marker (owner, session, run id, fire time, state)
  written at run start (``running``) and updated at run end (``done``, ``failed`` or
  ``cancelled``); ``running`` found by a new owner means its predecessor died mid-run
  (failover), any other state gives the last fire time handled.
- ``control`` — persistent, optional: ``{"paused": bool, "trigger": n, "stop_run": n}``,
  written by ``goworker-py pause|resume|trigger|stop-run`` (:mod:`goworker_py.cluster.admin`).
  Every instance watches it; a counter that grows asks each instance to act on its shards.

Watch callbacks run on kazoo's thread: they only call ``on_change`` (which sets an event);
all the work happens on the worker's supervisor thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from goworker_py.cluster.kazoo_clock import ReplyClock
from goworker_py.cluster.nodes import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    Claim,
    Member,
    RunMarker,
    kazoo_client,
    service_root,
    start_client,
)
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import ClusterError, DiscoveryError
from goworker_py.instance import WorkerInstance

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "RUNNING",
    "Claim",
    "Member",
    "RunMarker",
    "ZooKeeperDiscovery",
    "kazoo_client",
    "service_root",
]

_INSTANCE_PREFIX = "inst-"


class ZooKeeperDiscovery:
    """One instance's connection to ZooKeeper and every operation cluster mode needs."""

    protocol = "zookeeper"

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError("discovery hosts are empty: set DiscoveryConfig(hosts='zk:2181')")
        self.config = config
        self.service = service
        root = service_root(config.namespace, service)
        self.root = root
        self.instances_path = f"{root}/instances"
        self.claims_path = f"{root}/claims"
        self.running_path = f"{root}/running"
        self.config_path = f"{root}/config"
        self.control_path = f"{root}/control"
        self.on_change: Callable[[], None] = lambda: None
        self.on_state: Callable[[str], None] = lambda state: None
        self.node: str | None = None
        self._lock = threading.Lock()
        #: ``{shard: (session id, version)}`` of the run markers this instance wrote.
        self._markers: dict[int, tuple[int, int | None]] = {}
        self.config_dirty = True
        self.control_dirty = True
        self._members_session = -1
        self._member_list_dirty = True
        self._member_order: list[tuple[int, str]] = []
        self._member_cache: dict[str, Member] = {}
        self._dirty_members: set[str] = set()
        self.client = kazoo_client(config)
        self._clock = ReplyClock(self.client, config.session_timeout)
        self.client.add_listener(self._state_listener)

    # -- connection -------------------------------------------------------------------------------

    @property
    def negotiated_timeout(self) -> float:
        """The session timeout the server granted (seconds; the requested one until then)."""
        return self._clock.negotiated_timeout

    @property
    def answered_at(self) -> float:
        """``time.monotonic()`` send time of the latest request the server answered."""
        return self._clock.answered_at

    def lease_valid_until(self) -> float:
        """``time.monotonic()`` instant before which the server certainly keeps our session.

        Computed from completed replies only (see :mod:`~goworker_py.cluster.kazoo_clock`).
        """
        return self._clock.lease_valid_until()

    def round_trip(self, timeout: float) -> None:
        """One request answered by the server within ``timeout`` s (else kazoo's errors)."""
        self.client.exists_async(self.instances_path).get(timeout=timeout)

    def _state_listener(self, state: str) -> None:
        # kazoo's thread: record and signal only.
        self.on_state(state)
        self.on_change()

    def _watch(self, *_event: Any) -> None:
        self.on_change()

    def connect(self) -> None:
        """Connect and check access; raise a clear error instead of hanging."""
        start_client(self.client, self.config)
        try:
            for path in (self.instances_path, self.claims_path, self.running_path):
                self.client.ensure_path(path)
            self.client.get_children(self.instances_path)
        except (NoAuthError, AuthFailedError) as exc:
            self.close()
            raise DiscoveryError(
                f"ZooKeeper denied access to {self.root}: check auth_user/auth_password "
                "(the nodes belong to other credentials)"
            ) from exc

    @property
    def session_id(self) -> int:
        """The current session id (0 when there is none)."""
        client_id = self.client.client_id
        return int(client_id[0]) if client_id else 0

    @property
    def connected(self) -> bool:
        """True while the client is connected."""
        return bool(self.client.state == KazooState.CONNECTED)

    def close(self) -> None:
        """Stop the client; its ephemeral nodes vanish at once (a clean session close)."""
        try:
            self.client.stop()
        finally:
            self.client.close()

    # -- service config ---------------------------------------------------------------------------

    def _config_watch(self, *_event: Any) -> None:
        self.config_dirty = True
        self.on_change()

    def read_service_config(self, watch: bool = True) -> dict[str, Any] | None:
        """The stored service settings, or None; with ``watch``, re-arms the config watch.

        ``config_dirty`` says whether the node may have changed since the last watched read.
        """
        if watch:
            self.config_dirty = False
        callback = self._config_watch if watch else None
        try:
            raw, _ = self.client.get(self.config_path, watch=callback)
        except NoNodeError:
            if watch:
                self.client.exists(self.config_path, watch=callback)
            return None
        data: dict[str, Any] = json.loads(raw.decode() or "{}")
        return data

    def write_service_config(self, settings: dict[str, Any], create_only: bool) -> bool:
        """Create (or overwrite) the settings; False if ``create_only`` and it already exists."""
        raw = json.dumps(settings, sort_keys=True).encode()
        try:
            self.client.create(self.config_path, raw, makepath=True)
            return True
        except NodeExistsError:
            if create_only:
                return False
        self.client.set(self.config_path, raw)
        return True

    # -- control node -----------------------------------------------------------------------------

    def _control_watch(self, *_event: Any) -> None:
        self.control_dirty = True
        self.on_change()

    def read_control(self) -> dict[str, Any] | None:
        """The service's control node (pause, trigger and stop-run requests), watched; or None.

        ``control_dirty`` says whether the node may have changed since the last read.
        """
        self.control_dirty = False
        try:
            raw, _ = self.client.get(self.control_path, watch=self._control_watch)
        except NoNodeError:
            self.client.exists(self.control_path, watch=self._control_watch)
            return None
        try:
            data = json.loads(raw.decode() or "{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> str:
        """Create this instance's ephemeral sequential node (protected); return its name."""
        marker = uuid.uuid4().hex
        prefix = f"{self.instances_path}/{_INSTANCE_PREFIX}{marker}-"
        for _ in range(10):
            try:
                path = self.client.create(prefix, instance.to_json(), ephemeral=True, sequence=True)
                self.node = path.rsplit("/", 1)[1]
                return self.node
            except ConnectionLoss:
                # The create may have happened: look for our uuid before trying again.
                self._wait_connected(self.negotiated_timeout)
                for child in self._children(self.instances_path):
                    if marker in child:
                        self.node = child
                        return child
        raise ClusterError("could not register the instance in ZooKeeper after 10 attempts")

    def unregister(self) -> None:
        """Delete this instance's node (clean leave)."""
        if self.node is None:
            return
        with contextlib.suppress(NoNodeError, SessionExpiredError, ConnectionLoss):
            self.client.delete(f"{self.instances_path}/{self.node}")
        self.node = None

    def node_exists(self) -> bool:
        """True while this instance's node exists (False when it was deleted under us)."""
        if self.node is None:
            return False
        return self.client.exists(f"{self.instances_path}/{self.node}") is not None

    def publish(self, instance: WorkerInstance) -> None:
        """Write this instance's data (its shards and health) to its node."""
        if self.node is None:
            return
        self.client.set(f"{self.instances_path}/{self.node}", instance.to_json())

    def _members_watch(self, *_event: Any) -> None:
        self._member_list_dirty = True
        self.on_change()

    def _member_watch(self, event: Any = None) -> None:
        path = getattr(event, "path", None)
        if path:
            self._dirty_members.add(path.rsplit("/", 1)[1])
        else:
            self._member_list_dirty = True
        self.on_change()

    def members(self) -> list[Member]:
        """Live members in rank order, re-reading only what changed since the last call.

        The member list and each member's data are cached behind their own watches, so a
        re-balance pass costs a read per *changed* node, not one per member: with N members
        publishing in turn, re-reading everyone on every pass would cost O(N^2) reads.
        """
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
                (int(child.rsplit("-", 1)[1]), child)
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
                sequence,
                child,
                self.client.get_async(f"{self.instances_path}/{child}", self._member_watch),
            )
            for sequence, child in self._member_order
            if child in stale or child not in self._member_cache
        ]
        for sequence, child, request in pending:
            try:
                raw, _ = request.get(timeout=self.negotiated_timeout)
            except NoNodeError:
                self._member_cache.pop(child, None)
                continue
            self._member_cache[child] = Member(child, sequence, WorkerInstance.from_json(raw))
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
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, shard: int, owner: str) -> Claim | None:
        """Take the claim of ``shard``; None (and a watch armed) if someone else holds it."""
        path = f"{self.claims_path}/{shard}"
        data = json.dumps({"owner": owner, "session": self.session_id}).encode()
        try:
            _, stat = self.client.create(path, data, ephemeral=True, include_data=True)
            return Claim(shard, int(stat.czxid), int(stat.version), self.node or "")
        except NodeExistsError:
            pass
        except ConnectionLoss:
            self._wait_connected(self.negotiated_timeout)
        try:
            raw, stat = self.client.get(path)
        except NoNodeError:
            self._watch()  # it vanished meanwhile: look again at once
            return None
        if stat.ephemeralOwner == self.session_id and json.loads(raw).get("owner") == owner:
            return Claim(shard, int(stat.czxid), int(stat.version), self.node or "")
        if self.client.exists(path, watch=self._watch) is None:
            self._watch()
        return None

    def release(self, claim: Claim) -> None:
        """Give the claim up (only if it is still ours)."""
        with contextlib.suppress(NoNodeError, BadVersionError, SessionExpiredError):
            self.client.delete(f"{self.claims_path}/{claim.shard}", version=claim.version)

    def claim_owners(self) -> dict[int, int]:
        """``{shard: session id}`` of every existing claim (observers and tests)."""
        owners: dict[int, int] = {}
        for child in self._children(self.claims_path):
            stat = self.client.exists(f"{self.claims_path}/{child}")
            if stat is not None and child.isdigit():
                owners[int(child)] = int(stat.ephemeralOwner)
        return owners

    # -- run markers ------------------------------------------------------------------------------

    def read_marker(self, shard: int, timeout: float | None = None) -> RunMarker | None:
        """The run marker of ``shard``, if one exists (waiting at most ``timeout`` seconds)."""
        try:
            raw, stat = self.client.get_async(f"{self.running_path}/{shard}").get(timeout=timeout)
        except NoNodeError:
            return None
        return RunMarker.parse(shard, raw, int(stat.version))

    def watch_marker(
        self, service: str, shard: int, callback: Callable[[RunMarker | None], bool]
    ) -> None:
        """Call ``callback`` with ``service``'s run marker of ``shard`` now and at each change.

        ``service`` is another service of the same namespace (a WorkerGroup upstream). The
        callback runs on kazoo's thread; returning False stops the watch.
        """
        path = f"{service_root(self.config.namespace, service)}/running/{shard}"

        def on_data(raw: bytes | None, stat: Any, *_event: Any) -> bool:
            try:
                marker = None if raw is None else RunMarker.parse(shard, raw, int(stat.version))
            except (ValueError, TypeError, AttributeError):
                marker = None
            return callback(marker)

        self.client.DataWatch(path, on_data)

    def adopt_marker(self, shard: int, marker: RunMarker | None) -> None:
        """Take over the marker found when claiming ``shard``: our runs replace it from now on."""
        self._markers[shard] = (self.session_id, None if marker is None else marker.version)

    def begin_run(self, claim: Claim, marker: RunMarker) -> bool:
        """Atomically check the claim is still ours and mark the run as running (one write).

        False when the claim is gone (session lost, shard moved): the run must not start.
        The claim's session is checked through its member node: after a session loss another
        instance's claim of the shard looks the same as ours (same path, version 0).
        """
        path = f"{self.running_path}/{claim.shard}"
        session = self.session_id
        known_session, version = self._markers.get(claim.shard, (0, None))
        if known_session != session:
            current = self.read_marker(claim.shard)
            version = None if current is None else current.version
        transaction = self.client.transaction()
        transaction.check(f"{self.claims_path}/{claim.shard}", claim.version)
        if claim.member:
            transaction.check(f"{self.instances_path}/{claim.member}", -1)
        if version is None:
            transaction.create(path, marker.to_json())
        else:
            transaction.set_data(path, marker.to_json(), version)
        try:
            results = transaction.commit()
        except ConnectionLoss:
            # The reply was lost, not necessarily the write: find our own marker, as register()
            # finds its own node. The cached version is stale either way.
            self._markers.pop(claim.shard, None)
            return self._committed(claim.shard, marker, session)
        except (SessionExpiredError, KazooException):
            self._markers.pop(claim.shard, None)
            return False
        if any(isinstance(result, Exception) for result in results):
            self._markers.pop(claim.shard, None)
            return False
        self._markers[claim.shard] = (session, 0 if version is None else version + 1)
        return True

    def _committed(self, shard: int, marker: RunMarker, session: int) -> bool:
        """After a lost reply: True if ``begin_run``'s transaction was applied in ``session``.

        The transaction is atomic: a marker carrying our run id means the claim and member
        checks passed too, and the same session after reconnecting means they still hold.
        Waits for the connection at most a third of the session timeout (the shard's thread
        must stay responsive in an outage); when in doubt the run does not start.
        """
        bound = self.negotiated_timeout / 3.0
        self._wait_connected(bound)
        if not self.connected or self.session_id != session:
            return False
        try:
            current = self.read_marker(shard, timeout=bound)
        except (KazooException, self.client.handler.timeout_exception):
            return False
        if current is None or current.session != session or current.run_id != marker.run_id:
            return False
        self._markers[shard] = (session, current.version)
        return True

    def end_run(self, marker: RunMarker) -> None:
        """Record how the run ended (one write): ``marker.state`` is done, failed or cancelled.

        Only over the marker this session wrote: once the session that began the run is lost,
        the marker belongs to the shard's next owner (who may have replaced it already).
        """
        session, version = self._markers.get(marker.shard, (0, None))
        if session != self.session_id or version is None:
            return
        try:
            stat = self.client.set(f"{self.running_path}/{marker.shard}", marker.to_json(), version)
        except (NoNodeError, BadVersionError):
            self._markers.pop(marker.shard, None)
            return
        except ConnectionLoss:
            # The reply was lost, not necessarily the write: the cached version is stale either
            # way, and the next begin_run would be refused for it. It reads the marker again.
            self._markers.pop(marker.shard, None)
            raise
        self._markers[marker.shard] = (session, int(stat.version))
