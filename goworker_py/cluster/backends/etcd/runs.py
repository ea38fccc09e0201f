"""``watch_runs`` on etcd: another service's run records, followed through prefix watches.

One :class:`~goworker_py.cluster.backends.etcd.watches.PrefixWatch` per watched service covers
its ``runs/`` prefix, however many shards are watched. A new subscription is first called with
the record as it is (read on the callback thread), then with each change. Each subscription
remembers the revision it last delivered and skips anything not newer, so the first read and
events already under way never arrive out of order. After a compaction every subscription's
record is read again. A watch whose subscriptions all returned False is closed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from goworker_py.cluster.backend import RunRecord
from goworker_py.cluster.backends.etcd import keys
from goworker_py.cluster.backends.etcd.transport import Transport, encode
from goworker_py.cluster.backends.etcd.watches import KeyEvent, PrefixWatch
from goworker_py.errors import BackendError

#: Seconds before a first read that failed is tried again.
RETRY_READ = 1.0

#: ``call(path, body, deadline)``: a request through the backend.
Call = Callable[[str, dict[str, Any], float], dict[str, Any]]


@dataclass
class _Subscription:
    shard: int
    callback: Callable[[RunRecord | None], bool]
    #: The revision of the record last delivered; anything not newer is skipped.
    seen: int = -1
    active: bool = True


@dataclass
class _Watched:
    watch: PrefixWatch
    subscriptions: list[_Subscription] = field(default_factory=list)


class RunWatches:
    """Every ``watch_runs`` subscription of one backend."""

    def __init__(
        self,
        transport: Transport,
        namespace: str,
        call: Call,
        submit: Callable[[Callable[[], None]], None],
        read_budget: Callable[[], float],
    ) -> None:
        self._transport = transport
        self._namespace = namespace
        self._call = call
        self._submit = submit
        self._read_budget = read_budget
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}

    def watches(self) -> list[PrefixWatch]:
        """The open watches (to restart after a reconnect, to close)."""
        with self._lock:
            return [item.watch for item in self._watched.values()]

    def close(self) -> None:
        """Close every watch; no callback follows."""
        with self._lock:
            watched, self._watched = list(self._watched.values()), {}
        for item in watched:
            for subscription in item.subscriptions:
                subscription.active = False
            item.watch.close()

    def watch(self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]) -> None:
        """Subscribe ``callback`` to ``service``'s record of ``shard``."""
        prefix = keys.service_prefix(self._namespace, service) + "runs/"
        subscription = _Subscription(shard, callback)
        with self._lock:
            watched = self._watched.get(service)
        if watched is None:
            # Outside the lock: a watch thread takes it to hand its events on.
            deadline = time.monotonic() + self._read_budget()
            after = keys.revision(self._call("kv/range", keys.prefix_count(prefix), deadline))
            watch = PrefixWatch(
                self._transport,
                prefix,
                after,
                functools.partial(self._events, service, prefix),
                functools.partial(self._resync, service, prefix),
            )
            with self._lock:
                watched = self._watched.get(service)
                if watched is None:
                    watched = self._watched[service] = _Watched(watch.start())
        with self._lock:
            watched.subscriptions.append(subscription)
            self._submit(functools.partial(self._read, service, prefix, subscription))

    def _read(self, service: str, prefix: str, subscription: _Subscription) -> None:
        # The callback thread: read the record now, call back. A short budget: change
        # signals wait behind this read.
        if not subscription.active:
            return
        deadline = time.monotonic() + self._read_budget()
        try:
            reply = self._call(
                "kv/range", {"key": encode(f"{prefix}{subscription.shard}")}, deadline
            )
        except BackendError:
            # Try again soon (any change meanwhile comes through the watch anyway).
            retry = functools.partial(self._read, service, prefix, subscription)
            timer = threading.Timer(RETRY_READ, self._submit, (retry,))
            timer.daemon = True
            timer.start()
            return
        found = keys.kvs(reply)
        record = keys.record(subscription.shard, found[0] if found else None)
        self._deliver(service, subscription, record, keys.revision(reply))

    def _deliver(
        self, service: str, subscription: _Subscription, record: RunRecord | None, revision: int
    ) -> None:
        if not subscription.active or revision <= subscription.seen:
            return
        subscription.seen = revision
        if subscription.callback(record) is False:
            self._unsubscribe(service, subscription)

    def _unsubscribe(self, service: str, subscription: _Subscription) -> None:
        subscription.active = False
        with self._lock:
            watched = self._watched.get(service)
            if watched is None:
                return
            watched.subscriptions = [item for item in watched.subscriptions if item.active]
            if watched.subscriptions:
                return
            del self._watched[service]
        watched.watch.close()

    def _events(self, service: str, prefix: str, events: list[KeyEvent]) -> None:
        # A watch thread: hand on to the callback thread.
        with self._lock:
            watched = self._watched.get(service)
            subscriptions = list(watched.subscriptions) if watched else []
        for event in events:
            name = event.key[len(prefix) :]
            if not name.isdigit():
                continue
            shard = int(name)
            record = None if event.deleted else keys.parse_record(shard, event.value)
            for item in subscriptions:
                if item.shard == shard and event.revision > item.seen:
                    self._submit(
                        functools.partial(self._deliver, service, item, record, event.revision)
                    )

    def _resync(self, service: str, prefix: str) -> None:
        with self._lock:
            watched = self._watched.get(service)
            subscriptions = list(watched.subscriptions) if watched else []
        for item in subscriptions:
            self._submit(functools.partial(self._read, service, prefix, item))
