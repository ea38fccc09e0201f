"""Observers: an independent client that reads (and watches) a service's shard claims.

- :class:`Observer` (ZooKeeper): its own kazoo client; :meth:`Observer.watch_owner` is a data
  watch on the claim node, so the instant it notes is ZooKeeper's notification.
- :class:`SeamObserver` (any backend): a client of the coordination seam itself
  (``get_discovery(...).connect()``, never a member); :meth:`SeamObserver.watch_owner` reads
  the claims again on every change the backend reports, and at least every 10 ms while a watch
  is open (the instant it notes is when that read returned: at most one poll late).

:func:`observer` picks ZooKeeper's own for ZooKeeper (its figures keep their method), the seam
one for the others.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from _targets import Target


class ClaimWatch:
    """A data watch on one claim node (kazoo ``DataWatch``, re-armed on every event)."""

    def __init__(self, observer: Observer, shard: int, predicate: Callable[[str], bool]) -> None:
        from kazoo.recipe.watchers import DataWatch

        self.event = threading.Event()
        self.at: float | None = None
        self.owner: str | None = None
        self._predicate = predicate
        self._stopped = False
        path = f"{observer.claims_path}/{shard}"
        DataWatch(observer.client, path, self._on_data)

    def _on_data(self, data: bytes | None, stat: Any, *_event: Any) -> bool | None:
        now = time.time()
        if self._stopped:
            return False
        owner = str(json.loads(data).get("owner", "")) if data else ""
        if data and self.at is None and self._predicate(owner):
            self.at, self.owner = now, owner
            self.event.set()
        return None

    def cancel(self) -> None:
        self._stopped = True


class Observer:
    """An independent kazoo client: reads (and watches) a service's claim nodes."""

    def __init__(self, hosts: str, service: str, namespace: str = "goworker") -> None:
        from kazoo.client import KazooClient

        self.root = f"/{namespace}/{service}"
        self.claims_path = f"{self.root}/claims"
        self.instances_path = f"{self.root}/instances"
        self.client = KazooClient(hosts=hosts, timeout=10.0)
        self.client.start(timeout=10.0)

    def claim_owners(self) -> dict[int, str]:
        """``{shard: owner instance id}`` of every claim node (pipelined reads)."""
        from kazoo.exceptions import NoNodeError

        try:
            children = self.client.get_children(self.claims_path)
        except NoNodeError:
            return {}
        pending = [
            (c, self.client.get_async(f"{self.claims_path}/{c}")) for c in children if c.isdigit()
        ]
        owners: dict[int, str] = {}
        for child, request in pending:
            try:
                raw, _ = request.get(timeout=10)
            except NoNodeError:
                continue
            owners[int(child)] = str(json.loads(raw or b"{}").get("owner", ""))
        return owners

    def watch_owner(self, shard: int, predicate: Callable[[str], bool]) -> ClaimWatch:
        """Watch ``claims/<shard>``: note ``time.time()`` once its owner passes ``predicate``."""
        return ClaimWatch(self, shard, predicate)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop()
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PolledClaimWatch:
    """One shard's owner, as :class:`SeamObserver` reads it (same surface as ClaimWatch)."""

    def __init__(self, shard: int, predicate: Callable[[str], bool]) -> None:
        self.shard = shard
        self.event = threading.Event()
        self.at: float | None = None
        self.owner: str | None = None
        self._predicate = predicate
        self.stopped = False

    def offer(self, owner: str | None, now: float) -> None:
        if owner and self.at is None and self._predicate(owner):
            self.at, self.owner = now, owner
            self.event.set()

    @property
    def open(self) -> bool:
        return not self.stopped and self.at is None

    def cancel(self) -> None:
        self.stopped = True


class SeamObserver:
    """An independent client of the coordination seam (see the module docstring)."""

    POLL = 0.01

    def __init__(self, target: Target, service: str) -> None:
        from goworker_py.cluster.discovery import get_discovery

        self.backend = get_discovery(target.config(session_timeout=10.0), service)
        self._changed = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._watches: list[PolledClaimWatch] = []
        self.backend.connect(lambda _change: self._changed.set())
        self._thread = threading.Thread(target=self._loop, name="bench-observer", daemon=True)
        self._thread.start()

    def claim_owners(self) -> dict[int, str]:
        """``{shard: owner instance id}`` of every claim."""
        with self._lock:
            claims = self.backend.claims()
        return {shard: claim.owner for shard, claim in claims.items()}

    def watch_owner(self, shard: int, predicate: Callable[[str], bool]) -> PolledClaimWatch:
        """Note ``time.time()`` once ``shard``'s owner passes ``predicate``."""
        watch = PolledClaimWatch(shard, predicate)
        with self._lock:
            self._watches = [w for w in self._watches if w.open] + [watch]
        self._changed.set()
        return watch

    def _loop(self) -> None:
        from goworker_py.errors import BackendError

        while not self._closed.is_set():
            self._changed.wait(self.POLL)
            self._changed.clear()
            with self._lock:
                watches = [w for w in self._watches if w.open]
                if not watches:
                    continue
                try:
                    claims = self.backend.claims()
                except BackendError:
                    continue
            now = time.time()
            for watch in watches:
                claim = claims.get(watch.shard)
                watch.offer(None if claim is None else claim.owner, now)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.backend.close()

    def __enter__(self) -> SeamObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def observer(target: Target, service: str) -> Observer | SeamObserver:
    """ZooKeeper's kazoo observer for ZooKeeper, the seam's for the other backends."""
    if target.name == "zookeeper":
        return Observer(target.discovery, service)
    return SeamObserver(target, service)
