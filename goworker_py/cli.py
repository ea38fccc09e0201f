"""The ``goworker-py`` command line.

``goworker-py run module:Handler [--cron EXPR] [--shards N] [--params P] [--config FILE] ...``
runs a handler as a worker in the foreground (so a systemd unit needs no wrapper script);
``goworker-py validate-cron EXPR`` checks a schedule and prints its next fire times.

For a cluster-mode service (``--zk HOSTS --service NAME``, or ``--config FILE`` with a
``[discovery]`` section): ``status`` shows instances, shard owners, last runs and next fire
times; ``pause`` / ``resume`` stop and restart new runs on every instance (shards are kept);
``trigger`` starts one run now on every shard; ``stop-run`` cancels every in-flight run.

Errors name the flag to change, never a Python argument. Exit codes: 0 success, 1 a run-once
worker's run failed, 2 bad input or the worker could not start, 3 the service refused the
request (``trigger`` while paused).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from goworker_py import cli_options
from goworker_py.cli_options import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RUN_FAILED,
    config_from_args,
    discovery_from_args,
)
from goworker_py.config import LoggerConfig, WorkerConfig
from goworker_py.errors import (
    ConfigError,
    GoWorkerError,
    HandlerImportError,
    RunFailed,
    ServicePaused,
)
from goworker_py.logging import configure_logging, silenced_stdlib_logging
from goworker_py.schedule import parse_schedule
from goworker_py.systemd import SystemdNotifier
from goworker_py.worker import Model, Worker

__all__ = ["build_parser", "build_worker", "config_from_args", "main"]


def build_worker(args: argparse.Namespace, config: WorkerConfig | None = None) -> Worker:
    """The :class:`Worker` that ``goworker-py run`` would start (not started yet).

    ``config`` is :func:`config_from_args` (computed when not given). Raises
    :class:`GoWorkerError` subclasses whose messages name the flag to change.
    """
    config = config if config is not None else config_from_args(args)
    cluster = cli_options.cluster_mode(args, config)
    cli_options.check_run_args(args, config, cluster)
    return Worker(
        load_handler(args.handler),
        config=config,
        cron=args.cron,
        model=Model.CLUSTER if cluster else Model.LOCAL,
        service_name=args.service,
        sharding_total_count=args.shards,
        params=args.params,
        timeout=args.timeout,
        name=args.name,
        failover=not args.no_failover,
        overwrite=bool(args.overwrite),
    )


def load_handler(target: str) -> Any:
    """Import ``module:Handler`` (or ``module:instance``, ``module:Outer.Inner``).

    A module that is missing, or that raises while being imported (a syntax error, any
    exception), is a :class:`HandlerImportError` naming the module; in the second case its
    ``__cause__`` is the original error, whose traceback :func:`main` prints.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise HandlerImportError(
            f"the handler must be given as module:Handler (e.g. jobs.report:Report), got {target!r}"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise HandlerImportError(
                f"cannot import handler module {module_name!r}: no module named {exc.name!r} "
                "(run goworker-py from the directory that holds it, or add it to PYTHONPATH)"
            ) from None
        raise HandlerImportError(
            f"handler module {module_name!r} raised {type(exc).__name__} while being "
            f"imported: {exc}"
        ) from exc
    except Exception as exc:  # any error in the user's module, reported as such
        raise HandlerImportError(
            f"handler module {module_name!r} raised {type(exc).__name__} while being "
            f"imported: {exc}"
        ) from exc
    handler: Any = module
    for part in attribute.split("."):
        try:
            handler = getattr(handler, part)
        except AttributeError:
            raise HandlerImportError(
                f"handler module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return handler


def _user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without the frames of goworker-py and of the import machinery."""
    importlib_dir = os.path.dirname(importlib.__file__)

    def internal(filename: str) -> bool:
        return (
            filename == __file__
            or filename.startswith("<frozen importlib")
            or os.path.dirname(filename) == importlib_dir
        )

    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(
        [frame for frame in report.stack if not internal(frame.filename)]
    )
    return "".join(report.format())


def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    # Logging first: the handler module may log while being imported.
    configure_logging(config.logger or LoggerConfig())
    worker = build_worker(args, config)
    server = None
    if args.metrics_port is not None:
        try:
            from goworker_py.metrics import MetricsServer
        except ImportError as exc:
            raise GoWorkerError(f"--metrics-port: {exc}") from None
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
        return EXIT_RUN_FAILED
    finally:
        notifier.stop()
        if server is not None:
            server.stop()
    print(f"goworker-py: worker ended ({reason.value})", file=sys.stderr)
    return EXIT_OK


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
    return EXIT_OK


def _admin(args: argparse.Namespace) -> Any:
    from goworker_py.cluster.admin import ClusterAdmin

    if not args.service:
        raise ConfigError("--service must name the service (it is empty)")
    return ClusterAdmin(discovery_from_args(args), args.service)


def _status(args: argparse.Namespace) -> int:
    import json

    from goworker_py.cluster.admin import format_status

    with _admin(args) as admin:
        status = admin.status(zone=args.tz)
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return EXIT_OK


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
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``goworker-py``."""
    return cli_options.build_parser(
        "Run a goworker-py handler as a worker, check a schedule, or steer a cluster-mode service.",
        run=_run,
        validate_cron=_validate_cron,
        status=_status,
        control=_control,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``goworker-py`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command not in cli_options.SERVICE_COMMANDS:
            code: int = args.func(args)
        elif args.log_level:
            configure_logging(LoggerConfig(level=args.log_level))
            code = args.func(args)
        else:
            # One clear message, not kazoo's own connection lines (a dozen of them while
            # ZooKeeper is unreachable): those are shown only when asked for with --log-level.
            with silenced_stdlib_logging():
                code = args.func(args)
    except ServicePaused as exc:
        print(f"goworker-py: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except GoWorkerError as exc:
        print(f"goworker-py: {cli_options.flag_advice(str(exc))}", file=sys.stderr)
        if isinstance(exc, HandlerImportError) and exc.__cause__ is not None:
            print(_user_traceback(exc.__cause__), file=sys.stderr, end="")
        return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":
    raise SystemExit(main())
