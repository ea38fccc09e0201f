"""systemd Type=notify: the sd_notify datagrams a worker sends, read from a real unix socket."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, NotifySocket, WorkerTracker, wait_until

from goworker_py import Context, Handler, WorkerConfig
from goworker_py.systemd import SystemdNotifier, notify, watchdog_interval

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path, path)
    yield sock
    sock.close()


class Quick(Handler):
    def do(self, ctx: Context) -> None:
        ctx.wait(0.01)


def test_notify_sends_a_datagram_to_a_path_socket(notify_socket: NotifySocket) -> None:
    assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": notify_socket.address})
    wait_until(lambda: notify_socket.lines() == ["READY=1", "STATUS=hello"], 2)


def test_notify_to_an_abstract_socket() -> None:
    name = f"goworker-test-{uuid.uuid4().hex}"
    sock = NotifySocket("@" + name, "\0" + name)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        wait_until(lambda: sock.lines() == ["WATCHDOG=1"], 2)
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent(tmp_path: Path) -> None:
    assert notify("READY=1", {}) is False
    assert SystemdNotifier(environ={}).enabled is False
    # A socket that is gone: a warning, never an exception.
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing.sock")}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "2000000"}, 2.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # another process's
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_notifier_reports_ready_watchdog_status_and_stopping(
    workers: WorkerTracker, notify_socket: NotifySocket
) -> None:
    worker = workers.make(Quick, WorkerConfig(timezone="UTC"), "@every 1h", sharding_total_count=2)
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"}
    notifier = SystemdNotifier(worker, environ=env)
    notifier.start()  # before run(): READY waits until the worker runs
    time.sleep(0.3)
    assert "READY=1" not in notify_socket.lines()
    worker.run()
    wait_until(lambda: "READY=1" in notify_socket.lines(), 5, what="READY=1")
    assert any(
        line.startswith("STATUS=") and "2 shard(s) GREEN" in line for line in notify_socket.lines()
    )
    wait_until(lambda: len(notify_socket.times_of("WATCHDOG=1")) >= 4, 5, what="watchdog pings")
    pings = notify_socket.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 0.4, f"pings must come within the 0.4 s watchdog interval: {gaps}"
    worker.pause()
    wait_until(lambda: any("paused" in line for line in notify_socket.lines()), 5)
    worker.cancel()
    worker.wait(5)
    wait_until(lambda: "STOPPING=1" in notify_socket.lines(), 5, what="STOPPING=1")
    notifier.stop()
    assert notify_socket.lines().count("STOPPING=1") == 1


def test_cli_run_under_systemd(notify_socket: NotifySocket, tmp_path: Path) -> None:
    """``goworker-py run`` as a Type=notify unit runs it: READY, watchdog pings, STOPPING."""
    (tmp_path / "unit_handler.py").write_text(
        "from goworker_py import Handler\n"
        "class Job(Handler):\n"
        "    def do(self, ctx):\n"
        "        ctx.logger.info('ran')\n"
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": "300000",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "goworker_py.cli",
            "run",
            "unit_handler:Job",
            "--cron",
            "@every 100ms",
            "--shards",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: "READY=1" in notify_socket.lines(), 20, what="READY=1 from the CLI")
        wait_until(lambda: len(notify_socket.times_of("WATCHDOG=1")) >= 3, 10)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "STOPPING=1" in notify_socket.lines()
    lines = notify_socket.lines()
    assert lines.index("READY=1") < lines.index("STOPPING=1")


def test_the_sample_unit_runs_a_valid_goworker_py_command() -> None:
    import shlex

    from goworker_py.cli import build_parser

    text = (REPO / "samples" / "goworker-py.service").read_text().replace("\\\n", " ")
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isupper()
    )
    assert settings["Type"] == "notify"
    assert int(settings["WatchdogSec"]) > 0
    argv = shlex.split(settings["ExecStart"])
    assert argv[0].endswith("/goworker-py")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.cluster and args.shards == 4
