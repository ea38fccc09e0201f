"""What a run is made of and what shard runners share: settings, results, the host protocol.

:class:`RunSettings` is everything about a worker that all its shard runners read (handler,
schedule, retry policy, misfire policy, run-time control, group dependencies); a
:class:`ShardHost` is what a runner needs from the worker that owns it — :class:`LocalHost`
or the cluster's ``ClusterHost`` — to begin and end a run; :class:`RunResult` says how a run
ended.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, Protocol

from goworker_py.handler import Context
from goworker_py.instance import WorkerInstance
from goworker_py.retry import RetryPolicy

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.clock import Clock
    from goworker_py.feed import UpstreamFeed
    from goworker_py.runner import ShardRunner
    from goworker_py.schedule import Schedule


#: Why a run was cancelled. An operator's ``stop_run`` ends its fire for good; a run cut short
#: by a graceful stop, a hand-over or self-fencing is *interrupted*: its fire time is re-run
#: (SPEC 4.3) — by the shard's next owner, or by this one when it keeps the shard.
STOP_RUN, SHUTDOWN, HANDOVER, FENCE = "stop-run", "shutdown", "hand-over", "fence"
INTERRUPTING = frozenset({SHUTDOWN, HANDOVER, FENCE})


@dataclass
class RunResult:
    """How one run ended."""

    run_id: str
    ok: bool
    cancelled: bool = False
    error: BaseException | None = None
    failed_step: str = ""
    #: Why the run was cancelled (``STOP_RUN``, ``SHUTDOWN``, ``HANDOVER``, ``FENCE``); None
    #: when it was not, or when the handler raised ``RunCancelled`` on its own.
    cause: str | None = None

    @property
    def interrupted(self) -> bool:
        """Cancelled by a graceful stop, a hand-over or self-fencing: its fire is owed."""
        return self.cancelled and self.cause in INTERRUPTING

    def __str__(self) -> str:
        """How the run ended, in words (a run's TRACE line)."""
        if self.ok:
            return "ok"
        if self.cancelled:
            return f"cancelled ({self.cause})" if self.cause else "cancelled"
        return f"failed in {self.failed_step}" if self.failed_step else "failed"


@dataclass(frozen=True)
class RunTicket:
    """What the host grants a run that may start: its fencing token and failover flag."""

    fencing_token: int | None = None
    is_failover: bool = False
    scheduled_time: datetime | None = None
    #: Cluster mode: ``time.monotonic()`` instant at which the run's lease lapses (see
    #: ``Context.cancelled``); None when no lease applies (local mode).
    lease: Callable[[], float] | None = None


class ShardHost(Protocol):
    """What a shard runner needs from the worker that owns it (local or cluster mode)."""

    def instance_for(self, shard_index: int) -> WorkerInstance:
        """This instance, as seen from ``shard_index``'s thread."""

    def members(self) -> tuple[WorkerInstance, ...]:
        """The live members of the service."""

    def wait_ready(self, runner: ShardRunner) -> bool:
        """Block while no run may start (cluster outage); False once the runner is stopping."""

    def begin_run(self, runner: ShardRunner, fire_time: datetime, run_id: str) -> RunTicket | None:
        """Called before a run; ``None`` means the run must not start (not owner, unhealthy)."""

    def end_run(self, runner: ShardRunner, ctx: Context, result: RunResult) -> None:
        """Called after a run, whatever its outcome."""

    def skip_fire(self, runner: ShardRunner, fire_time: datetime) -> None:
        """Called when ``fire_time`` passes unrun because the worker is paused."""

    def runner_exited(self, runner: ShardRunner) -> None:
        """Called once, on the runner's thread, when it stops for good."""


class RunControl:
    """Run-time switches a worker's shard runners share.

    While :attr:`paused` no run starts: fire times pass unrun, other runs wait. A worker is
    paused on its own (``Worker.pause()``) or with its whole service (the cluster control node).
    """

    __slots__ = ("_cluster", "_local", "_lock", "paused")

    def __init__(self) -> None:
        self._local = self._cluster = False
        # The two switches are set from different threads (the user's, the cluster's).
        self._lock = threading.Lock()
        #: Paused on its own or with its service (read before every run: an attribute).
        self.paused = False

    @property
    def local(self) -> bool:
        """Paused by ``Worker.pause()``."""
        return self._local

    @local.setter
    def local(self, paused: bool) -> None:
        with self._lock:
            self._local = paused
            self.paused = paused or self._cluster

    @property
    def cluster(self) -> bool:
        """Paused cluster-wide (``goworker-py pause``)."""
        return self._cluster

    @cluster.setter
    def cluster(self, paused: bool) -> None:
        with self._lock:
            self._cluster = paused
            self.paused = self._local or paused


@dataclass
class RunSettings:
    """Everything about a worker that its shard runners share."""

    worker_name: str
    service: str
    handler_factory: Callable[[], Any]
    retry_policy: RetryPolicy
    schedule: Schedule | None
    zone: tzinfo
    params: str
    params_map: dict[int, str]
    total: int
    clock: Clock
    misfire_policy: str
    logger: Logger
    #: Seconds a fire time missed during a hand-over or an outage may be late and still run.
    misfire_grace: float = 1.0
    wants_watch: bool = False
    control: RunControl = field(default_factory=RunControl)
    #: A downstream worker of a WorkerGroup: its fire times come from its upstreams.
    feed: UpstreamFeed | None = None
    #: Told ``(shard, fire time)`` after each successful run (a WorkerGroup's dependencies).
    listeners: tuple[Callable[[int, datetime], None], ...] = ()
    #: When the worker (or its group) started: ``@every`` fire times count from it.
    anchor: datetime | None = None
    #: The names of the steps a run calls, in order: not those the handler lacks or leaves to
    #: :class:`Handler`'s empty defaults.
    step_names: tuple[str, ...] = ("before", "do", "after")
