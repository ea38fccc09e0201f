"""The worker: a handler given a lifecycle, a schedule, retries and graceful shutdown.

``Worker(...).run()`` validates everything (raising a :class:`~goworker_py.errors.ConfigError`
before any thread starts), starts one dedicated thread per owned shard (plus, in cluster mode,
one supervisor thread that follows the cluster), and returns at once. ``wait()`` blocks until
the worker ends and says how; ``cancel()`` stops it gracefully from any thread. A local worker
has no thread of its own besides its shards': its end starts a short-lived one that shuts it
down.

States (the seed's four): ``INITIALIZED`` → ``PENDING`` (validated, starting) → ``RUNNING``
(shard threads up) → ``SHUTDOWN`` (ended; ``wait()`` returns).

Shutdown order: no new run starts; retry waits are interrupted; the in-flight step sees
``ctx.cancelled`` and gets up to ``shutdown_timeout`` seconds to return; then the instance
unregisters (cluster mode) and ``wait()`` returns. A handler that ignores cancellation past the
timeout is reported in the log and left behind on its daemon thread.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from goworker_py.clock import SYSTEM_CLOCK, Clock
from goworker_py.config import (
    WorkerConfig,
    check_misfire_policy,
    check_worker_config,
    default_worker_config,
)
from goworker_py.errors import ConfigError, DiscoveryError, GoWorkerError, RunFailed
from goworker_py.flag import Flag
from goworker_py.handler import Handler, validate_handler
from goworker_py.instance import HealthStatus, WorkerInstance
from goworker_py.lifecycle import ExitReason, Model, WorkerState
from goworker_py.local import LocalHost
from goworker_py.logging import configure_logging, route_stdlib_logging
from goworker_py.params import check_params_fit, resolve_cluster_parameter
from goworker_py.retry import DefaultRetryPolicy, RetryPolicy, validate_retry_policy
from goworker_py.run import RunControl, RunSettings, ShardHost
from goworker_py.runner import ShardRunner
from goworker_py.schedule import _zone, shared_schedule
from goworker_py.signals import REGISTRY

__all__ = ["ExitReason", "Model", "Worker", "WorkerState"]

if TYPE_CHECKING:
    from goworker_py.cluster.sharding import ShardingStrategy
    from goworker_py.feed import UpstreamFeed


#: Seconds before the supervisor tries again after a pass failed on an unexpected error.
_RETRY_PAUSE = 1.0
#: Where a cluster service's ``@every`` schedules count from.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: The config of a worker given none (read only: a thousand workers share it).
_DEFAULT_CONFIG = default_worker_config()


class _Host(ShardHost, Protocol):
    """What the worker's supervisor drives: ``LocalHost`` or ``ClusterHost``."""

    instance: WorkerInstance
    runners: dict[int, ShardRunner]

    @property
    def completed(self) -> bool: ...

    def prepare(self) -> None: ...

    def start(self) -> None: ...

    def step(self) -> None: ...

    def next_timeout(self) -> float | None: ...

    def stop_runners(self) -> None: ...

    def close(self) -> None: ...


