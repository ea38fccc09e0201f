"""The service's own nodes besides membership: its settings and its control node.

:class:`ServiceNodes` is a part of :class:`~goworker_py.cluster.membership.ClusterHost` (a
mixin, run on the supervisor thread like the rest of it):

- ``/<ns>/<service>/config`` holds the settings every instance must share (shard count, params,
  schedule). An instance started with others fails with ``ServiceConfigConflict``, or replaces
  them with ``overwrite=True`` — and then every other instance adopts them (SPEC 4.1).
- ``/<ns>/<service>/control`` carries runtime requests from ``goworker-py pause|resume|trigger|
  stop-run`` (SPEC 5): pausing is a state, trigger and stop-run are counters acted on when they
  grow.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from goworker_py.cluster.backend import server_name
from goworker_py.errors import ConfigError, ServiceConfigConflict
from goworker_py.params import check_params_fit, resolve_cluster_parameter
from goworker_py.schedule import parse_schedule

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.cluster.backend import CoordinationBackend, ShardClaim
    from goworker_py.run import RunSettings
    from goworker_py.runner import ShardRunner


class ServiceNodes:
    """Follows the service's settings node and control node (a ``ClusterHost`` mixin)."""

    settings: RunSettings
    backend: CoordinationBackend
    logger: Logger
    cron: str
    overwrite: bool
    claims: dict[int, ShardClaim]
    _settings_dirty: bool
    _control_dirty: bool
    runners: dict[int, ShardRunner]
    _releasing: dict[int, float]
    #: Settings from the coordination server this instance could not use (reported once).
    _refused_config: dict[str, Any] | None = None
    #: The control node's request counters last acted on (None: not read yet).
    _control_seen: dict[str, int] | None = None

    if TYPE_CHECKING:
        # Defined by Rebalancer, a sibling base of ClusterHost: a stub here would shadow it
        # whenever ServiceNodes came first among ClusterHost's bases.
        def _release(self, shard: int) -> None: ...

    def _service_settings(self) -> dict[str, Any]:
        return {
            "sharding_total_count": self.settings.total,
            "params": self.settings.params,
            "schedule": self.cron,
        }

    def _check_service_config(self) -> None:
        mine = self._service_settings()
        stored = self.backend.read_settings()
        if stored is None and self.backend.write_settings(mine, create_only=True):
            return
        stored = self.backend.read_settings()
        if stored == mine:
            return
        if self.overwrite:
            self.logger.warning("overwriting the service settings {} with {}", stored, mine)
            self.backend.write_settings(mine, create_only=False)
            return
        differing = sorted(k for k in mine if (stored or {}).get(k) != mine[k])
        raise ServiceConfigConflict(
            f"service {self.settings.service!r} in {server_name(self.backend.protocol)} has "
            + ", ".join(f"{k}={(stored or {}).get(k)!r}" for k in differing)
            + " but this instance has "
            + ", ".join(f"{k}={mine[k]!r}" for k in differing)
            + ": start it with the same settings, or pass overwrite=True to replace them"
        )

    def _follow_service_config(self) -> None:
        """Adopt settings another instance wrote with ``overwrite=True`` (SPEC 4.1).

        Every instance must compute the assignment over the same shard count: one left on the
        old count would leave shards unowned. All shards are released and claimed again, so
        each shard thread restarts with its new total, param and schedule.
        """
        if not self._settings_dirty:
            return
        self._settings_dirty = False
        try:
            stored = self.backend.read_settings()
        except BaseException:
            self._settings_dirty = True  # read again on the next pass
            raise
        if stored is None or stored == self._service_settings():
            return
        try:
            settings = self._settings_from(stored)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            if stored != self._refused_config:
                self._refused_config = stored
                self.logger.error(
                    "the service settings stored in {} changed to {}, which this instance "
                    "cannot use ({}): it keeps running {}",
                    server_name(self.backend.protocol),
                    stored,
                    exc,
                    self._service_settings(),
                )
            return
        self.logger.warning(
            "the service settings stored in {} changed from {} to {}: re-balancing with them",
            server_name(self.backend.protocol),
            self._service_settings(),
            stored,
        )
        for shard in sorted(self.claims):
            if shard not in self._releasing:
                self._release(shard)
        self.settings = settings
        self.cron = str(stored["schedule"])

    def _follow_control(self) -> None:
        """Act on the service's control node: pause, resume, trigger, stop-run (SPEC 5).

        Pausing is a state; trigger and stop-run are counters, acted on when they grow — on the
        shards this instance owns at that moment. Requests made before this instance first
        read the node are not replayed.
        """
        if not self._control_dirty:
            return
        self._control_dirty = False
        try:
            state = self.backend.read_control()
        except BaseException:
            self._control_dirty = True
            raise
        counters = {"trigger": state.trigger, "stop_run": state.stop_run}
        seen, self._control_seen = self._control_seen, counters
        control, paused = self.settings.control, state.paused
        if paused != control.cluster:
            control.cluster = paused
            self.logger.info("service {} cluster-wide", "paused" if paused else "resumed")
            if not paused:
                for runner in self.runners.values():
                    runner.wake()
        if seen is None:
            return
        live = {shard: r for shard, r in self.runners.items() if not r.stopping}
        if counters["stop_run"] > seen["stop_run"]:
            cancelled = sorted(shard for shard, r in live.items() if r.cancel_run())
            self.logger.info("stop-run requested: cancelled the run(s) of shard(s) {}", cancelled)
        if counters["trigger"] > seen["trigger"]:
            if control.paused:
                self.logger.info("trigger requested while paused: no run started")
            else:
                triggered = sorted(shard for shard, r in live.items() if r.trigger())
                self.logger.info("trigger requested: one run now on shard(s) {}", triggered)

    def _settings_from(self, stored: dict[str, Any]) -> RunSettings:
        total = stored["sharding_total_count"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ConfigError(f"sharding_total_count must be an int >= 1, got {total!r}")
        params = str(stored["params"])
        params_map = resolve_cluster_parameter(params)
        check_params_fit(params_map, total)
        cron = str(stored["schedule"])
        schedule = parse_schedule(cron, self.settings.zone) if cron else None
        return replace(
            self.settings, total=total, params=params, params_map=params_map, schedule=schedule
        )
