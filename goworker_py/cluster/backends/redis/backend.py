"""The Redis coordination backend (``DiscoveryConfig(protocol="redis")``, on redis-py).

Expiry is decided only by the Redis server's TTLs, never by comparing hosts' clocks (the Go
package's bug). Every step is one Lua script (:mod:`.scripts`), so one round trip.

Keys, under ``P = "<namespace>:<service>:"``:

- ``P lease:<lease>`` — hash, TTL = session timeout: the lease. ``<lease>`` is a random token
  per lease; field ``holder`` (host:pid) and one field ``c<shard>`` per claim it holds (the
  claim's exact value). The ``TICK`` script refreshes it every T/3 together with its member key
  and claims — only while it still exists, and only while every claim it lists still holds
  exactly that value. A key that expired is never re-created: a new lease gets a new id.
- ``P member:<lease>`` — string, the member's :class:`~goworker_py.instance.WorkerInstance` JSON;
  expires with its lease (created with the lease's PTTL, refreshed with it).
- ``P members`` — sorted set ``lease -> rank``; ``P members:rank`` — the INCR counter ranks
  come from. Entries whose member key expired are pruned by the next ``TICK`` of any instance.
- ``P claim:<shard>`` — string ``{"owner", "lease", "token"}`` set NX with the lease's PTTL;
  ``P claims`` — set of the shards that may have a claim (pruned like ``members``).
- ``P claims:<shard>:token`` — the shard's fencing token counter (no TTL).
- ``P run:<shard>`` — the shard's :class:`~goworker_py.cluster.backend.RunRecord` JSON (no TTL);
  ``P runs`` — set of the shards that have one.
- ``P settings``, ``P control`` — JSON (no TTL).
- ``P seq`` — the change counter; channel ``P changes`` — ``"<seq> <kind>"`` for every change
  (``members``, ``claims``, ``settings``, ``control``, ``run:<shard>``); channel
  ``P wake:<id>`` — wakes one backend's listener thread.

Changes reach the host through the ``changes`` channel; expiries (which publish nothing) are
found by the ``TICK`` poll every T/3, timed earlier to the next expiry the server reports (its
PTTL), and — when the server has ``notify-keyspace-events`` on (``Ex``, ``Eg``) — by keyspace
events too; they are never required (``CONFIG GET`` may be refused). A listener that missed
messages (a lost or silently dead pub/sub connection) is caught by the ``seq`` counter the
``TICK`` returns: everything is reported again.

Fencing tokens. A claim's token is ``max(counter + 1, the shard's run record's token + 1, the
Redis server's TIME in microseconds)``, stored back into the counter, all in one script. While
the server lives, tokens grow with every new owner whatever the clocks do (the counter). After
a restart *without persistence* (every key gone, counters reset) tokens go on from the server's
clock, above every earlier token as long as the Redis host's clock did not step back by more
than the downtime (a token runs ahead of the clock only with more than a million claims of one
shard per second). The one clock read is the Redis server's own; no host's clock is compared
with another's, and no expiry depends on it.

Guarantees. With one primary (or a Sentinel-managed primary) a shard has one owner while that
primary lives: a claim is taken only if absent, vanishes with its lease, and ``begin_run`` /
``end_run`` write only while the claim is exactly the caller's and its member key exists; an
owner cut off from the server stops its runs by ``lease_valid_until()`` (self-fencing), before
the server can expire its keys. A failover with asynchronous replication can lose a lease, a
claim or a counter update: another instance may then claim a shard its old owner still runs.
The old owner stops at its next ``TICK`` on the new primary (at most T/3 later; a lease or a
claim gone is LOST, and the host cancels its runs), or by self-fencing if it cannot reach one.
During that window fencing tokens are what still protects a storage that checks them: the new
owner's token exceeds the lost one as long as the Redis servers' clocks agree to within the
time between the two claims (a failover takes seconds: Sentinel's detection delay), so the
stale owner's writes are refused. The backend follows a failover only if ``hosts`` names an
address that moves to the new primary (a DNS name, a virtual IP, a proxy): Sentinel discovery
is not built in. Nothing survives a restart without persistence except the tokens' growth
(no ``DURABLE``).

Threads: a ticker (``TICK`` every T/3; replaces a lost lease) and a pub/sub listener
(:mod:`.changes`); ``on_change`` runs on either. Requests time out after
``min(T/3, connect_timeout)``; a connection reset is retried once (every script is idempotent,
see :mod:`.client`). ``hosts`` may list several servers: the first that answers at
connect time is used, for the backend's whole life.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from goworker_py.cluster.backend import (
    ControlState,
    Guarantee,
    Member,
    RunRecord,
    ShardClaim,
)
from goworker_py.cluster.backends.redis.lease import RedisLease, check_service, parse_run
from goworker_py.errors import BackendError, BackendUnavailable, LeaseLost, MemberGone
from goworker_py.instance import WorkerInstance

if TYPE_CHECKING:
    from goworker_py.cluster.backend import CoordinationBackend

#: Compare-and-set attempts of ``update_control`` before giving up.
CAS_ATTEMPTS = 100


@dataclass(frozen=True)
class RedisClaimHandle:
    """What identifies exactly one claim: its lease and the claim key's value."""

    lease: str
    value: str


