"""Dependencies between cluster-mode workers of a WorkerGroup, through their run records.

A downstream shard's owner watches the run markers of the upstream shards it waits for (shard
``i`` of an upstream with as many shards, else every shard of it), wherever those run. Each
marker carries the latest fire times its shard completed (``RunMarker.completed``, at most
``COMPLETED_KEPT``), so no completion is missed between two reads of a watch, nor across a
hand-over of either side. A fire time every upstream shard completed is given to the downstream
shard to run, in order, once: never one at or before the last fire time the downstream shard
handled (its own marker, also across a hand-over).

The backlog is bounded: a downstream that falls more than ``COMPLETED_KEPT`` upstream fire
times behind loses the oldest — logged, and counted as a misfire. A downstream shard that never
ran before starts with the newest fire time its upstreams completed.
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from goworker_py.cluster.backend import COMPLETED_KEPT, RunRecord, RunState
from goworker_py.feed import required_upstream_shards
from goworker_py.hooks import OBSERVERS

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.cluster.backend import CoordinationBackend
    from goworker_py.feed import UpstreamFeed
    from goworker_py.runner import ShardRunner

#: Completed fire times remembered per upstream shard (upstream shards may be apart).
_REMEMBERED = 2 * COMPLETED_KEPT


class UpstreamWatch:
    """Feeds one downstream shard the fire times its upstream shards all completed."""

    def __init__(
        self,
        backend: CoordinationBackend,
        runner: ShardRunner,
        feed: UpstreamFeed,
        upstreams: tuple[tuple[str, int], ...],
        logger: Logger,
    ) -> None:
        self.runner = runner
        self.feed = feed
        self.logger = logger
        shard = runner.shard.index
        self._required = required_upstream_shards(upstreams, runner.settings.total, shard)
        self._done: dict[tuple[str, int], set[float]] = {key: set() for key in self._required}
        self._seen: set[tuple[str, int]] = set()
        start = runner.start_after
        #: Never run before: start with the newest fire time the upstreams completed.
        self._fresh = start is None
        self._last = start.timestamp() if start is not None else float("-inf")
        self._lock = threading.Lock()
        feed.reset(shard)
        for service, up_shard in self._required:
            backend.watch_runs(
                service, up_shard, functools.partial(self._on_marker, (service, up_shard))
            )

    def _on_marker(self, key: tuple[str, int], marker: RunRecord | None) -> bool:
        """The backend's thread: note completed upstream runs; feed fire times now complete."""
        if self.runner.stopping:
            return False  # the shard moved or the worker stops: drop the watch
        if marker is None:
            return True
        completed = set(marker.completed)
        if marker.state is RunState.DONE:
            completed.add(marker.fire_time)
        with self._lock:
            self._seen.add(key)
            done = self._done[key]
            done |= completed
            while len(done) > _REMEMBERED:
                done.discard(min(done))
            if len(self._seen) < len(self._done):
                return True
            common = set.intersection(*self._done.values())
            if self._fresh:
                self._fresh = False
                if common:
                    self._last = max(common) - 1e-6  # run the newest one only
            ready = sorted(f for f in common if f > self._last)
            dropped = (
                len(marker.completed) >= COMPLETED_KEPT
                and self._last != float("-inf")
                and min(marker.completed) > self._last
                and bool(ready)
            )
            previous = self._last
            if ready:
                self._last = ready[-1]
        if dropped:
            self._report_dropped(key, previous, ready[0])
        zone = self.runner.settings.zone
        for fire in ready:
            self.feed.push(
                self.runner.shard.index,
                datetime.fromtimestamp(fire, timezone.utc).astimezone(zone),
            )
        return True

    def _report_dropped(self, key: tuple[str, int], last: float, first: float) -> None:
        service, shard = key
        self.logger.warning(
            "shard {}: fell more than {} fire times behind upstream {} shard {}: fire times it "
            "completed after {} and before {} may be missed",
            self.runner.shard.index,
            COMPLETED_KEPT,
            service,
            shard,
            datetime.fromtimestamp(last, timezone.utc).isoformat(),
            datetime.fromtimestamp(first, timezone.utc).isoformat(),
        )
        for observer in OBSERVERS:
            observer.misfired(self.runner.settings.worker_name, 1)
