"""Dependencies between cluster-mode workers of a WorkerGroup, through ZooKeeper run markers.

A downstream shard's owner watches the run markers of the upstream shards it waits for (shard
``i`` of an upstream with as many shards, else every shard of it), wherever those run. Each
marker that says ``done`` adds its fire time to what that upstream shard completed; a fire
time every upstream shard completed is given to the downstream shard to run — once: never a
fire time at or before the last one the downstream shard handled (its own marker, also across
a hand-over). Markers keep only the latest run, so a downstream that falls behind runs the
latest fire time its upstreams completed and skips older ones.
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from goworker_py.cluster.zookeeper import DONE, RunMarker
from goworker_py.group import required_upstream_shards

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.cluster.discovery import WorkerDiscovery
    from goworker_py.group import UpstreamFeed
    from goworker_py.runner import ShardRunner

#: Completed fire times remembered per upstream shard.
_REMEMBERED = 64


class UpstreamWatch:
    """Feeds one downstream shard the fire times its upstream shards all completed."""

    def __init__(
        self,
        zk: WorkerDiscovery,
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
        start = runner.start_after
        self._last = start.timestamp() if start is not None else float("-inf")
        self._lock = threading.Lock()
        feed.reset(shard)
        for service, up_shard in self._required:
            zk.watch_marker(
                service, up_shard, functools.partial(self._on_marker, (service, up_shard))
            )

    def _on_marker(self, key: tuple[str, int], marker: RunMarker | None) -> bool:
        """kazoo's thread: note a completed upstream run; feed fire times now complete."""
        if self.runner.stopping:
            return False  # the shard moved or the worker stops: drop the watch
        if marker is None or marker.state != DONE:
            return True
        with self._lock:
            done = self._done[key]
            done.add(marker.fire_time)
            if len(done) > _REMEMBERED:
                done.discard(min(done))
            common = set.intersection(*self._done.values())
            ready = sorted(f for f in common if f > self._last)
            if ready:
                self._last = ready[-1]
        zone = self.runner.settings.zone
        for fire in ready:
            self.feed.push(
                self.runner.shard.index,
                datetime.fromtimestamp(fire, timezone.utc).astimezone(zone),
            )
        return True
