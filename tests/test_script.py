"""ScriptHandler: real child processes — environment, output, exit codes, retries, stopping."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WorkerTracker, wait_until
from loguru import logger

from goworker_py import (
    Context,
    DefaultRetryPolicy,
    ExitReason,
    InvalidHandlerError,
    RunFailed,
    ScriptFailed,
    ScriptHandler,
    ScriptTimeout,
    WorkerConfig,
)

pytestmark = pytest.mark.timeout(60)

UTC = WorkerConfig(timezone="UTC")


def no_retry() -> DefaultRetryPolicy:
    """Fail a step at its first error: a policy that gives up at once."""
    return DefaultRetryPolicy(initial_interval=0.01, non_retryable_error_types=(Exception,))


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    lock = threading.Lock()

    def sink(message: Any) -> None:
        with lock:
            lines.append(message.record["message"])

    sink_id = logger.add(sink, level="DEBUG")
    yield lines
    logger.remove(sink_id)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as status:
            return status.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_the_run_reaches_the_script_as_environment_variables(
    workers: WorkerTracker, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    program = script(
        tmp_path,
        "env.sh",
        f'env | grep -E "^(GOWORKER_|EXTRA=)" | sort > "{out}.$GOWORKER_SHARD_INDEX"\n',
    )
    handler = ScriptHandler([program], env={"EXTRA": "yes"})
    worker = workers.make(handler, UTC, sharding_total_count=2, params="0=a,1=b")
    worker.run()
    assert worker.wait(20) is ExitReason.COMPLETED
    for shard, param in ((0, "a"), (1, "b")):
        env = dict(
            line.split("=", 1) for line in (tmp_path / f"out.{shard}").read_text().splitlines()
        )
        assert env["GOWORKER_SHARD_INDEX"] == str(shard)
        assert env["GOWORKER_SHARD_TOTAL"] == "2"
        assert env["GOWORKER_SHARD_PARAM"] == param
        assert env["GOWORKER_PARAMS"] == "0=a,1=b"
        assert len(env["GOWORKER_RUN_ID"]) == 16
        assert env["GOWORKER_SCHEDULED_TIME"].endswith("+00:00")
        assert env["GOWORKER_FENCING_TOKEN"] == ""  # local mode has no claim
        assert env["GOWORKER_ATTEMPT"] == "1"
        assert env["GOWORKER_IS_FAILOVER"] == "0"
        assert env["GOWORKER_WORKER"] == "ScriptHandler"
        assert env["EXTRA"] == "yes"


def test_output_goes_to_the_log(
    workers: WorkerTracker, tmp_path: Path, log_lines: list[str]
) -> None:
    program = script(tmp_path, "talk.sh", 'echo "hello out"\necho "hello err" >&2\n')
    worker = workers.make(ScriptHandler(program), UTC)
    worker.run()
    worker.wait(20)
    assert "[stdout] hello out" in log_lines
    assert "[stderr] hello err" in log_lines


def test_a_non_zero_exit_is_an_error_retried_by_the_policy(
    workers: WorkerTracker, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    program = script(
        tmp_path,
        "fail.sh",
        f'echo "$GOWORKER_ATTEMPT" >> "{attempts}"\necho "disk full" >&2\nexit 3\n',
    )
    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=2)
    worker = workers.make(ScriptHandler([program]), UTC, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(20)
    error = failed.value.last_error
    assert isinstance(error, ScriptFailed)
    assert error.returncode == 3
    assert error.stderr_tail == ("disk full",)
    assert "exited 3" in str(error) and "disk full" in str(error)
    assert attempts.read_text().split() == ["1", "2", "3"]


def test_a_failing_then_passing_script_succeeds(workers: WorkerTracker, tmp_path: Path) -> None:
    program = script(tmp_path, "flaky.sh", '[ "$GOWORKER_ATTEMPT" -ge 2 ]\n')
    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=3)
    worker = workers.make(ScriptHandler([program]), UTC, retry_policy=policy)
    worker.run()
    assert worker.wait(20) is ExitReason.COMPLETED


def test_cancellation_stops_the_whole_process_group(workers: WorkerTracker, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    program = script(
        tmp_path,
        "long.sh",
        f'sleep 60 &\necho "$$ $!" > "{pids}"\nwait\n',
    )
    worker = workers.make(ScriptHandler([program], grace=5), UTC)
    worker.run()
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 10)
    leader, child = (int(p) for p in pids.read_text().split())
    began = time.monotonic()
    worker.cancel()
    assert worker.wait(15) is ExitReason.CANCELLED
    assert time.monotonic() - began < 4, "SIGTERM ends it: no need to wait for the grace"
    wait_until(lambda: not alive(leader) and not alive(child), 5, what="script and its child")


def test_a_script_ignoring_sigterm_is_killed_after_the_grace(
    workers: WorkerTracker, tmp_path: Path, log_lines: list[str]
) -> None:
    ready = tmp_path / "ready"
    program = script(
        tmp_path,
        "stubborn.sh",
        f"trap 'echo ignoring TERM' TERM\ntouch \"{ready}\"\nwhile true; do sleep 0.05; done\n",
    )
    worker = workers.make(ScriptHandler([program], grace=0.5), UTC)
    worker.run()
    wait_until(ready.exists, 10)
    began = time.monotonic()
    worker.cancel()
    assert worker.wait(15) is ExitReason.CANCELLED
    took = time.monotonic() - began
    assert 0.5 <= took < 5, took
    assert any("SIGKILL" in line for line in log_lines)


def test_timeout_stops_the_script_and_fails_the_run(workers: WorkerTracker, tmp_path: Path) -> None:
    program = script(tmp_path, "slow.sh", "sleep 30\n")
    seen: list[BaseException] = []

    class Reporting(ScriptHandler):
        def error_message(self, ctx: Context, err: BaseException) -> None:
            seen.append(err)

    worker = workers.make(Reporting([program], timeout=0.5, grace=1), UTC, retry_policy=no_retry())
    began = time.monotonic()
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(20)
    assert isinstance(failed.value.last_error, ScriptTimeout)
    assert "timeout of 0.5 s" in str(failed.value.last_error)
    assert time.monotonic() - began < 5
    assert isinstance(seen[0], ScriptTimeout)


def test_stop_run_kills_the_script_and_the_worker_goes_on(
    workers: WorkerTracker, tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    program = script(tmp_path, "run.sh", f'echo $$ >> "{starts}"\nsleep 30\n')
    worker = workers.make(ScriptHandler([program], grace=1), UTC, "@every 1h")
    worker.run()
    worker.trigger()
    wait_until(starts.exists, 10)
    pid = int(starts.read_text().split()[0])
    assert worker.stop_run() == 1
    wait_until(lambda: not alive(pid), 5, what="the script to be stopped")
    assert worker.state.name == "RUNNING"
    assert worker.trigger() == 1
    wait_until(lambda: len(starts.read_text().split()) == 2, 10, what="a second run")


def test_shell_command_line(workers: WorkerTracker, tmp_path: Path) -> None:
    out = tmp_path / "out"
    handler = ScriptHandler(f'echo "shard $GOWORKER_SHARD_INDEX" > "{out}"', shell=True)
    worker = workers.make(handler, UTC)
    worker.run()
    assert worker.wait(20) is ExitReason.COMPLETED
    assert out.read_text() == "shard 0\n"


def test_a_program_found_on_the_path(workers: WorkerTracker, tmp_path: Path) -> None:
    worker = workers.make(ScriptHandler(["true"]), UTC)
    worker.run()
    assert worker.wait(20) is ExitReason.COMPLETED


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("/nonexistent/job.sh",), {}, "not found"),
        (("./job.sh --full",), {}, "pass a list such as"),
        (([],), {}, "non-empty list"),
        (([1, 2],), {}, "non-empty list"),
        ((b"/bin/true",), {}, "argument list or a program path"),
        ((["/bin/true"],), {"shell": True}, "needs a command line string"),
        ((["/bin/true"],), {"timeout": 0}, "timeout must be"),
        ((["/bin/true"],), {"grace": -1}, "grace must be"),
        ((["/bin/true"],), {"env": {"A": 1}}, "env must map str to str"),
        ((["/bin/true"],), {"cwd": "/nonexistent"}, "is not a directory"),
    ],
)
def test_bad_input_is_a_clear_error(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidHandlerError, match=message):
        ScriptHandler(*args, **kwargs)


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    path = tmp_path / "plain.sh"
    path.write_text("echo hi\n")
    with pytest.raises(InvalidHandlerError, match="not executable"):
        ScriptHandler([str(path)])
