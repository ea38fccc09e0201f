"""Logging through loguru: configure_logging, stdlib routing, ids in every line of a run."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from goworker_py.config import LoggerConfig
from goworker_py.errors import ConfigError, RunFailed
from goworker_py.logging import DEFAULT_FORMAT, configure_logging, route_stdlib_logging

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def restore_loguru() -> Iterator[None]:
    """Put loguru back the way it ships (one stderr sink, no patcher) after each test."""
    patcher = logger._core.patcher  # type: ignore[attr-defined]
    yield
    logger.remove()
    logger._core.patcher = patcher  # type: ignore[attr-defined]
    logger.add(sys.stderr)


def collect() -> tuple[list[Any], int]:
    """A list sink receiving every record from DEBUG up; returns (records, sink id)."""
    records: list[Any] = []
    sink_id = logger.add(lambda message: records.append(message.record), level="DEBUG")
    return records, sink_id


def lines(path: Path) -> list[str]:
    logger.complete()
    return path.read_text().splitlines()


def test_importing_goworker_py_adds_or_removes_no_sink() -> None:
    code = textwrap.dedent(
        """
        from loguru import logger
        ids = list(logger._core.handlers)
        import goworker_py
        import goworker_py.logging, goworker_py.worker, goworker_py.runner, goworker_py.schedule
        assert list(logger._core.handlers) == ids, (ids, list(logger._core.handlers))
        assert logger._core.patcher is None
        print("ok", ids)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok [0]")  # loguru's own default stderr sink, untouched


def test_file_sink_replaces_existing_sinks(tmp_path: Path) -> None:
    records, _ = collect()
    path = tmp_path / "worker.log"
    sink_ids = configure_logging(LoggerConfig(level="DEBUG", sink=str(path)))
    assert len(sink_ids) == 1
    logger.debug("written to the file")
    assert records == []  # the earlier sink is gone
    assert any(line.endswith("written to the file") for line in lines(path))


