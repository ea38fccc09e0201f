"""Each of samples/*.py runs as its docstring says (as a subprocess, like a user would run it)."""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import Iterator

import pytest
from helpers import SAMPLES, Process

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def _run(processes: list[Process], name: str, *args: str) -> Process:
    process = Process([str(SAMPLES / name), *args])
    processes.append(process)
    return process


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_every_local_sample_is_covered() -> None:
    needs_zookeeper = {"cluster.py"}  # cluster mode: tests/cluster/test_cluster_sample.py
    covered = {
        "async_handler.py",
        "cron.py",  # tests/test_signals.py
        "custom_config.py",
        "custom_retry_policy.py",
        "default_error_retry.py",
        "default_retry_policy.py",
        "helloworld.py",
        "pipeline.py",
        "script_task.py",
    }
    assert {path.name for path in SAMPLES.glob("*.py")} - needs_zookeeper <= covered


def test_helloworld(processes: list[Process]) -> None:
    process = _run(processes, "helloworld.py")
    assert process.finish(timeout=15) == 0, process.report()
    lines = process.stdout
    assert lines[0] == "before: setting up"
    assert lines[1].startswith("do: hello, world (run ")
    assert lines[2:] == ["after: done", "worker ended: completed"], process.report()
    assert "Traceback" not in process.stderr


def test_custom_retry_policy(processes: list[Process]) -> None:
    process = _run(processes, "custom_retry_policy.py")
    assert process.finish(timeout=25) == 1, process.report()
    lines = process.stdout
    befores = [line for line in lines if line.startswith("before")]
    assert befores == [f"before (attempt {n})" for n in range(1, 6)], process.report()
    gaps = _gaps(process.times_of("before (attempt"))
    assert all(1.5 <= gap < 6 for gap in gaps), gaps
    errors = [line for line in lines if line.startswith("err: ")]
    assert len(errors) == 6
    assert all(line.startswith("err: unknown error") for line in errors[:5])
    assert "gave up after 5 attempts" in errors[5]
    assert lines[-1].startswith("end = run failed on shard(s) 0")
    assert "Do" not in lines and "After" not in lines
    assert "Traceback" not in process.stderr


def test_default_retry_policy(processes: list[Process]) -> None:
    """Attempts 2, 4 and 8 s apart: check the first two gaps, then stop it with SIGTERM."""
    process = _run(processes, "default_retry_policy.py")
    process.wait_for_stdout("err: before err", timeout=15, count=3)
    process.proc.send_signal(signal.SIGTERM)  # during the 8 s wait before the last attempt
    assert process.finish(timeout=10) == 0, process.report()
    first, second = _gaps(process.times_of("err: before err"))
    assert 1.5 <= first < 5, first
    assert 3.5 <= second < 8, second
    assert process.count("err: before err") == 3
    assert process.count("helloWorld") == 0 and process.count("After") == 0
    assert "Traceback" not in process.stderr


def test_default_error_retry_stops_promptly_on_sigterm(processes: list[Process]) -> None:
    process = _run(processes, "default_error_retry.py")
    process.wait_for_stdout("err: unknown error", timeout=15, count=3)  # waited 1 s, then 2 s
    process.proc.send_signal(signal.SIGTERM)  # now in the 4 s wait: it must not run out
    assert process.finish(timeout=10) == 0, process.report()
    lines = process.stdout
    assert lines[0] == "Before"
    errors = [line for line in lines if line.startswith("err: ")]
    assert [e.split(" [")[0] for e in errors] == [
        f"err: unknown error (attempt {n})" for n in (1, 2, 3)
    ], process.report()
    assert lines[-1] == "end = signalled"
    assert "After" not in lines
    first, second = _gaps(process.times_of("err: unknown error"))
    assert 0.8 <= first < 4 and 1.5 <= second < 6
    assert "Traceback" not in process.stderr


def test_custom_config_writes_json_lines_with_ids(processes: list[Process]) -> None:
    process = _run(processes, "custom_config.py")
    assert process.finish(timeout=15) == 0, process.report()
    records = [json.loads(line)["record"] for line in process.stdout if line.strip()]
    assert records, process.report()
    messages = {record["message"]: record for record in records}
    for step in ("before", "helloWorld", "after"):
        assert step in messages, process.report()
        extra = messages[step]["extra"]
        assert extra["worker"] == "HelloWorld"
        assert extra["shard"] == 0
        assert len(extra["run"]) >= 8
    assert messages["before"]["level"]["name"] == "DEBUG"
    assert messages["helloWorld"]["level"]["name"] == "INFO"
    runs = {messages[step]["extra"]["run"] for step in ("before", "helloWorld", "after")}
    assert len(runs) == 1


def test_pipeline(processes: list[Process]) -> None:
    process = _run(processes, "pipeline.py")
    assert process.finish(timeout=25) == 0, process.report()
    lines = process.stdout
    assert lines[-1] == "ended: extract timed_out, load completed", process.report()
    extracts = [line.split(None, 1)[1] for line in lines if line.startswith("extract")]
    loads = [line.split(None, 1)[1] for line in lines if line.startswith("load")]
    assert len(extracts) >= 4 and sorted(loads) == sorted(extracts), process.report()
    for load in loads:  # each load after the extract of the same shard and fire time
        assert lines.index("extract " + load) < lines.index("load    " + load.lstrip())


def test_script_task(processes: list[Process]) -> None:
    process = _run(processes, "script_task.py")
    assert process.finish(timeout=25) == 0, process.report()
    out = "\n".join(process.stdout)
    assert "[stdout] shard 0 of 2: param eu" in out
    assert "[stdout] shard 1 of 2: param us" in out
    assert process.stdout[-1] == "worker ended: completed"


def test_async_handler(processes: list[Process]) -> None:
    process = _run(processes, "async_handler.py")
    assert process.finish(timeout=25) == 0, process.report()
    lines = process.stdout
    assert lines[-1] == "worker ended: timed_out", process.report()
    echoes = [line.removeprefix("echo: ").split() for line in lines if line.startswith("echo: ")]
    assert len(echoes) == len(lines) - 1, process.report()  # nothing else: no "err:" line
    runs: dict[tuple[str, str], list[str]] = {}
    for _, shard, fire, _, n in echoes:
        runs.setdefault((shard, fire), []).append(n)
    for shard in ("0", "1"):
        complete = [fire for (s, fire), ns in runs.items() if s == shard and ns == ["1", "2", "3"]]
        assert len(complete) >= 2, process.report()  # before -> do (3 echoes) -> after, per run
    assert "Traceback" not in process.stderr


def test_async_handler_stops_at_ctrl_c(processes: list[Process]) -> None:
    process = _run(processes, "async_handler.py")
    process.wait_for_stdout("echo: ", timeout=15)
    process.proc.send_signal(signal.SIGINT)
    assert process.finish(timeout=10) == 0, process.report()
    assert process.stdout[-1] == "worker ended: signalled", process.report()
    assert not any(line.startswith("err:") for line in process.stdout), process.report()
    assert "Traceback" not in process.stderr


def test_the_cluster_sample_on_the_memory_backend(processes: list[Process]) -> None:
    """One process, an in-process store: the instance owns both shards."""
    process = _run(processes, "cluster.py", "memory://sample", "* * * * * *")
    process.wait_for_stdout("shard 1/2 param='b'", timeout=15)
    process.wait_for_stdout("shard 0/2 param='a'", timeout=15)
    process.proc.send_signal(signal.SIGINT)
    assert process.finish(timeout=15) == 0, process.report()
    assert process.stdout[-1] == "worker ended: signalled"
