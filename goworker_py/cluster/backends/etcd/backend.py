"""The etcd v3 coordination backend: :class:`EtcdBackend` (see the package docstring for the
key layout and the guarantees)."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    CoordinationBackend,
    Guarantee,
    Member,
    RunRecord,
    ShardClaim,
)
from goworker_py.cluster.backends.etcd import keys
from goworker_py.cluster.backends.etcd.lease import LeaseKeeper
from goworker_py.cluster.backends.etcd.runs import RunWatches
from goworker_py.cluster.backends.etcd.transport import Transport, encode, prefix_end
from goworker_py.cluster.backends.etcd.watches import Dispatcher, KeyEvent, PrefixWatch
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendError, LeaseLost, MemberGone
from goworker_py.instance import WorkerInstance

#: Attempts of one :meth:`EtcdBackend.update_control` before it gives up (each lost to another
#: writer of the control key).
CONTROL_ATTEMPTS = 100


class EtcdBackend:
    """One instance's (or one admin client's) connection to etcd v3, through its HTTP gateway.

    Calls made by the supervisor block at most the connect timeout; ``begin_run`` and
    ``end_run`` at most a third of the lease's TTL.
    """

    protocol = "etcdv3"
    guarantees = frozenset(
        {
            Guarantee.TOKENS_GROW,
            Guarantee.CLAIMS_VANISH_WITH_LEASE,
            Guarantee.FENCED_BEGIN,
            Guarantee.SERVER_EXPIRY,
            Guarantee.DURABLE,
        }
    )

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        self.config = config
        self.service = service
        self.root = keys.service_prefix(config.namespace, service)
        self._transport = Transport(config)
        self._session = self._transport.session()
        self._budget = float(config.connect_timeout)
        self._lease = LeaseKeeper(
            self._transport, max(1, math.ceil(config.session_timeout)), self._on_state
        )
        self._on_change: Callable[[Change], None] | None = None
        self._dispatcher: Dispatcher | None = None
        self._watch: PrefixWatch | None = None
        self._runs: RunWatches | None = None
        #: This instance's member key and its create revision (its rank), once registered.
        self._member: tuple[str, int] | None = None
        #: Shards whose claim this instance found held by another: their deletion is a CLAIMS.
        self._awaited: set[int] = set()
        self._connected = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<EtcdBackend {self.config.hosts} {self.root} lease={self.lease_id or '-'}>"

    # -- connection and lease ---------------------------------------------------------------------

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        """Reach etcd within the connect timeout, authenticate, check access to the service's
        keys, grant the lease and start the keep-alive, the watch and the callback threads."""
        if self._connected or self._closed:
            raise BackendError(f"{self!r} was connected already (make a new backend)")
        self._on_change = on_change
        deadline = time.monotonic() + self._budget
        try:
            self._transport.discover(self._session, self._budget)
            self._transport.authenticate(self._session, self._left(deadline))
            # A read of the service's keys: checks access, and the revision watches start after.
            after = keys.revision(self._call("kv/range", keys.prefix_count(self.root), deadline))
            self._lease.grant(self._left(deadline))
        except BaseException:
            self._transport.close()
            raise
        self._dispatcher = Dispatcher(f"goworker-etcd-callbacks {self.service}")
        self._runs = RunWatches(
            self._transport,
            self.config.namespace,
            lambda path, body, deadline: self._call(path, body, deadline),
            self._dispatcher.submit,
            lambda: min(self._budget, self._lease.interval),
        )
        self._watch = PrefixWatch(
            self._transport, self.root, after, self._service_events, self._service_resync
        ).start()
        self._lease.start()
        self._connected = True

    def close(self) -> None:
        """Revoke the lease (this instance's keys vanish at once) and stop every thread."""
        if self._closed:
            return
        self._closed = True
        self._lease.close()
        if self._connected:
            # Unreachable: etcd expires the lease after its TTL instead.
            with contextlib.suppress(BackendError):
                self._lease.revoke(min(self._budget, max(self._lease.interval, 1.0)))
        if self._runs is not None:
            self._runs.close()
        if self._watch is not None:
            self._watch.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        self._member = None
        self._transport.close()

    @property
    def state(self) -> ConnectionState:
        """``CONNECTED`` while keep-alives get through, ``SUSPENDED`` once one failed, ``LOST``
        from etcd's "lease not found" until a new lease is granted."""
        return ConnectionState.LOST if self._closed else self._lease.state

    @property
    def lease_id(self) -> str:
        """The lease's id in hex, as etcdctl shows it ("" when none is held)."""
        lease = self._lease.lease
        return f"{lease:x}" if lease else ""

    @property
    def negotiated_timeout(self) -> float:
        """The lease's TTL etcd granted (whole seconds: at least the session timeout)."""
        return self._lease.ttl

    @property
    def answered_at(self) -> float:
        """Send time of the latest keep-alive etcd answered (only those renew the lease)."""
        return self._lease.answered_at

    @property
    def keepalive_requests(self) -> int:
        """Keep-alive and grant requests sent so far (the idle traffic of an instance)."""
        return self._lease.requests

    def lease_valid_until(self) -> float:
        """That send time plus the TTL: before it, etcd certainly keeps the lease."""
        return self._lease.lease_valid_until()

    def round_trip(self, timeout: float) -> None:
        """A keep-alive of the lease answered within ``timeout`` (it renews the lease too);
        :class:`LeaseLost` if etcd expired it."""
        self._lease.keep_alive(timeout)

    def _on_state(self, state: ConnectionState) -> None:
        # The keeper's thread (or the one whose request found out): signal, nothing more.
        if state is not ConnectionState.CONNECTED:
            # A LOST told late (another thread's request found out) may come after the keeper
            # granted a new lease and the host registered on it: keep that registration.
            if state is ConnectionState.LOST and self._lease.lease == 0:
                self._member = None
        else:
            # Keep-alives get through again: any stream that died meanwhile resumes now.
            for watch in self._watches():
                watch.restart()
        self._emit(Change.CONNECTION)

    def _watches(self) -> list[PrefixWatch]:
        runs = self._runs.watches() if self._runs is not None else []
        return [watch for watch in (self._watch, *runs) if watch is not None]

    def _emit(self, change: Change) -> None:
        callback, dispatcher = self._on_change, self._dispatcher
        if callback is not None and dispatcher is not None:
            dispatcher.submit(lambda: callback(change))

    # -- requests ---------------------------------------------------------------------------------

    def _left(self, deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.001)

    def _call(
        self, path: str, body: dict[str, Any], deadline: float | None = None
    ) -> dict[str, Any]:
        if self._closed:
            raise BackendError(f"{self!r} is closed")
        budget = self._budget if deadline is None else self._left(deadline)
        try:
            return self._transport.call(path, body, budget, self._session)
        except LeaseLost:
            self._lease.check_now()
            raise

    def _txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
        deadline: float | None = None,
    ) -> dict[str, Any]:
        body = {"compare": compare, "success": success, "failure": failure}
        return self._call("kv/txn", body, deadline)

    def _get(self, key: str) -> keys.KV | None:
        found = keys.kvs(self._call("kv/range", {"key": encode(key)}))
        return found[0] if found else None

    def _get_prefix(self, prefix: str) -> list[keys.KV]:
        body = {
            "key": encode(prefix),
            "range_end": prefix_end(prefix),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
        }
        return keys.kvs(self._call("kv/range", body))

    def _held_lease(self) -> int:
        lease = self._lease.lease
        if not lease:
            raise LeaseLost(f"{self!r}: no lease held (etcd expired it; a new one is coming)")
        return lease

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> Member:
        """Create ``members/<instance id>-<nonce>`` on the lease, if absent: a retried request
        finds its own key (same lease) instead of making a twin. Rank = its create revision."""
        lease = self._held_lease()
        name = f"{instance.id}-{uuid.uuid4().hex[:8]}"
        key = f"{self.root}members/{name}"
        reply = self._txn(
            [keys.compare(key, "CREATE", 0)],
            [keys.put(key, instance.to_json(), lease)],
            [keys.get(key)],
        )
        if reply.get("succeeded"):
            rank = keys.revision(reply)
        else:
            found = keys.failure_kv(reply)
            if found is None or found.lease != lease:
                raise BackendError(f"etcd: member key {key} belongs to another lease")
            rank = found.create_revision
        self._member = (key, rank)
        return Member(key=name, rank=rank, lease=f"{lease:x}", instance=instance)

    def unregister(self) -> None:
        """Delete this instance's member key (only exactly that one)."""
        member, self._member = self._member, None
        if member is None:
            return
        key, rank = member
        delete = {"request_delete_range": {"key": encode(key)}}
        self._txn([keys.compare(key, "CREATE", rank)], [delete], [])

    def registered(self) -> bool:
        """True while this registration's member key exists."""
        member = self._member
        if member is None:
            return False
        found = self._get(member[0])
        return found is not None and found.create_revision == member[1]

    def publish(self, instance: WorkerInstance) -> None:
        """Replace this instance's member data (on the lease); :class:`MemberGone` if the key
        is gone (deleted by hand, or with its lease): register again."""
        member = self._member
        if member is None:
            raise MemberGone(f"{self!r}: not registered")
        key, rank = member
        reply = self._txn(
            [keys.compare(key, "CREATE", rank)],
            [keys.put(key, instance.to_json(), self._held_lease())],
            [],
        )
        if not reply.get("succeeded"):
            self._member = None
            raise MemberGone(f"{self!r}: this instance's member key {key} is gone")

    def members(self) -> list[Member]:
        """Every live member, in rank (create revision) order; unreadable entries skipped."""
        prefix = f"{self.root}members/"
        found: list[Member] = []
        for kv in self._get_prefix(prefix):
            try:
                instance = WorkerInstance.from_json(kv.value)
            except (ValueError, TypeError, KeyError):
                continue
            found.append(
                Member(
                    key=kv.key[len(prefix) :],
                    rank=kv.create_revision,
                    lease=f"{kv.lease:x}",
                    instance=instance,
                )
            )
        return sorted(found, key=lambda member: member.rank)

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, shard: int, owner: str) -> ShardClaim | None:
        """Create ``claims/<shard>`` on the lease if absent; its create revision is the fencing
        token. None if another lease holds it (a ``CLAIMS`` change follows its deletion)."""
        lease = self._held_lease()
        key = f"{self.root}claims/{shard}"
        value = json.dumps({"owner": owner, "lease": f"{lease:x}"}).encode()
        # Awaited before the request: the holder's deletion comes after it, never missed.
        self._awaited.add(shard)
        reply = self._txn(
            [keys.compare(key, "CREATE", 0)], [keys.put(key, value, lease)], [keys.get(key)]
        )
        if reply.get("succeeded"):
            self._awaited.discard(shard)
            return ShardClaim(shard=shard, token=keys.revision(reply), owner=owner, handle=key)
        found = keys.failure_kv(reply)
        if found is None:
            self._emit(Change.CLAIMS)  # gone meanwhile: look again at once
            return None
        if found.lease == lease and keys.owner(found) == owner:
            # Ours already (a retried request whose first reply was lost).
            self._awaited.discard(shard)
            return ShardClaim(shard=shard, token=found.create_revision, owner=owner, handle=key)
        return None

    def release(self, claim: ShardClaim) -> None:
        """Delete the claim key if it is still exactly this claim (same create revision)."""
        key = f"{self.root}claims/{claim.shard}"
        delete = {"request_delete_range": {"key": encode(key)}}
        self._txn([keys.compare(key, "CREATE", claim.token)], [delete], [])

    def claims(self) -> dict[int, ShardClaim]:
        """Every claim of the service."""
        prefix = f"{self.root}claims/"
        found: dict[int, ShardClaim] = {}
        for kv in self._get_prefix(prefix):
            name = kv.key[len(prefix) :]
            if name.isdigit():
                shard = int(name)
                found[shard] = ShardClaim(shard, kv.create_revision, keys.owner(kv), kv.key)
        return found

    # -- run records ------------------------------------------------------------------------------

    def read_run(self, shard: int) -> RunRecord | None:
        """The run record of ``shard`` (None if absent or unreadable)."""
        return keys.record(shard, self._get(f"{self.root}runs/{shard}"))

    def runs(self) -> dict[int, RunRecord]:
        """Every readable run record of the service."""
        prefix = f"{self.root}runs/"
        found: dict[int, RunRecord] = {}
        for kv in self._get_prefix(prefix):
            name = kv.key[len(prefix) :]
            if name.isdigit() and (record := keys.record(int(name), kv)) is not None:
                found[record.shard] = record
        return found

    def begin_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """One transaction: if the claim key still has the claim's create revision and this
        registration's member key exists, write the run record. See :meth:`_fenced_write`."""
        return self._fenced_write(claim, record)

    def end_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """Fenced like :meth:`begin_run`."""
        return self._fenced_write(claim, record)

    def _fenced_write(self, claim: ShardClaim, record: RunRecord) -> bool:
        """Write ``record`` iff the claim and the member key hold — within a third of the TTL.

        The transaction may be sent again after a lost reply; its failure branch reads the
        record, so a second attempt that finds its own record (the first one was applied) is a
        success, and the answer never needs another round trip. :class:`BackendUnavailable`
        when etcd did not answer in time (the outcome is unknown: the run must not start).
        """
        member = self._member
        if member is None:
            return False
        key = f"{self.root}runs/{claim.shard}"
        value = record.to_json()
        compare = [
            keys.compare(f"{self.root}claims/{claim.shard}", "CREATE", claim.token),
            keys.compare(member[0], "CREATE", member[1]),
        ]
        deadline = time.monotonic() + self._lease.interval
        reply = self._txn(compare, [keys.put(key, value)], [keys.get(key)], deadline)
        if reply.get("succeeded"):
            return True
        found = keys.failure_kv(reply)
        return found is not None and found.value == value

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        """Call ``callback`` with ``service``'s record of ``shard`` now and on each change, on
        the callback thread, until it returns False (see :mod:`.runs`)."""
        if self._runs is None:
            raise BackendError(f"{self!r} is not connected")
        self._runs.watch(service, shard, callback)

    # -- settings and control ---------------------------------------------------------------------

    def read_settings(self) -> dict[str, Any] | None:
        """The stored settings, or None; :class:`BackendError` if they are not a JSON object."""
        found = self._get(f"{self.root}settings")
        if found is None:
            return None
        try:
            data = json.loads(found.value)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(f"etcd: {self.root}settings holds no JSON object: {found.value!r}")
        return data

    def write_settings(self, settings: dict[str, Any], create_only: bool) -> bool:
        """Store the settings; with ``create_only``, only if none are (one transaction)."""
        key = f"{self.root}settings"
        value = json.dumps(settings, sort_keys=True).encode()
        if not create_only:
            self._call("kv/put", {"key": encode(key), "value": encode(value)})
            return True
        reply = self._txn([keys.compare(key, "CREATE", 0)], [keys.put(key, value)], [])
        return bool(reply.get("succeeded"))

    def read_control(self) -> ControlState:
        """The control state (nothing requested when none was written, or it is unreadable)."""
        return keys.control(self._get(f"{self.root}control"))

    def update_control(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Compare-and-set on the control key's mod revision, retried until it wins.

        Each attempt writes a nonce with the state: when a reply is lost and the transaction
        sent again, finding its own nonce means the first one was applied (never twice).
        """
        key = f"{self.root}control"
        found = self._get(key)
        for _ in range(CONTROL_ATTEMPTS):
            new = change(keys.control(found))
            nonce = uuid.uuid4().hex
            value = json.dumps({**new.to_dict(), "nonce": nonce}).encode()
            revision = 0 if found is None else found.mod_revision
            reply = self._txn(
                [keys.compare(key, "MOD", revision)], [keys.put(key, value)], [keys.get(key)]
            )
            if reply.get("succeeded"):
                return new
            found = keys.failure_kv(reply)
            if found is not None and keys.nonce(found) == nonce:
                return new
        raise BackendError(f"etcd: {key} kept changing: gave up after {CONTROL_ATTEMPTS} tries")

    # -- the service's watch ----------------------------------------------------------------------

    def _service_events(self, events: list[KeyEvent]) -> None:
        # The watch thread: map keys to change kinds, hand them on.
        changes: list[Change] = []
        for event in events:
            name = event.key[len(self.root) :]
            if name.startswith("members/"):
                change = Change.MEMBERS
            elif name.startswith("claims/") and event.deleted:
                # Only a claim this instance waits for (as ZooKeeper's one-shot watch on it):
                # every instance woken by every release makes a re-balance crawl.
                shard = name[len("claims/") :]
                if not shard.isdigit() or int(shard) not in self._awaited:
                    continue
                self._awaited.discard(int(shard))
                change = Change.CLAIMS
            elif name == "settings":
                change = Change.SETTINGS
            elif name == "control":
                change = Change.CONTROL
            else:
                continue
            if change not in changes:
                changes.append(change)
        for change in changes:
            self._emit(change)

    def _service_resync(self) -> None:
        for change in (Change.MEMBERS, Change.CLAIMS, Change.SETTINGS, Change.CONTROL):
            self._emit(change)


def _conforms(backend: EtcdBackend) -> CoordinationBackend:
    """mypy checks here that :class:`EtcdBackend` implements the seam as declared."""
    return backend
