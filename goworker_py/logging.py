"""Logging through loguru.

Importing goworker-py never adds or removes a loguru sink. :func:`configure_logging` (called by
the application, or by ``Worker`` when its config carries a ``LoggerConfig``) replaces loguru's
sinks with one built from a :class:`~goworker_py.config.LoggerConfig`. kazoo's and APScheduler's
standard-library logging is routed into loguru, so one sink shows everything.

Every log line of a run is bound with ``worker``, ``service``, ``shard`` and ``run`` ids; the
format that :func:`configure_logging` installs shows them. The library writes no line per run at
DEBUG or above (a run's start and end are TRACE lines), so an application that keeps loguru's
default DEBUG sink does not pay for two lines per run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from loguru import logger

from goworker_py.config import LoggerConfig
from goworker_py.errors import ConfigError

if TYPE_CHECKING:
    from loguru import Record

__all__ = [
    "DEFAULT_FORMAT",
    "configure_logging",
    "logger",
    "route_stdlib_logging",
    "silenced_stdlib_logging",
]

DEFAULT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "{extra[ids]}<cyan>{name}</cyan> - <level>{message}</level>"
)
_ID_KEYS = ("worker", "service", "shard", "run")
_ROUTED = ("kazoo", "apscheduler")
_route_lock = threading.Lock()
_routed = False


def _add_ids(record: Record) -> None:
    extra = record["extra"]
    ids = " ".join(f"{key}={extra[key]}" for key in _ID_KEYS if key in extra)
    extra["ids"] = f"[{ids}] " if ids else ""


class _InterceptHandler(logging.Handler):
    """Forwards standard-library records to loguru, keeping level and caller."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # The caller is the first frame outside the logging module; a fixed depth is wrong
        # for some entry points (``log.exception`` adds a frame).
        frame, depth = sys._getframe(1), 1
        while frame.f_back is not None and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).bind(origin=record.name).log(
            level, record.getMessage()
        )


def route_stdlib_logging(level: int = logging.INFO) -> None:
    """Send kazoo's and APScheduler's standard-library log records to loguru (idempotent)."""
    global _routed
    with _route_lock:
        if _routed:
            return
        handler = _InterceptHandler()
        for name in _ROUTED:
            std = logging.getLogger(name)
            std.addHandler(handler)
            std.setLevel(level)
            std.propagate = False
        _routed = True


@contextlib.contextmanager
def silenced_stdlib_logging(names: tuple[str, ...] = _ROUTED) -> Iterator[None]:
    """Drop the standard-library log records of ``names`` (kazoo, APScheduler) for a while.

    For one-shot commands (``goworker-py status``) that report a failure in one clear message
    of their own: while ZooKeeper is unreachable kazoo logs a line per connection attempt.
    The loggers' levels are restored on exit.
    """
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in names]
    for std, _ in saved:
        std.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for std, level in saved:
            std.setLevel(level)


def configure_logging(config: LoggerConfig | None = None) -> list[int]:
    """Replace loguru's sinks with one built from ``config``; return the new sink ids.

    ``None`` means :class:`LoggerConfig`'s defaults: INFO to stderr. Tracebacks never show
    local variables' values (``diagnose=False``: a password in a failing handler's variable
    must not reach the log). ``sink`` may be ``"stderr"``, ``"stdout"`` or a file path
    (rotation and retention apply to files only). ``serialize=True`` writes one JSON object
    per line.
    """
    cfg = config or LoggerConfig()
    try:
        logger.level(cfg.level.upper())
    except (ValueError, AttributeError) as exc:
        raise ConfigError(
            f"unknown log level {cfg.level!r}: use TRACE, DEBUG, INFO, SUCCESS, WARNING, "
            "ERROR or CRITICAL"
        ) from exc
    options: dict[str, Any] = {
        "level": cfg.level.upper(),
        "serialize": cfg.serialize,
        "enqueue": cfg.enqueue,
        "format": cfg.format or DEFAULT_FORMAT,
        "backtrace": False,
        "diagnose": False,
    }
    if cfg.colorize is not None:
        options["colorize"] = cfg.colorize
    sink: Any
    if cfg.sink in ("stderr", "stdout"):
        if cfg.rotation or cfg.retention:
            raise ConfigError(
                f"logger rotation/retention apply to file sinks only, not to {cfg.sink!r}"
            )
        sink = sys.stderr if cfg.sink == "stderr" else sys.stdout
    elif not cfg.sink:
        raise ConfigError("logger sink must be 'stderr', 'stdout' or a file path")
    else:
        sink = cfg.sink
        if cfg.rotation:
            options["rotation"] = cfg.rotation
        if cfg.retention:
            options["retention"] = cfg.retention
    logger.configure(patcher=_add_ids)
    # Open the new sink before removing the old ones: a bad path or rotation must raise
    # without leaving the application with no sink at all.
    try:
        sink_id = logger.add(sink, **options)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot open log sink {cfg.sink!r}: {exc}") from exc
    logger.remove()
    sink_id = logger.add(sink, **options)
    route_stdlib_logging()
    return [sink_id]