class Worker:
    """Runs a handler: once, or on a schedule; on every shard this process owns.

    :param handler: a :class:`~goworker_py.Handler` subclass (a fresh instance per run) or an
        instance (reused); anything else raises :class:`~goworker_py.errors.InvalidHandlerError`.
    :param config: a :class:`~goworker_py.WorkerConfig`; ``None`` uses the defaults.
    :param cron: a schedule (see :mod:`goworker_py.schedule`); ``None`` runs once.
    :param retry_policy: ``None`` uses :class:`~goworker_py.DefaultRetryPolicy`.
    :param model: :attr:`Model.LOCAL` or :attr:`Model.CLUSTER`.
    :param service_name: the service's name (required in cluster mode).
    :param sharding_total_count: number of shards (local mode owns them all).
    :param params: per-shard parameters, ``"0=a,1=b"``.
    :param timeout: stop gracefully after this many seconds (``wait()`` returns ``TIMED_OUT``).
    :param handle_signals: install SIGINT/SIGTERM handlers when ``run()`` is on the main thread.
    :param name: the worker's name in logs (default: service name or handler class name).
    :param misfire_policy: overrides the config's ``misfire_policy`` ("skip" or "run_once").
    :param failover: cluster mode: re-run at once a run that a dead instance left unfinished.
    :param overwrite: cluster mode: replace the service settings stored in ZooKeeper with ours.
    :param sharding_strategy: cluster mode: who owns which shard (default: sticky).
    :param clock: an injected :class:`~goworker_py.clock.Clock` (tests).
    """

    def __init__(
        self,
        handler: Any,
        config: WorkerConfig | None = None,
        cron: str | None = None,
        retry_policy: RetryPolicy | None = None,
        model: Model = Model.LOCAL,
        service_name: str | None = None,
        sharding_total_count: int = 1,
        params: str = "",
        *,
        timeout: float | None = None,
        handle_signals: bool = True,
        name: str | None = None,
        misfire_policy: str | None = None,
        failover: bool = True,
        overwrite: bool = False,
        sharding_strategy: ShardingStrategy | None = None,
        clock: Clock | None = None,
    ) -> None:
        validate_handler(handler)
        self.handler = handler
        self.config = config
        self.cron = cron
        self.retry_policy = retry_policy
        self.model = model
        self.service_name = service_name
        self.sharding_total_count = sharding_total_count
        self.params = params
        self.timeout = timeout
        self.handle_signals = handle_signals
        self.misfire_policy = misfire_policy
        self.failover = failover
        self.overwrite = overwrite
        self.sharding_strategy = sharding_strategy
        self.clock: Clock = clock or SYSTEM_CLOCK
        handler_name = handler.__name__ if isinstance(handler, type) else type(handler).__name__
        self.name = name or service_name or handler_name
        self._state = WorkerState.INITIALIZED
        self._lock = threading.Lock()
        self._wake = Flag()
        self._done = Flag()
        self._stop_reason: ExitReason | None = None
        self._forced = False
        self._exit_reason: ExitReason | None = None
        self._host: _Host | None = None
        self._control = RunControl()
        # Local mode: no supervisor thread (see run()); _end_local starts the shutdown once.
        self._local_supervision = False
        self._ending = False
        self._lock_end = threading.Lock()
        self._timer: threading.Timer | None = None
        # Set by a WorkerGroup: where a downstream's fire times come from, and who is told
        # of each successful run (shard, fire time) and of the worker's end.
        self._feed: UpstreamFeed | None = None
        #: Cluster mode: the upstream services (and their shard counts) of a group downstream.
        self._cluster_upstreams: tuple[tuple[str, int], ...] = ()
        self._run_listeners: list[Callable[[int, datetime], None]] = []
        self._end_listeners: list[Callable[[], None]] = []
        #: ``@every`` fire times count from this instant (a group's start); None: run() time.
        self._anchor: datetime | None = None
        self._signals_installed = False
        #: ``time.monotonic()`` when the supervisor's current pass began; None between passes.
        self._pass_began: float | None = None
        self._logger = logger.bind(worker=self.name, service=service_name or self.name)

    # -- public API -------------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        """The current lifecycle state."""
        return self._state

    @property
    def instance(self) -> WorkerInstance | None:
        """This process's :class:`WorkerInstance` once running (the seed's ``GetInstance``)."""
        return self._host.instance if self._host is not None else None

    @property
    def shards(self) -> tuple[int, ...]:
        """Shard indexes this worker currently runs."""
        if self._host is None:
            return ()
        return tuple(sorted(s for s, r in self._host.runners.items() if not r.stopping))

    @property
    def stopping(self) -> bool:
        """True once the worker was asked to stop (cancel, signal, timeout) or has ended."""
        return self._stop_reason is not None or self._state is WorkerState.SHUTDOWN

    @property
    def health(self) -> HealthStatus:
        """``GREEN``, ``YELLOW`` or ``RED`` (always ``GREEN`` in local mode)."""
        return getattr(self._host, "health", HealthStatus.GREEN)

    def supervisor_stalled_for(self) -> float:
        """Seconds the cluster supervisor has been inside its current pass (0 between passes,
        and always in local mode). A pass takes milliseconds; one that lasts is stuck in a call,
        and the systemd watchdog stops pinging (see :mod:`goworker_py.systemd`)."""
        began = self._pass_began
        return 0.0 if began is None else time.monotonic() - began

    @property
    def host(self) -> Any:
        """The object that owns this worker's shards (``LocalHost`` or ``ClusterHost``)."""
        return self._host

    def validate(self) -> RunSettings:
        """Check every argument; raise a :class:`ConfigError` subclass naming what to fix."""
        config = self._config()
        try:
            model = Model(self.model)
        except ValueError:
            raise ConfigError(
                f"model must be Model.LOCAL or Model.CLUSTER, got {self.model!r}"
            ) from None
        total = self.sharding_total_count
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ConfigError(f"sharding_total_count must be an int >= 1, got {total!r}")
        params_map = resolve_cluster_parameter(self.params)
        check_params_fit(params_map, total)
        zone = _zone(config.timezone)
        schedule = shared_schedule(self.cron, zone) if self.cron else None
        policy = (
            DefaultRetryPolicy()
            if self.retry_policy is None
            else validate_retry_policy(self.retry_policy)
        )
        misfire = self.misfire_policy or config.misfire_policy
        check_misfire_policy(misfire)
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or self.timeout <= 0
        ):
            raise ConfigError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        if model is Model.CLUSTER:
            self._validate_cluster(config)
        handler = self.handler
        factory: Callable[[], Any] = handler if isinstance(handler, type) else (lambda: handler)
        return RunSettings(
            worker_name=self.name,
            service=self.service_name or self.name,
            handler_factory=factory,
            retry_policy=policy,
            schedule=schedule,
            zone=zone,
            params=self.params,
            params_map=params_map,
            total=total,
            clock=self.clock,
            misfire_policy=misfire,
            misfire_grace=float(config.misfire_grace_time),
            logger=self._logger,
            wants_watch=callable(getattr(handler, "watch", None)),
            control=self._control,
            feed=self._feed,
            listeners=tuple(self._run_listeners),
            anchor=self._interval_anchor(model),
            step_names=_step_names(handler),
        )

    def _config(self) -> WorkerConfig:
        """The worker's config, checked; the defaults when none was given."""
        config = self.config
        if config is None:
            return _DEFAULT_CONFIG
        if not isinstance(config, WorkerConfig):
            raise ConfigError(f"config must be a WorkerConfig, got {type(config).__name__}")
        check_worker_config(config)
        return config

    def _interval_anchor(self, model: Model) -> datetime:
        """Where ``@every`` counts from: the worker's (or its group's) start in local mode; in
        cluster mode the Unix epoch, so that every instance of a service, whenever it started
        or claimed a shard, fires at the same instants."""
        if model is Model.CLUSTER:
            return _EPOCH
        return self._anchor or datetime.fromtimestamp(self.clock.time(), timezone.utc)

    def _validate_cluster(self, config: WorkerConfig) -> None:
        discovery = config.discovery
        if discovery is None or not discovery.hosts:
            raise DiscoveryError(
                "cluster mode needs discovery settings: pass "
                "WorkerConfig(discovery=DiscoveryConfig(hosts='zk1:2181,zk2:2181'))"
            )
        if not self.service_name:
            raise ConfigError(
                "cluster mode needs service_name: the instances of one service share its shards"
            )
        for name in ("connect_timeout", "session_timeout"):
            value = getattr(discovery, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise DiscoveryError(
                    f"discovery {name} must be a number of seconds > 0, got {value!r}"
                )

    def _make_host(self, settings: RunSettings, config: WorkerConfig) -> _Host:
        if Model(self.model) is Model.LOCAL:
            return LocalHost(settings, self._wake)
        from goworker_py.cluster.discovery import get_discovery
        from goworker_py.cluster.membership import ClusterHost

        assert config.discovery is not None
        return ClusterHost(
            settings,
            get_discovery(config.discovery, settings.service),
            self._wake,
            self._logger,
            strategy=self.sharding_strategy,
            failover=self.failover,
            overwrite=self.overwrite,
            cron=self.cron,
            shard_grace=config.shutdown_timeout,
            handover_timeout=config.handover_timeout,
            upstreams=self._cluster_upstreams,
        )

    def run(self) -> None:
        """Validate, start the shard threads and return at once.

        Raises a :class:`ConfigError` subclass for bad input, before any thread starts; in
        cluster mode :class:`~goworker_py.errors.BackendUnavailable` after the connect
        timeout, or :class:`~goworker_py.errors.ServiceConfigConflict`; and
        :class:`GoWorkerError` if the worker was already started.
        """
        with self._lock:
            if self._state is not WorkerState.INITIALIZED:
                raise GoWorkerError(f"worker {self.name!r} was already started")
            settings = self.validate()
            config = self._config()
            if config.logger is not None:
                configure_logging(config.logger)
            route_stdlib_logging()
            host = self._make_host(settings, config)
            self._state = WorkerState.PENDING
            if self.handle_signals:
                self._signals_installed = REGISTRY.register(self)
            try:
                if self._stop_reason is None:  # cancel() before run(): start nothing
                    host.prepare()
            except BaseException:
                self._state = WorkerState.INITIALIZED
                if self._signals_installed:
                    REGISTRY.unregister(self)
                    self._signals_installed = False
                raise
            self._host = host
            self._state = WorkerState.RUNNING
            self._logger.info(
                "worker started: {} mode, {} shard(s), schedule {}",
                Model(self.model).name.lower(),
                settings.total,
                repr(self.cron) if self.cron else "none (run once)",
            )
            if self._stop_reason is None:
                host.start()
            if isinstance(host, LocalHost):
                # A local worker needs no supervisor thread while it runs: its end (a stop
                # request, its runs completing, its timeout) starts a thread that shuts it down.
                host.on_completed = functools.partial(self._end_local, ExitReason.COMPLETED)
                if self.timeout is not None:
                    self._timer = threading.Timer(
                        self.timeout, self._request_stop, args=(ExitReason.TIMED_OUT,)
                    )
                    self._timer.daemon = True
                    self._timer.start()
                self._local_supervision = True
                if self._stop_reason is not None:
                    self._end_local(self._stop_reason)
                elif host.completed:
                    self._end_local(ExitReason.COMPLETED)
            else:
                threading.Thread(
                    target=self._supervise, name=f"goworker:{self.name}:supervisor", daemon=True
                ).start()

    def wait(self, timeout: float | None = None) -> ExitReason:
        """Block until the worker ends; return how it ended.

        Raises :class:`RunFailed` when a run-once worker's run gave up, and ``TimeoutError``
        (leaving the worker running) when ``timeout`` seconds pass first.
        """
        if self._state is WorkerState.INITIALIZED and not self._done.is_set():
            raise GoWorkerError(f"worker {self.name!r} was not started: call run() first")
        if not self._done.wait(timeout):
            raise TimeoutError(f"worker {self.name!r} still running after {timeout} s")
        if self._signals_installed:
            REGISTRY.restore_if_idle()
        failures = getattr(self._host, "failures", None)
        if failures:
            raise RunFailed(failures[max(failures)], failures)
        assert self._exit_reason is not None
        return self._exit_reason

    def cancel(self) -> None:
        """Stop gracefully; idempotent, callable from any thread (also before ``run()``)."""
        self._request_stop(ExitReason.CANCELLED, inline=True)

    def on_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM: the first asks for a graceful stop, a second for a fast one."""
        if self._stop_reason is not None:
            self._forced = True
        self._request_stop(ExitReason.SIGNALLED)

    # -- runtime control ---------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while paused, by :meth:`pause` or cluster-wide (``goworker-py pause``)."""
        return self._control.paused

    def pause(self) -> None:
        """Start no run until :meth:`resume`; the worker keeps its shards and its schedule.

        Fire times that pass while paused are not run (and not made up later); a run-once or
        failover run waits. The in-flight run, if any, goes on (see :meth:`stop_run`).
        Idempotent; callable from any thread, also before ``run()`` (the worker starts paused).
        """
        if not self._control.local:
            self._control.local = True
            self._logger.info("worker paused")

    def resume(self) -> None:
        """Undo :meth:`pause`: the next fire time runs as usual. Idempotent.

        A worker paused cluster-wide stays paused until the service is resumed.
        """
        if not self._control.local:
            return
        self._control.local = False
        self._logger.info(
            "worker resumed"
            if not self._control.cluster
            else "worker resumed locally; the service is still paused cluster-wide"
        )
        for runner in self._runners():
            runner.wake()

    def trigger(self) -> int:
        """Start one extra run now on every shard this worker runs; return how many.

        The run's ``ctx.is_triggered`` is True and its ``scheduled_time`` the moment it starts.
        A shard busy with a run starts it right after that one; asking again before it started
        asks nothing more. The schedule is unchanged. Raises :class:`GoWorkerError` if the
        worker is not running, is paused, or has no schedule (a run-once worker).
        """
        if self._state is not WorkerState.RUNNING or self._stop_reason is not None:
            raise GoWorkerError(f"worker {self.name!r} is not running: cannot trigger a run")
        if self.cron is None and self._feed is None and not self._cluster_upstreams:
            raise GoWorkerError(
                f"worker {self.name!r} has no schedule: trigger() adds a run to a scheduled worker"
            )
        if self._control.paused:
            raise GoWorkerError(f"worker {self.name!r} is paused: resume() it before trigger()")
        count = sum(runner.trigger() for runner in self._runners())
        self._logger.info("run triggered on {} shard(s)", count)
        return count

    def stop_run(self) -> int:
        """Cancel the in-flight runs (their ``ctx.cancelled`` is set); return how many.

        The worker keeps running: each shard waits for its next fire time.
        """
        count = sum(runner.cancel_run() for runner in self._runners())
        if count:
            self._logger.info("cancelled {} in-flight run(s)", count)
        return count

    def _runners(self) -> list[ShardRunner]:
        host = self._host
        return [] if host is None else [r for r in list(host.runners.values()) if not r.stopping]

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {self._state.name} shards={list(self.shards)}>"

    # -- supervisor thread ------------------------------------------------------------------------

    def _request_stop(self, reason: ExitReason, inline: bool = False) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._wake.set()
        if self._local_supervision:
            self._end_local(self._stop_reason, inline)

    def _end_local(self, reason: ExitReason, inline: bool = False) -> None:
        """Local mode: shut the worker down on a thread of its own (once).

        ``inline`` (``cancel()``, never a signal handler): when no shard is in a run — parked
        shards end on this thread as they are stopped — the shutdown cannot block, so it runs
        here: a thousand idle workers stop without a thousand threads.
        """
        with self._lock_end:
            if self._ending:
                return
            self._ending = True
        host = self._host
        if inline and host is not None and reason is not ExitReason.COMPLETED:
            host.stop_runners()
            if not any(runner.alive for runner in host.runners.values()):
                self._finish(reason)
                return
        threading.Thread(
            target=self._finish, args=(reason,), name=f"goworker:{self.name}:stop", daemon=True
        ).start()

    def _supervise(self) -> None:
        """Cluster mode: follow the cluster until the worker must end, then shut it down."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            reason = self._wait_for_end(deadline)
        except BaseException as exc:  # noqa: BLE001 - never leave wait() hanging
            self._logger.opt(exception=exc).critical("worker supervisor crashed: {!r}", exc)
            reason = ExitReason.CANCELLED
        self._finish(reason)

    def _finish(self, reason: ExitReason) -> None:
        try:
            self._shutdown(reason)
        except BaseException as exc:  # noqa: BLE001 - never leave wait() hanging
            self._logger.opt(exception=exc).critical("worker shutdown crashed: {!r}", exc)
            self._exit_reason = self._exit_reason or ExitReason.CANCELLED
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._state = WorkerState.SHUTDOWN
            if self._signals_installed:
                REGISTRY.unregister(self)
            self._done.set()
            for listener in self._end_listeners:
                try:
                    listener()
                except Exception as exc:  # noqa: BLE001 - a listener must not break shutdown
                    self._logger.opt(exception=exc).error("end listener raised {!r}", exc)

    def _wait_for_end(self, deadline: float | None) -> ExitReason:
        host = self._host
        assert host is not None
        while True:
            if self._stop_reason is not None:
                return self._stop_reason
            if host.completed:
                return ExitReason.COMPLETED
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return ExitReason.TIMED_OUT
            self._pass_began = time.monotonic()
            try:
                host.step()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive one bad pass
                self._logger.opt(exception=exc).error(
                    "supervisor pass failed: {!r}; trying again in {} s", exc, _RETRY_PAUSE
                )
                self._wake.wait(_RETRY_PAUSE)
                self._wake.clear()
                continue
            finally:
                self._pass_began = None
            pause = host.next_timeout()
            if pause is None or (remaining is not None and remaining < pause):
                pause = remaining
            self._wake.wait(pause)
            self._wake.clear()

    def _shutdown(self, reason: ExitReason) -> None:
        host = self._host
        assert host is not None
        self._exit_reason = reason
        if reason is ExitReason.COMPLETED:
            self._logger.info("worker finished")
            host.close()
            return
        self._stop_reason = self._stop_reason or reason
        host.stop_runners()
        config = self._config()
        if any(r.alive for r in host.runners.values()):
            # Runs to wait for (an idle worker stops at once: its one line is "stopped").
            self._logger.info("worker stopping ({})", reason.value)
        deadline = time.monotonic() + config.shutdown_timeout
        while not self._forced:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(r.alive for r in host.runners.values()):
                break
            self._wake.wait(remaining)
            self._wake.clear()
        for runner in host.runners.values():
            if runner.alive:
                runner.abandon()
                runner.logger.warning(
                    "shard {} still running {:.1f} s after cancellation: the handler ignores "
                    "ctx.cancelled; leaving its daemon thread behind",
                    runner.shard.index,
                    config.shutdown_timeout,
                )
        host.close()
        self._logger.info("worker stopped ({})", reason.value)


def _step_names(handler: Any) -> tuple[str, ...]:
    """The steps ``handler``'s runs call: ``do``, and ``before`` and ``after`` when it has
    them and does not inherit them unchanged from :class:`Handler`."""
    cls = handler if isinstance(handler, type) else type(handler)
    own = {} if isinstance(handler, type) else getattr(handler, "__dict__", {})

    def called(step: str) -> bool:
        if step in own:
            return own[step] is not None
        method = getattr(cls, step, None)
        return method is not None and method is not getattr(Handler, step)

    return tuple(step for step in ("before", "do", "after") if step == "do" or called(step))
