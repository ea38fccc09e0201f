"""goworker-py: long-running background workers — cron schedules, retries, graceful shutdown,
and ZooKeeper-sharded clusters with failover.

Everything a user needs is importable from here::

    from goworker_py import Handler, Context, Worker

    class Hello(Handler):
        def do(self, ctx: Context) -> None:
            ctx.logger.info("hello from shard {}", ctx.shard.index)

    worker = Worker(Hello, cron="*/5 * * * * *")
    worker.run()
    worker.wait()
"""

from goworker_py.cluster import (
    AverageStrategy,
    CoordinationBackend,
    ShardingStrategy,
    StickyStrategy,
    get_discovery,
    set_discovery,
)
from goworker_py.config import (
    DiscoveryConfig,
    LoggerConfig,
    WorkerConfig,
    config_from_environment,
    default_worker_config,
    load_config,
)
from goworker_py.errors import (
    AccessDenied,
    AttemptsExhausted,
    BackendError,
    BackendMissing,
    BackendUnavailable,
    ClusterError,
    ConfigError,
    ConfigFileError,
    DiscoveryError,
    GoWorkerError,
    HandlerImportError,
    InvalidHandlerError,
    InvalidParamsError,
    InvalidScheduleError,
    LeaseLost,
    RunCancelled,
    RunFailed,
    ScriptFailed,
    ScriptTimeout,
    ServiceConfigConflict,
    ServicePaused,
    TryAgain,
    ZooKeeperUnavailable,
)
from goworker_py.group import WorkerGroup
from goworker_py.handler import Context, Handler, Shard, validate_handler
from goworker_py.instance import HealthStatus, WatchInfo, WorkerInstance
from goworker_py.logging import configure_logging
from goworker_py.params import resolve_cluster_parameter
from goworker_py.retry import (
    RETRY_DONE,
    DefaultRetryPolicy,
    RetryPolicy,
    get_default_retry_policy,
)
from goworker_py.schedule import (
    NO_CRON_BACKOFF,
    get_backoff_for_next_schedule,
    next_fire_time,
    validate_schedule,
)
from goworker_py.script import ScriptHandler
from goworker_py.systemd import SystemdNotifier
from goworker_py.version import __version__
from goworker_py.worker import ExitReason, Model, Worker, WorkerState

__all__ = [
    # Handlers
    "Context",
    "Handler",
    "ScriptHandler",
    "Shard",
    "WatchInfo",
    "validate_handler",
    # Workers
    "ExitReason",
    "HealthStatus",
    "Model",
    "Worker",
    "WorkerGroup",
    "WorkerInstance",
    "WorkerState",
    "SystemdNotifier",
    # Cluster
    "AverageStrategy",
    "ShardingStrategy",
    "StickyStrategy",
    "CoordinationBackend",
    "get_discovery",
    "set_discovery",
    # Configuration and logging
    "DiscoveryConfig",
    "LoggerConfig",
    "WorkerConfig",
    "config_from_environment",
    "configure_logging",
    "default_worker_config",
    "load_config",
    # Schedules and parameters
    "NO_CRON_BACKOFF",
    "get_backoff_for_next_schedule",
    "next_fire_time",
    "resolve_cluster_parameter",
    "validate_schedule",
    # Retries
    "RETRY_DONE",
    "DefaultRetryPolicy",
    "RetryPolicy",
    "get_default_retry_policy",
    # Errors
    "AccessDenied",
    "AttemptsExhausted",
    "BackendError",
    "BackendMissing",
    "BackendUnavailable",
    "ClusterError",
    "ConfigError",
    "ConfigFileError",
    "DiscoveryError",
    "GoWorkerError",
    "HandlerImportError",
    "InvalidHandlerError",
    "InvalidParamsError",
    "InvalidScheduleError",
    "LeaseLost",
    "RunCancelled",
    "RunFailed",
    "ScriptFailed",
    "ScriptTimeout",
    "ServiceConfigConflict",
    "ServicePaused",
    "TryAgain",
    "ZooKeeperUnavailable",
    # Version
    "__version__",
]
