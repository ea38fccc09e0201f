"""What a downstream worker of a WorkerGroup runs: fire times its upstreams completed.

:class:`UpstreamFeed` holds, per shard, the fire times a downstream shard may run, in order;
:func:`required_upstream_shards` says which upstream shards a downstream shard waits for. The
group feeds it in local mode (:mod:`goworker_py.group`), the upstream shards' run records in
cluster mode (:mod:`goworker_py.cluster.upstream`); the downstream's shard runner consumes it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime


def required_upstream_shards(
    upstreams: tuple[tuple[str, int], ...], total: int, shard: int
) -> list[tuple[str, int]]:
    """The ``(upstream, shard)`` runs downstream ``shard`` of ``total`` waits for: shard ``i``
    of an upstream with as many shards, else every shard of it. ``upstreams`` are
    ``(name, shard count)`` pairs."""
    needed: list[tuple[str, int]] = []
    for name, up_total in upstreams:
        needed += [(name, shard)] if up_total == total else [(name, s) for s in range(up_total)]
    return needed


class UpstreamFeed:
    """The fire times a downstream worker's shards may run, fed by its upstreams' successes."""

    def __init__(self, total: int) -> None:
        self._lock = threading.Lock()
        self._queues: dict[int, deque[datetime]] = {shard: deque() for shard in range(total)}
        self._wakers: dict[int, Callable[[], None]] = {}
        self._closed = False

    def attach(self, shard: int, wake: Callable[[], None]) -> None:
        """The runner of ``shard`` waits for ``wake()``: called when a fire time arrives."""
        with self._lock:
            self._wakers[shard] = wake
            ready = bool(self._queues.get(shard)) or self._closed
        if ready:
            wake()

    def push(self, shard: int, fire: datetime) -> None:
        with self._lock:
            queue = self._queues.setdefault(shard, deque())
            if queue and queue[-1] >= fire:
                return  # an older fire time arriving late: the shard has moved past it
            queue.append(fire)
            wake = self._wakers.get(shard)
        if wake is not None:
            wake()

    def reset(self, shard: int) -> None:
        """Forget what is queued for ``shard`` (it starts again on a new owner)."""
        with self._lock:
            self._queues[shard] = deque()

    def pop(self, shard: int) -> datetime | None:
        """The next fire time for ``shard``, or None if none is waiting."""
        with self._lock:
            queue = self._queues.get(shard)
            return queue.popleft() if queue else None

    def close(self) -> None:
        """No fire time will come any more: shards end once their queue is empty."""
        with self._lock:
            self._closed = True
            wakers = list(self._wakers.values())
        for wake in wakers:
            wake()

    @property
    def closed(self) -> bool:
        return self._closed
