"""Observers of a reliability scenario: what the coordination server holds, read from outside.

An observer reads a service's **claims** (``{shard: lease}``: which lease - a ZooKeeper session,
an etcd lease, a Redis lease - holds each shard) and its **members** (their leases, and what
each published), never through the instances under test. Two kinds yield the same shapes:

- :class:`Observer`, for ZooKeeper: a kazoo client of its own, straight at the server; a claim's
  lease is its node's ``ephemeralOwner`` (the session hex, as ``instance_main.py`` records it).
- :class:`SeamObserver`, for any backend (etcd, Redis): a backend of the protocol under test,
  connected without registering or claiming anything (as ``ClusterAdmin`` connects), read
  through the seam (``members()``, ``claims()``). The seam's claim names its owner instance,
  not a lease: the lease is the owner's member entry's (each registration has an instance id
  of its own, so the mapping is one to one); a claim whose owner has no live member entry
  maps to ``None`` - held by no live lease, which every check counts as not owned.

Both tolerate an unreachable server on every read (returning what they could, or None from
the ``owned``/``settled`` probes). :class:`ClaimSamples` holds what
:meth:`ObserverBase.sample_claims` sampled.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.cluster.discovery import get_discovery
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendError
from goworker_py.testing import observer_client

#: The discovery namespace every instance of a scenario uses (``DiscoveryConfig``'s default).
NAMESPACE = "goworker"
_ZK_ERRORS = (KazooException, KazooTimeoutError, OSError)

_T = TypeVar("_T")


def wait_for(
    predicate: Callable[[], _T | None], timeout: float, what: str = "", interval: float = 0.01
) -> _T:
    """Poll ``predicate`` until it returns something truthy and return that; fail after
    ``timeout`` seconds, saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        time.sleep(interval)


@dataclass
class ClaimSample:
    """What the observer read at ``t``: ``{shard: session}`` and the member sessions around it."""

    t: float
    claims: dict[int, str]
    members: set[str]
    #: When the claims had been read (``t`` is when the sample began).
    read_at: float = 0.0


@dataclass
class ClaimSamples:
    """Samples taken by :meth:`ObserverBase.sample_claims`."""

    samples: list[ClaimSample] = field(default_factory=list)
    errors: int = 0

    def ownership_changes(self) -> dict[int, int]:
        """``{shard: times its claim passed to another session}`` (vanishing is no change)."""
        changes: dict[int, int] = {}
        last: dict[int, str] = {}
        for sample in self.samples:
            for shard, session in sample.claims.items():
                if shard in last and last[shard] != session:
                    changes[shard] = changes.get(shard, 0) + 1
                last[shard] = session
        return changes

    def owners_of(self, shard: int) -> list[str]:
        """Every session that held ``shard``, in order."""
        owners: list[str] = []
        for sample in self.samples:
            session = sample.claims.get(shard)
            if session is not None and (not owners or owners[-1] != session):
                owners.append(session)
        return owners

    def orphans(self) -> list[tuple[float, int, str]]:
        """``(t, shard, session)`` of claims held by a session that was no member then."""
        return [
            (sample.t, shard, session)
            for sample in self.samples
            for shard, session in sample.claims.items()
            if session not in sample.members
        ]

    def unowned_time(self, shard: int) -> float:
        """Seconds ``shard`` had no claim, between the first and the last sample."""
        total = 0.0
        for before, after in itertools.pairwise(self.samples):
            if shard not in before.claims:
                total += after.t - before.t
        return total