def test_level_filtering(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    configure_logging(LoggerConfig(level="warning", sink=str(path)))  # case-insensitive
    logger.debug("debug-line")
    logger.info("info-line")
    logger.warning("warning-line")
    logger.error("error-line")
    text = "\n".join(lines(path))
    assert "debug-line" not in text and "info-line" not in text
    assert "| WARNING  |" in text and "warning-line" in text
    assert "error-line" in text


def test_json_lines_parse_as_json(tmp_path: Path) -> None:
    path = tmp_path / "worker.jsonl"
    configure_logging(LoggerConfig(sink=str(path), serialize=True))
    logger.bind(worker="w1", shard=3).info("first")
    logger.warning("second {}", 2)
    parsed = [json.loads(line) for line in lines(path)]
    assert [entry["record"]["message"] for entry in parsed] == ["first", "second 2"]
    assert [entry["record"]["level"]["name"] for entry in parsed] == ["INFO", "WARNING"]
    assert parsed[0]["record"]["extra"]["worker"] == "w1"
    assert parsed[0]["record"]["extra"]["shard"] == 3


def test_worker_ids_show_in_the_default_format(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    configure_logging(LoggerConfig(sink=str(path)))
    worker_logger = logger.bind(worker="mailer", service="mail-svc")
    run_logger = worker_logger.bind(shard=2, run="5f2c9a0e11aa4b7c")
    run_logger.info("sending batch")
    worker_logger.info("worker started")
    logger.info("plain line")
    run_line, worker_line, plain_line = lines(path)
    assert "[worker=mailer service=mail-svc shard=2 run=5f2c9a0e11aa4b7c] " in run_line
    assert run_line.endswith("sending batch")
    assert "[worker=mailer service=mail-svc] " in worker_line
    assert "[" not in plain_line and plain_line.endswith("plain line")


def test_custom_format_and_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggerConfig(sink="stdout", format="{level}:{message}", colorize=False))
    logger.info("to stdout")
    assert capsys.readouterr().out == "INFO:to stdout\n"


def test_stderr_sink(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggerConfig(sink="stderr", colorize=False))
    logger.bind(worker="w").error("to stderr")
    err = capsys.readouterr().err
    assert "| ERROR    | [worker=w] " in err and err.rstrip().endswith("to stderr")


def test_rotation_splits_the_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    configure_logging(LoggerConfig(sink=str(path), rotation="500 B", format="{message}"))
    for number in range(40):
        logger.info("line {:03d} {}", number, "x" * 60)
    logger.complete()
    files = sorted(tmp_path.glob("worker*.log"))
    assert len(files) > 3
    assert all(file.stat().st_size <= 600 for file in files)
    everything = "".join(file.read_text() for file in files)
    assert all(f"line {n:03d}" in everything for n in range(40))  # nothing lost


def test_retention_removes_old_rotated_files(tmp_path: Path) -> None:
    old = tmp_path / "worker.2000-01-01_00-00-00_000000.log"
    old.write_text("ancient\n")
    os.utime(old, (946684800, 946684800))
    unrelated = tmp_path / "other.log"
    unrelated.write_text("keep me\n")
    os.utime(unrelated, (946684800, 946684800))
    path = tmp_path / "worker.log"
    configure_logging(
        LoggerConfig(sink=str(path), rotation="200 B", retention="1 day", format="{message}")
    )
    for _ in range(10):
        logger.info("x" * 60)
    logger.complete()
    assert not old.exists()
    assert unrelated.exists()
    assert path.exists()


@pytest.mark.parametrize("level", ["NOPE", "", None, 10])
def test_bad_level_is_a_config_error(level: Any) -> None:
    with pytest.raises(ConfigError, match="unknown log level"):
        configure_logging(LoggerConfig(level=level))


@pytest.mark.parametrize(
    ("sink", "rotation", "retention"),
    [("stderr", "1 MB", None), ("stdout", None, "1 day"), ("stderr", "1 day", "1 week")],
)
def test_rotation_or_retention_on_a_stream_is_a_config_error(
    sink: str, rotation: str | None, retention: str | None
) -> None:
    with pytest.raises(ConfigError, match=f"file sinks only, not to '{sink}'"):
        configure_logging(LoggerConfig(sink=sink, rotation=rotation, retention=retention))


def test_empty_sink_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="logger sink must be"):
        configure_logging(LoggerConfig(sink=""))


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: LoggerConfig(sink=str(tmp / "w.log"), rotation="100 parsecs"),
        lambda tmp: LoggerConfig(sink=str(tmp / "w.log"), retention="forever-ish"),
        lambda tmp: LoggerConfig(sink=str(tmp)),  # a directory
        lambda tmp: LoggerConfig(level="NOPE"),
        lambda tmp: LoggerConfig(sink="stderr", rotation="1 MB"),
    ],
    ids=["bad-rotation", "bad-retention", "directory-sink", "bad-level", "rotation-on-stderr"],
)
def test_a_failed_configure_keeps_the_existing_sinks(tmp_path: Path, make: Any) -> None:
    records, _ = collect()
    with pytest.raises(ConfigError):
        configure_logging(make(tmp_path))
    logger.info("still logged")
    assert [record["message"] for record in records] == ["still logged"]


