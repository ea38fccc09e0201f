"""The ``goworker-py`` command line.

``goworker-py run module:Handler [--cron EXPR] [--shards N] [--params P] [--config FILE] ...``
runs a handler as a worker in the foreground (so a systemd unit needs no wrapper script);
``goworker-py validate-cron EXPR`` checks a schedule and prints its next fire times.

For a cluster-mode service (``--zk HOSTS --service NAME``, or ``--config FILE`` with a
``[discovery]`` section): ``status`` shows instances, shard owners, last runs and next fire
times; ``pause`` / ``resume`` stop and restart new runs on every instance (shards are kept);
``trigger`` starts one run now on every shard; ``stop-run`` cancels every in-flight run.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from goworker_py.config import DiscoveryConfig, WorkerConfig, default_worker_config, load_config
from goworker_py.errors import GoWorkerError, RunFailed
from goworker_py.schedule import parse_schedule
from goworker_py.systemd import SystemdNotifier
from goworker_py.worker import Model, Worker


def _load_handler(target: str) -> Any:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise GoWorkerError(f"handler must be given as module:Handler, got {target!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GoWorkerError(f"cannot import module {module_name!r}: {exc}") from exc
    handler = module
    for part in attribute.split("."):
        try:
            handler = getattr(handler, part)
        except AttributeError:
            raise GoWorkerError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return handler


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else default_worker_config()
    if args.zk:
        discovery = config.discovery or DiscoveryConfig()
        discovery.hosts = args.zk
        config = WorkerConfig(
            logger=config.logger,
            discovery=discovery,
            shutdown_timeout=config.shutdown_timeout,
            timezone=config.timezone,
            misfire_policy=config.misfire_policy,
        )
    worker = Worker(
        _load_handler(args.handler),
        config=config,
        cron=args.cron,
        model=Model.CLUSTER if args.cluster else Model.LOCAL,
        service_name=args.service,
        sharding_total_count=args.shards,
        params=args.params,
    )
    server = None
    if args.metrics_port is not None:
        try:
            from goworker_py.metrics import MetricsServer
        except ImportError as exc:
            raise GoWorkerError(str(exc)) from None
        server = MetricsServer(worker, port=args.metrics_port, host=args.metrics_host).start()
    try:
        worker.run()
    except BaseException:
        if server is not None:
            server.stop()
        raise
    notifier = SystemdNotifier(worker).start()
    try:
        reason = worker.wait()
    except RunFailed as exc:
        print(f"goworker-py: {exc}", file=sys.stderr)
        return 1
    finally:
        notifier.stop()
        if server is not None:
            server.stop()
    print(f"goworker-py: worker ended ({reason.value})", file=sys.stderr)
    return 0


def _validate_cron(args: argparse.Namespace) -> int:
    schedule = parse_schedule(args.expression, args.tz)
    moment = datetime.now(timezone.utc)
    print(f"{args.expression!r} is valid; next {args.count} fire time(s):")
    for _ in range(args.count):
        fire = schedule.next_after(moment)
        if fire is None:
            print("  (no further fire time)")
            break
        print(f"  {fire.isoformat()}")
        moment = fire
    return 0


def _admin(args: argparse.Namespace) -> Any:
    from goworker_py.cluster.admin import ClusterAdmin

    config = load_config(args.config) if args.config else default_worker_config()
    discovery = dataclasses.replace(config.discovery or DiscoveryConfig())
    if args.zk:
        discovery.hosts = args.zk
    if args.namespace is not None:
        discovery.namespace = args.namespace
    return ClusterAdmin(discovery, args.service)


def _status(args: argparse.Namespace) -> int:
    from goworker_py.cluster.admin import format_status

    with _admin(args) as admin:
        status = admin.status(zone=args.tz)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


_CONTROL_DONE = {
    "pause": "paused: every instance keeps its shards and starts no run until 'resume'",
    "resume": "resumed: runs start again at their next fire time",
    "trigger": "triggered: every instance starts one run now on each shard it owns",
    "stop_run": "stop-run sent: every instance cancels its in-flight runs",
}


def _control(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        getattr(admin, args.action)()
    print(f"service {args.service!r} {_CONTROL_DONE[args.action]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``goworker-py``."""
    parser = argparse.ArgumentParser(prog="goworker-py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a handler as a worker in the foreground")
    run.add_argument("handler", help="the handler, as module:Class (or module:instance)")
    run.add_argument("--cron", help="schedule expression; omit to run once")
    run.add_argument("--config", help="a TOML config file (see load_config)")
    run.add_argument("--cluster", action="store_true", help="cluster mode through ZooKeeper")
    run.add_argument("--zk", help="ZooKeeper hosts, e.g. zk1:2181,zk2:2181")
    run.add_argument("--service", help="service name (required with --cluster)")
    run.add_argument("--shards", type=int, default=1, help="sharding total count (default 1)")
    run.add_argument("--params", default="", help="shard params, e.g. 0=a,1=b")
    run.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics and /healthz on this port (needs goworker-py[metrics])",
    )
    run.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port")
    run.set_defaults(func=_run)

    check = commands.add_parser("validate-cron", help="check a schedule, print next fire times")
    check.add_argument("expression")
    check.add_argument("-n", "--count", type=int, default=5, help="how many fire times")
    check.add_argument("--tz", default=None, help="time zone (default: local)")
    check.set_defaults(func=_validate_cron)

    def service_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--service", required=True, help="the service's name")
        sub.add_argument("--zk", help="ZooKeeper hosts, e.g. zk1:2181,zk2:2181")
        sub.add_argument("--config", help="a TOML config file with a [discovery] section")
        sub.add_argument("--namespace", help="ZooKeeper namespace (default: goworker)")
        return sub

    status = service_command("status", "show a cluster-mode service at a glance")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--tz", default="UTC", help="time zone of the schedule (default UTC)")
    status.set_defaults(func=_status)
    for name, action, help_text in (
        ("pause", "pause", "start no run on any instance until resumed (shards are kept)"),
        ("resume", "resume", "undo pause"),
        ("trigger", "trigger", "start one run now on every shard"),
        ("stop-run", "stop_run", "cancel every in-flight run (the workers keep running)"),
    ):
        service_command(name, help_text).set_defaults(func=_control, action=action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``goworker-py`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except GoWorkerError as exc:
        print(f"goworker-py: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