class ObserverBase:
    """What every observer derives from its three reads (:meth:`claim_nodes`, :meth:`members`,
    :meth:`member_sessions`): ownership probes, waits and samples. ``errors`` are the
    exceptions of an unreachable server, which the probes take as "not yet"."""

    errors: tuple[type[BaseException], ...] = ()

    def close(self) -> None:
        raise NotImplementedError

    def claim_nodes(self, timeout: float = 5.0) -> dict[int, tuple[str, int]]:
        """``{shard: (lease, fencing token)}`` of every claim."""
        raise NotImplementedError

    def members(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Live members in rank order: ``{"node", "session", "id", "pid", "shards", "health"}``."""
        raise NotImplementedError

    def member_sessions(self, timeout: float = 5.0) -> set[str]:
        """Leases (sessions) of the live members."""
        raise NotImplementedError

    def claims(self, timeout: float = 5.0) -> dict[int, str]:
        """``{shard: lease}`` of every claim."""
        return {shard: session for shard, (session, _) in self.claim_nodes(timeout).items()}

    def owned(self, shards: int | Iterable[int]) -> dict[int, str] | None:
        """The claims, when every shard in ``shards`` is claimed by a live member; else None."""
        wanted = set(range(shards)) if isinstance(shards, int) else set(shards)
        try:
            before = self.member_sessions(2.0)
            claims = self.claims(2.0)
            after = self.member_sessions(2.0)
        except self.errors:
            return None
        live = before & after
        if wanted <= set(claims) and all(claims[s] in live for s in wanted):
            return claims
        return None

    def wait_owned(self, shards: int | Iterable[int], timeout: float = 15.0) -> dict[int, str]:
        """Wait until every shard is claimed by a live member; return ``{shard: session}``."""
        return wait_for(
            lambda: self.owned(shards), timeout, f"every shard of {shards} owned", interval=0.005
        )

    def settled(self, shards: int, members: int) -> dict[int, str] | None:
        """The claims, once ``members`` members share every shard evenly, as they publish it."""
        try:
            found = self.members(2.0)
            claims = self.claims(2.0)
        except self.errors:
            return None
        if len(found) != members or sorted(claims) != list(range(shards)):
            return None
        held: dict[str, list[int]] = {m["session"]: [] for m in found}
        for shard, session in sorted(claims.items()):
            if session not in held:
                return None
            held[session].append(shard)
        loads = [len(s) for s in held.values()]
        if max(loads) - min(loads) > 1:
            return None
        if any(sorted(m["shards"]) != held[m["session"]] for m in found):
            return None
        return claims

    def wait_settled(self, shards: int, members: int, timeout: float = 15.0) -> dict[int, str]:
        """Wait until :meth:`settled`; return ``{shard: session}``."""
        return wait_for(
            lambda: self.settled(shards, members),
            timeout,
            f"{members} members sharing {shards} shards evenly",
            interval=0.01,
        )

    def wait_members(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until exactly ``count`` members are registered; return them."""

        def members() -> list[dict[str, Any]] | None:
            try:
                found = self.members(2.0)
            except self.errors:
                return None
            return found if len(found) == count else None

        return wait_for(members, timeout, f"{count} members", interval=0.005)

    def sample(self, timeout: float = 2.0) -> ClaimSample:
        """One sample: member sessions, claims, member sessions again (reads are not atomic)."""
        t = time.time()
        members = self.member_sessions(timeout)
        claims = self.claims(timeout)
        read_at = time.time()
        members |= self.member_sessions(timeout)
        return ClaimSample(t, claims, members, read_at)

    @contextlib.contextmanager
    def sample_claims(self, interval: float = 0.005) -> Iterator[ClaimSamples]:
        """Sample the claims on a thread every ``interval`` s while the block runs."""
        result = ClaimSamples()
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    result.samples.append(self.sample())
                except self.errors:
                    result.errors += 1
                stop.wait(interval)

        thread = threading.Thread(target=loop, name="claim-sampler", daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join(15.0)


class Observer(ObserverBase):
    """Reads a service's nodes with a kazoo client of its own, straight at the server(s).

    Every read tolerates an unreachable ZooKeeper (it returns what it could, or None).
    """

    errors = _ZK_ERRORS

    def __init__(self, hosts: str, service: str) -> None:
        self.root = f"/{NAMESPACE}/{service}"
        # Gives up a connect attempt a restarting ZooKeeper never answers, as the backend does.
        self.client = observer_client(hosts)
        self.client.start(timeout=15.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop()
        with contextlib.suppress(Exception):
            self.client.close()

    def _children(self, path: str, timeout: float) -> list[str]:
        try:
            return list(self.client.get_children_async(path).get(timeout=timeout))
        except NoNodeError:
            return []

    def claim_nodes(self, timeout: float = 5.0) -> dict[int, tuple[str, int]]:
        """``{shard: (session hex, fencing token)}`` of every claim node."""
        path = f"{self.root}/claims"
        children = [c for c in self._children(path, timeout) if c.isdigit()]
        pending = [(int(c), self.client.exists_async(f"{path}/{c}")) for c in children]
        result: dict[int, tuple[str, int]] = {}
        for shard, request in pending:
            stat = request.get(timeout=timeout)
            if stat is not None:
                result[shard] = (format(stat.ephemeralOwner, "#x"), int(stat.czxid))
        return result

    def members(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Live members in rank order: ``{"node", "session", "id", "pid", "shards", "health"}``."""
        path = f"{self.root}/instances"
        children = sorted(self._children(path, timeout), key=lambda c: int(c.rsplit("-", 1)[1]))
        pending = [(c, self.client.get_async(f"{path}/{c}")) for c in children]
        result: list[dict[str, Any]] = []
        for child, request in pending:
            try:
                raw, stat = request.get(timeout=timeout)
            except NoNodeError:
                continue
            data = json.loads(raw)
            result.append(
                {
                    "node": child,
                    "session": format(stat.ephemeralOwner, "#x"),
                    "id": data.get("id"),
                    "pid": data.get("pid"),
                    "shards": list(data.get("shards", ())),
                    "health": data.get("health"),
                }
            )
        return result

    def member_sessions(self, timeout: float = 5.0) -> set[str]:
        """Sessions of the live members (their instance nodes' owners)."""
        path = f"{self.root}/instances"
        pending = [self.client.exists_async(f"{path}/{c}") for c in self._children(path, timeout)]
        sessions = set()
        for request in pending:
            stat = request.get(timeout=timeout)
            if stat is not None:
                sessions.add(format(stat.ephemeralOwner, "#x"))
        return sessions


class SeamObserver(ObserverBase):
    """Reads a service through the coordination seam: a backend of ``protocol`` on ``hosts``,
    connected without registering (it holds no member entry and claims nothing; etcd grants
    it a lease of its own all the same, which nothing is attached to).

    Reads are serialised (the sampler thread and the test share the backend); each is bounded
    by the backend's own request timeouts (5 s), so ``timeout`` arguments are not used.
    """

    errors = (BackendError, OSError)

    def __init__(self, protocol: str, hosts: str, service: str) -> None:
        config = DiscoveryConfig(
            protocol=protocol,
            hosts=hosts,
            namespace=NAMESPACE,
            session_timeout=15.0,
            connect_timeout=5.0,
        )
        self.backend = get_discovery(config, service)
        self.backend.connect()
        self._lock = threading.Lock()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.close()

    def claim_nodes(self, timeout: float = 5.0) -> dict[int, tuple[str | None, int]]:  # type: ignore[override]
        """``{shard: (lease of its owner's member entry, or None; fencing token)}``: the
        members are read before and after the claims, so an owner that registered or left
        meanwhile is still attributed."""
        with self._lock:
            before = self.backend.members()
            claims = self.backend.claims()
            after = self.backend.members()
        leases = {m.instance.id: m.lease for m in (*before, *after)}
        return {shard: (leases.get(claim.owner), claim.token) for shard, claim in claims.items()}

    def members(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Live members in rank order: ``{"node", "session", "id", "pid", "shards", "health"}``
        (``session``: the member entry's lease)."""
        with self._lock:
            found = self.backend.members()
        return [
            {
                "node": m.key,
                "session": m.lease,
                "id": m.instance.id,
                "pid": m.instance.pid,
                "shards": list(m.instance.shards),
                "health": int(m.instance.health),
            }
            for m in found
        ]

    def member_sessions(self, timeout: float = 5.0) -> set[str]:
        """Leases of the live members."""
        with self._lock:
            return {m.lease for m in self.backend.members()}