def test_bad_file_sink_names_the_sink(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open log sink"):
        configure_logging(LoggerConfig(sink=str(tmp_path), format="{message}"))


@pytest.mark.parametrize("name", ["kazoo.client", "kazoo.protocol.connection", "apscheduler"])
def test_stdlib_records_of_kazoo_and_apscheduler_arrive_in_loguru(name: str) -> None:
    route_stdlib_logging()
    route_stdlib_logging()  # idempotent: one handler, so one record per call
    records, _ = collect()
    std = logging.getLogger(name)
    std.warning("connection %s lost", "zk1:2181")
    std.debug("below the routed level")
    assert [record["message"] for record in records] == ["connection zk1:2181 lost"]
    assert records[0]["level"].name == "WARNING"
    assert records[0]["extra"]["origin"] == name
    # The caller is the code that logged, not the intercepting handler.
    assert records[0]["function"] == "test_stdlib_records_of_kazoo_and_apscheduler_arrive_in_loguru"


def test_stdlib_exceptions_keep_their_traceback() -> None:
    route_stdlib_logging()
    records, _ = collect()
    try:
        raise RuntimeError("socket closed")
    except RuntimeError:
        logging.getLogger("kazoo.client").exception("session lost")
    assert records[0]["message"] == "session lost"
    assert records[0]["level"].name == "ERROR"
    assert records[0]["exception"] is not None
    assert isinstance(records[0]["exception"].value, RuntimeError)
    # Attributed to the code that logged, not to logging.exception().
    assert records[0]["function"] == "test_stdlib_exceptions_keep_their_traceback"


def test_configure_logging_routes_stdlib_logging(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    configure_logging(LoggerConfig(sink=str(path)))
    logging.getLogger("apscheduler.scheduler").info("scheduler started")
    assert any(line.endswith("scheduler started") for line in lines(path))


def test_default_format_shows_the_ids() -> None:
    assert "{extra[ids]}" in DEFAULT_FORMAT


def test_configure_logging_defaults_to_info_without_local_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging()
    logger.debug("debug-line")
    logger.info("info-line")

    def connect(secret: str) -> None:
        raise RuntimeError("login refused")

    password = "hunter2-" + "topsecret"
    try:
        connect(password)
    except RuntimeError:
        logger.exception("connect failed")
    err = capsys.readouterr().err
    assert "info-line" in err and "debug-line" not in err
    assert "login refused" in err and "Traceback" in err
    assert "hunter2-topsecret" not in err, "diagnose=False: no local variable values"


def test_a_run_writes_no_line_at_debug_or_above() -> None:
    """An application that keeps loguru's default DEBUG sink must not pay a line per run."""
    from goworker_py import Context, Handler, Worker, WorkerConfig

    class Quiet(Handler):
        def do(self, ctx: Context) -> None:
            pass

    records, _ = collect()
    worker = Worker(Quiet, config=WorkerConfig(timezone="UTC"), handle_signals=False)
    worker.run()
    worker.wait(5)
    assert any("worker finished" in record["message"] for record in records)
    per_run = [record["message"] for record in records if "run" in record["extra"]]
    assert per_run == []


def test_each_run_ends_with_one_trace_line_with_its_fire_time_outcome_and_duration() -> None:
    from goworker_py import Context, DefaultRetryPolicy, Handler, Worker, WorkerConfig

    class Fails(Handler):
        def do(self, ctx: Context) -> None:
            raise ValueError("no")

    class Works(Handler):
        def do(self, ctx: Context) -> None:
            pass

    traced: list[Any] = []
    logger.add(lambda message: traced.append(message.record), level="TRACE")
    once = DefaultRetryPolicy(non_retryable_error_types=(ValueError,))
    for handler in (Works, Fails):
        worker = Worker(
            handler,
            config=WorkerConfig(timezone="UTC"),
            retry_policy=once,
            handle_signals=False,
            name=handler.__name__,
        )
        worker.run()
        if handler is Works:
            assert worker.wait(5)
        else:
            with pytest.raises(RunFailed):
                worker.wait(5)
    per_run = [record for record in traced if "run" in record["extra"]]
    trace = [record for record in per_run if record["level"].name == "TRACE"]
    assert [record["extra"]["worker"] for record in trace] == ["Works", "Fails"]
    ok, failed = (record["message"] for record in trace)
    assert re.fullmatch(r"run for \d{4}-\d\d-\d\d \S+ ok \(\d+\.\d ms\)", ok), ok
    assert re.fullmatch(r"run for \S+ \S+ failed in do \(\d+\.\d ms\)", failed), failed
