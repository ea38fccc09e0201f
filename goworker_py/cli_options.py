"""What the ``goworker-py`` flags mean: the parser, and the settings derived from the flags.

Settings come in three layers, each overriding the one before: the defaults, then a config file
(``--config FILE``) or, without one, the ``GOWORKER_*`` environment variables (which also
override a file), then the flags. Flags change only the fields they name
(:func:`dataclasses.replace`): nothing read from the file is lost on the way.

**Cluster mode** is on with ``--cluster``, and also whenever a cluster-only option is given —
``--zk``, ``--service``, ``--namespace``, ``--session-timeout``, ``--connect-timeout``,
``--overwrite``, ``--no-failover`` — or the config holds ZooKeeper hosts. A worker started on N
machines with ``--zk`` is never N local workers each running every shard. (``--name`` names a
local worker in the logs.)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from goworker_py.config import (
    MISFIRE_POLICIES,
    DiscoveryConfig,
    LoggerConfig,
    WorkerConfig,
    config_from_environment,
    load_config,
)
from goworker_py.errors import (
    ConfigError,
    DiscoveryError,
    InvalidParamsError,
    InvalidScheduleError,
)
from goworker_py.params import resolve_cluster_parameter
from goworker_py.schedule import parse_schedule
from goworker_py.version import __version__

#: Exit codes of ``goworker-py``.
EXIT_OK = 0
#: A run-once worker's run failed (after its retries).
EXIT_RUN_FAILED = 1
#: Bad input (the message names the flag), or the worker could not start.
EXIT_BAD_INPUT = 2
#: The service refused the request: ``trigger`` while it is paused.
EXIT_REFUSED = 3

#: Commands that steer a service through ZooKeeper.
SERVICE_COMMANDS = ("status", "pause", "resume", "trigger", "stop-run")

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

#: ``run`` options that only mean something in cluster mode: any of them turns it on.
CLUSTER_OPTIONS = {
    "discovery": "--discovery",
    "zk": "--zk",
    "service": "--service",
    "namespace": "--namespace",
    "session_timeout": "--session-timeout",
    "connect_timeout": "--connect-timeout",
    "overwrite": "--overwrite",
    "no_failover": "--no-failover",
}

_EPILOG = """\
cluster mode: on with --cluster, and also whenever a cluster-only option is given (--discovery,
--zk, --service, --namespace, --session-timeout, --connect-timeout, --overwrite, --no-failover) or
the config holds ZooKeeper hosts ([discovery] hosts, GOWORKER_DISCOVERY_HOSTS).