class RedisBackend(RedisLease):
    """One instance's (or admin client's) connection to Redis; see the module docstring.

    A lease is taken by the first :meth:`register` (an admin client never holds one); once the
    server expired it, the state is LOST until the ticker has a new one (a new id: ``lease_id``
    changes) — the host then registers again, with a new member key and rank.
    """

    protocol = "redis"
    guarantees = frozenset(
        {
            Guarantee.TOKENS_GROW,
            Guarantee.CLAIMS_VANISH_WITH_LEASE,
            Guarantee.FENCED_BEGIN,
            Guarantee.SERVER_EXPIRY,
        }
    )

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> Member:
        """Add this instance's member key under the lease (a new lease after a lost one)."""
        for _ in range(3):
            lease = self._lease or self._new_lease()
            reply = self._call("register", self.prefix, lease, instance.to_json().decode())
            if int(reply[0]) < 0:
                self._lease_gone(lease, "it expired before register")
                continue
            return Member(self.prefix + "member:" + lease, int(reply[1]), lease, instance)
        raise LeaseLost("Redis expired three new leases in a row during register")

    def unregister(self) -> None:
        """Delete this instance's member key (the lease and its claims stay)."""
        if lease := self._lease:
            self._call("unregister", self.prefix, lease)

    def registered(self) -> bool:
        """True while this lease's member key exists."""
        lease = self._lease
        return bool(lease) and self._get(self.prefix + "member:" + lease) is not None

    def publish(self, instance: WorkerInstance) -> None:
        """Replace this instance's member data; :class:`MemberGone` if its key vanished."""
        lease = self._lease
        if not lease:
            raise MemberGone("this instance is not registered (no Redis lease)")
        written = int(self._call("publish", self.prefix, lease, instance.to_json().decode()))
        if written < 0:
            self._lease_gone(lease, "it expired before publish")
            raise LeaseLost("the Redis lease expired")
        if written == 0:
            raise MemberGone("this instance's member key is gone: register again")

    def members(self) -> list[Member]:
        """Live members in rank order."""
        reply = self._call("members", self.prefix)
        found = []
        for i in range(0, len(reply), 3):
            lease, rank, raw = reply[i], reply[i + 1], reply[i + 2]
            try:
                instance = WorkerInstance.from_json(raw)
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("Redis member {} has unreadable data: {!r}", lease, exc)
                continue
            found.append(Member(self.prefix + "member:" + lease, int(float(rank)), lease, instance))
        return found

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, shard: int, owner: str) -> ShardClaim | None:
        """Take ``shard`` under the lease if nobody holds it; None if someone does.

        Only a registered instance claims (``LeaseLost`` otherwise): after a lost lease the
        host must register again before it claims anything under the new one.
        """
        lease = self._lease
        if not lease:
            raise LeaseLost("no Redis lease: register first")
        self._await_release(shard, True)
        reply = self._call("claim", self.prefix, lease, str(shard), owner)
        if int(reply[0]) != 0:
            self._await_release(shard, False)
        if int(reply[0]) == -1:
            self._lease_gone(lease, "it expired before a claim")
            raise LeaseLost("the Redis lease expired")
        if int(reply[0]) == -2:
            # After a lost lease, before the host registered again: a claim taken now could
            # outlive the host's view of its shards.
            raise LeaseLost("this instance has no member entry under its current lease")
        if int(reply[0]) == 0:
            return None
        return _parse_claim(shard, str(reply[1]))

    def release(self, claim: ShardClaim) -> None:
        """Delete the claim key, only if it still holds exactly this claim."""
        handle = _handle(claim)
        self._call("release", self.prefix, handle.lease, str(claim.shard), handle.value)

    def claims(self) -> dict[int, ShardClaim]:
        """Every claim of the service."""
        reply = self._call("claims", self.prefix)
        found = {}
        for i in range(0, len(reply), 2):
            try:
                found[int(reply[i])] = _parse_claim(int(reply[i]), reply[i + 1])
            except (ValueError, TypeError, KeyError):
                continue
        return found

    # -- run records ------------------------------------------------------------------------------

    def read_run(self, shard: int) -> RunRecord | None:
        """The run record of ``shard``, if any readable one exists."""
        return self._read_run_at(self.service, shard)

    def runs(self) -> dict[int, RunRecord]:
        """Every run record of the service."""
        reply = self._call("runs", self.prefix)
        found = {}
        for i in range(0, len(reply), 2):
            record = parse_run(int(reply[i]), reply[i + 1])
            if record is not None:
                found[record.shard] = record
        return found

    def begin_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """One script: write ``record`` iff the claim is exactly ours and our member key
        exists. A lost reply is retried once (the script is idempotent); a timeout answers
        False (the run must not start; a late write leaves a ``running`` record that the
        shard's next owner re-runs, as after a crash)."""
        try:
            return self._write_run(claim, record)
        except BackendUnavailable as exc:
            logger.info("Redis: begin_run of shard {} not confirmed: {!r}", claim.shard, exc)
            return False

    def end_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        """As :meth:`begin_run`; raises ``BackendUnavailable`` when Redis does not answer."""
        return self._write_run(claim, record)

    def _write_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        handle = _handle(claim)
        shard, raw = str(claim.shard), record.to_json().decode()
        return bool(self._call("write_run", self.prefix, shard, handle.lease, handle.value, raw))

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        """Call ``callback`` with the record now (this thread) and on each change (the
        listener's thread) until it returns False."""
        check_service(service)
        self._start_feed()
        feed = self._feed
        if feed is None:
            raise BackendUnavailable("the Redis backend is not connected")
        feed.watch(service, shard, callback)

    # -- settings and control ---------------------------------------------------------------------

    def read_settings(self) -> dict[str, Any] | None:
        """The stored settings, or None (also when they are not a JSON object)."""
        data = _json_or_none(self._get(self.prefix + "settings"))
        return data if isinstance(data, dict) else None

    def write_settings(self, settings: dict[str, Any], create_only: bool) -> bool:
        """Store the settings; False if ``create_only`` and some are stored already."""
        raw = json.dumps(settings, sort_keys=True)
        flag = "1" if create_only else "0"
        return bool(self._call("write_settings", self.prefix, raw, flag))

    def read_control(self) -> ControlState:
        """The control state (nothing requested when none, or unreadable)."""
        return ControlState.from_dict(_json_or_none(self._get(self.prefix + "control")))

    def update_control(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Read, apply ``change``, compare-and-set in a script; retried when raced."""
        for _ in range(CAS_ATTEMPTS):
            raw = self._get(self.prefix + "control")
            new = change(ControlState.from_dict(_json_or_none(raw)))
            new_raw = json.dumps(new.to_dict(), separators=(",", ":"))
            exists = "0" if raw is None else "1"
            if self._call("control_cas", self.prefix, exists, raw or "", new_raw):
                return new
        raise BackendError(f"the control state kept changing: {CAS_ATTEMPTS} attempts lost")


def _parse_claim(shard: int, value: str) -> ShardClaim:
    data = json.loads(value)
    handle = RedisClaimHandle(str(data["lease"]), value)
    return ShardClaim(shard, int(data["token"]), str(data["owner"]), handle)


def _handle(claim: ShardClaim) -> RedisClaimHandle:
    if not isinstance(claim.handle, RedisClaimHandle):
        raise BackendError(f"claim of shard {claim.shard} was not made by the Redis backend")
    return claim.handle


def _json_or_none(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


if TYPE_CHECKING:
    _CONFORMS: type[CoordinationBackend] = RedisBackend