settings: defaults < --config FILE < GOWORKER_* environment variables < flags.
logging: INFO to stderr unless the config or --log-level says otherwise.
exit codes: 0 ok; 1 a run-once worker's run failed; 2 bad input or the worker could not
start; 3 the service refused the request (trigger while paused).
"""

# Messages of library errors that give Python advice, as the command line says it.
_FLAG_ADVICE = (
    (re.compile(r"pass overwrite=True"), "pass --overwrite"),
    (re.compile(r"\(connect_timeout\)"), "(--connect-timeout)"),
    (re.compile(r"\bsharding_total_count="), "--shards "),
    (re.compile(r"\bschedule="), "--cron "),
    (re.compile(r"\bparams="), "--params "),
    (
        re.compile(r"check auth_user/auth_password"),
        "check auth_user/auth_password in the [discovery] section of --config",
    ),
    (re.compile(r"; pass an instance instead"), "; name an instance instead (module:instance)"),
)


def flag_advice(message: str) -> str:
    """``message`` with Python advice (``pass overwrite=True``) turned into the flag to use."""
    for pattern, replacement in _FLAG_ADVICE:
        message = pattern.sub(replacement, message)
    return message


# -- values -------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}")
    return value


def _seconds(minimum_exclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            bound = "> 0" if minimum_exclusive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text!r}")
        return value

    parse.__name__ = "seconds"
    return parse


def _zone_name(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown time zone {text!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r}: use one of {', '.join(LOG_LEVELS)}"
        )
    return level


# -- settings -----------------------------------------------------------------------------------


def _base_config(args: argparse.Namespace) -> WorkerConfig:
    config_file = getattr(args, "config", None)
    return load_config(config_file) if config_file else config_from_environment()


def _changes(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """``{field: value}`` for each flag in ``names`` (``{arg: field}``) that was given."""
    return {
        field: getattr(args, arg)
        for arg, field in names.items()
        if getattr(args, arg, None) is not None
    }


_DISCOVERY_FLAGS = {
    "zk": "hosts",
    "namespace": "namespace",
    "session_timeout": "session_timeout",
    "connect_timeout": "connect_timeout",
}
_WORKER_FLAGS = {
    "shutdown_timeout": "shutdown_timeout",
    "tz": "timezone",
    "misfire_policy": "misfire_policy",
}


def _discovery_changes(args: argparse.Namespace) -> dict[str, Any]:
    """What ``--discovery URL`` (or its alias ``--zk HOSTS``) and the other discovery flags set."""
    url = getattr(args, "discovery", None)
    changes = _changes(args, _DISCOVERY_FLAGS)
    if url is None:
        return changes
    if "hosts" in changes:
        raise DiscoveryError("pass --discovery URL or --zk HOSTS, not both")
    try:
        parsed = DiscoveryConfig.from_url(url)
    except DiscoveryError as exc:
        raise DiscoveryError(f"--discovery: {exc}") from None
    from_url = {
        "protocol": parsed.protocol,
        "hosts": parsed.hosts,
        "use_ssl": parsed.use_ssl,
        "database": parsed.database,
    }
    if parsed.auth_user is not None or parsed.auth_password is not None:
        from_url.update(auth_user=parsed.auth_user, auth_password=parsed.auth_password)
    return {**from_url, **changes}


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """The :class:`WorkerConfig` of ``goworker-py run``: file or environment, then the flags.

    Each flag replaces only its own field. The logger is always set: the command line
    configures logging (INFO to stderr by default) where a library leaves it alone.
    """
    config = _base_config(args)
    discovery_changes = _discovery_changes(args)
    discovery = config.discovery
    if discovery_changes:
        discovery = dataclasses.replace(discovery or DiscoveryConfig(), **discovery_changes)
    logger = config.logger or LoggerConfig()
    if getattr(args, "log_level", None):
        logger = dataclasses.replace(logger, level=args.log_level)
    return dataclasses.replace(
        config, logger=logger, discovery=discovery, **_changes(args, _WORKER_FLAGS)
    )


def discovery_from_args(args: argparse.Namespace) -> DiscoveryConfig:
    """The discovery settings of ``status``/``pause``/...: file or environment, then flags."""
    config = _base_config(args)
    discovery = dataclasses.replace(
        config.discovery or DiscoveryConfig(), **_discovery_changes(args)
    )
    if not discovery.hosts:
        raise DiscoveryError(
            "no discovery hosts: pass --discovery URL (e.g. zookeeper://zk1:2181, "
            "etcd://127.0.0.1:2379, redis://127.0.0.1:6379/0) or --zk HOST:PORT (or --config "
            "FILE with [discovery] hosts)"
        )
    return discovery


def cluster_mode(args: argparse.Namespace, config: WorkerConfig) -> str | None:
    """Why ``run`` is in cluster mode (``"--cluster"``, ``"--zk"``, ...), or None for local."""
    if args.cluster:
        return "--cluster"
    for arg, flag in CLUSTER_OPTIONS.items():
        value = getattr(args, arg, None)
        if value is not None and value is not False:
            return flag
    if config.discovery is not None and config.discovery.hosts:
        return "ZooKeeper hosts in the config"
    return None


def check_run_args(args: argparse.Namespace, config: WorkerConfig, cluster: str | None) -> None:
    """Check what ``run`` was given, before anything starts; errors name the flag."""
    if cluster is not None:
        implied = "" if cluster == "--cluster" else f" (implied by {cluster})"
        if config.discovery is None or not config.discovery.hosts:
            raise DiscoveryError(
                f"cluster mode{implied} needs discovery hosts: pass --discovery URL or --zk "
                "HOST:PORT[,HOST:PORT...] (or --config FILE with [discovery] hosts)"
            )
        if not args.service:
            raise ConfigError(
                f"cluster mode{implied} needs --service NAME: the instances of one service "
                "share its shards"
            )
    if args.cron is not None:
        try:
            parse_schedule(args.cron, "UTC")
        except InvalidScheduleError as exc:
            raise InvalidScheduleError(f"--cron: {exc}") from None
    try:
        params = resolve_cluster_parameter(args.params)
    except InvalidParamsError as exc:
        raise InvalidParamsError(f"--params: {exc}") from None
    outside = sorted(index for index in params if index >= args.shards)
    if outside:
        raise InvalidParamsError(
            f"--params names shard(s) {', '.join(map(str, outside))} but --shards is "
            f"{args.shards} (shards 0..{args.shards - 1})"
        )


# -- the parser ---------------------------------------------------------------------------------


def _add_zookeeper_options(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--discovery",
        metavar="URL",
        help="the coordination backend: zookeeper://h1:2181,h2:2181[/chroot], "
        "etcd://h1:2379,h2:2379 (etcds:// for TLS), redis://[user:password@]host:6379/0 "
        "(rediss:// for TLS)",
    )
    parser.add_argument(
        "--zk",
        metavar="HOSTS",
        help="ZooKeeper hosts, e.g. zk1:2181,zk2:2181 (or with /chroot): "
        "--discovery zookeeper://HOSTS",
    )
    parser.add_argument(
        "--namespace", metavar="NS", help="namespace of the service's keys (default: goworker)"
    )
    parser.add_argument(
        "--connect-timeout",
        type=_seconds(True),
        metavar="SECONDS",
        help="give up connecting to the coordination server after this long (default 10)",
    )


def build_parser(
    description: str,
    *,
    run: Callable[[argparse.Namespace], int],
    validate_cron: Callable[[argparse.Namespace], int],
    status: Callable[[argparse.Namespace], int],
    control: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """The argument parser; each command's function is set as ``args.func``."""
    parser = argparse.ArgumentParser(
        prog="goworker-py",
        description=description,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"goworker-py {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser(
        "run",
        help="run a handler as a worker in the foreground",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("handler", help="the handler, as module:Class (or module:instance)")
    sub.add_argument("--cron", metavar="EXPR", help="schedule expression; omit to run once")
    sub.add_argument("--config", metavar="FILE", help="a TOML config file (see load_config)")
    sub.add_argument(
        "--shards", type=_positive_int, default=1, metavar="N", help="number of shards (default 1)"
    )
    sub.add_argument("--params", default="", metavar="PARAMS", help="shard params, e.g. 0=a,1=b")
    sub.add_argument(
        "--name",
        metavar="NAME",
        help="the worker's name in logs and metrics (default: --service "
        "or the handler's class name)",
    )
    sub.add_argument(
        "--timeout",
        type=_seconds(True),
        metavar="SECONDS",
        help="stop gracefully after this long (exit 0, 'timed_out')",
    )
    sub.add_argument(
        "--shutdown-timeout",
        type=_seconds(False),
        metavar="SECONDS",
        help="how long an in-flight run gets to return once stopping (default 30)",
    )
    sub.add_argument(
        "--tz", type=_zone_name, metavar="ZONE", help="time zone of the schedule (default: local)"
    )
    sub.add_argument(
        "--misfire-policy",
        choices=MISFIRE_POLICIES,
        help="fire times missed during an overrun: skip them (default) or run once at its end",
    )
    sub.add_argument(
        "--log-level", type=_log_level, metavar="LEVEL", help="log level (default INFO)"
    )
    cluster = sub.add_argument_group("cluster mode (any of these turns it on)")
    cluster.add_argument("--cluster", action="store_true", help="cluster mode through ZooKeeper")
    cluster.add_argument(
        "--service", metavar="NAME", help="the service's name (its instances share the shards)"
    )
    _add_zookeeper_options(cluster)
    cluster.add_argument(
        "--session-timeout",
        type=_seconds(True),
        metavar="SECONDS",
        help="ZooKeeper session timeout: how fast a dead instance's shards move (default 10)",
    )
    cluster.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the service's settings stored in ZooKeeper (shards, params, cron) with ours",
    )
    cluster.add_argument(
        "--no-failover",
        action="store_true",
        default=None,
        help="do not re-run at once a run that a dead instance left unfinished",
    )
    metrics = sub.add_argument_group("monitoring (needs goworker-py[metrics])")
    metrics.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus /metrics and /healthz on this port",
    )
    metrics.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address for --metrics-port (default 127.0.0.1, this machine only; "
        "0.0.0.0 to let other machines scrape it)",
    )
    sub.set_defaults(func=run)

    check = commands.add_parser("validate-cron", help="check a schedule, print next fire times")
    check.add_argument("expression")
    check.add_argument("-n", "--count", type=_positive_int, default=5, help="how many fire times")
    check.add_argument(
        "--tz", type=_zone_name, default=None, metavar="ZONE", help="time zone (default: local)"
    )
    check.set_defaults(func=validate_cron)

    def service_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--service", required=True, metavar="NAME", help="the service's name")
        sub.add_argument(
            "--config", metavar="FILE", help="a TOML config with a [discovery] section"
        )
        _add_zookeeper_options(sub)
        sub.add_argument(
            "--log-level",
            type=_log_level,
            metavar="LEVEL",
            help="also show the ZooKeeper client's own log lines at this level and above",
        )
        return sub

    sub = service_command("status", "show a cluster-mode service at a glance")
    sub.add_argument("--json", action="store_true", help="print JSON (times in ISO 8601, UTC)")
    sub.add_argument(
        "--tz", type=_zone_name, default="UTC", metavar="ZONE", help="zone of the schedule (UTC)"
    )
    sub.set_defaults(func=status)
    for name, action, help_text in (
        ("pause", "pause", "start no run on any instance until resumed (shards are kept)"),
        ("resume", "resume", "undo pause"),
        ("trigger", "trigger", "start one run now on every shard (refused while paused: exit 3)"),
        ("stop-run", "stop_run", "cancel every in-flight run (the workers keep running)"),
    ):
        service_command(name, help_text).set_defaults(func=control, action=action)
    return parser
