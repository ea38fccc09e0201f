"""Helpers shared by the worker integration tests: polling, worker cleanup, subprocesses."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from loguru import logger

from goworker_py import GoWorkerError, Worker, WorkerState

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.01, what: str = ""
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or predicate}")
        time.sleep(interval)


class ManualClock:
    """A clock whose time moves only with :meth:`advance`; ``wait`` blocks for real until the
    event is set or the clock has been advanced past its timeout (unlike ``FakeClock``, whose
    waits advance time themselves — unusable when several threads share the clock)."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._mono = 0.0
        self._changed = threading.Condition()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds
            self._mono += seconds
            self._changed.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if timeout is None:
            return event.wait()
        deadline = self._mono + timeout
        while not event.is_set():
            with self._changed:
                if self._mono >= deadline:
                    break
                self._changed.wait(0.01)  # and look at the event again
        return event.is_set()


def shard_threads() -> list[threading.Thread]:
    """Live threads that belong to some goworker worker (not the process-wide chime's, which
    lingers a moment after the last worker that used it)."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("goworker:") and t.name != "goworker:chime"
    ]


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Live threads that were not in ``before`` (threads that ended meanwhile do not count)."""
    return [t for t in threading.enumerate() if t not in before]


class WorkerTracker:
    """Makes workers for a test and makes sure every one of them is stopped afterwards."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        #: Events a test's handlers block on; all set at teardown so no thread stays stuck.
        self.releases: list[threading.Event] = []

    def make(self, *args: Any, **kwargs: Any) -> Worker:
        """``Worker(*args, **kwargs)`` with ``handle_signals=False`` unless given."""
        kwargs.setdefault("handle_signals", False)
        worker = Worker(*args, **kwargs)
        self.workers.append(worker)
        return worker

    def release_event(self) -> threading.Event:
        """An event that is set at teardown (for handlers that ignore cancellation)."""
        event = threading.Event()
        self.releases.append(event)
        return event

    def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        for event in self.releases:
            event.set()
        for worker in self.workers:
            if worker.state is WorkerState.INITIALIZED:
                continue
            with contextlib.suppress(GoWorkerError, TimeoutError):
                worker.wait(timeout=10)


class LogCapture:
    """Collects loguru messages at ``level`` and above while active."""

    def __init__(self, level: str = "WARNING") -> None:
        self.level = level
        self.messages: list[str] = []
        self._sink_id: int | None = None

    def __enter__(self) -> LogCapture:
        self._sink_id = logger.add(self.messages.append, level=self.level, format="{message}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sink_id is not None:
            logger.remove(self._sink_id)

    def contains(self, text: str) -> bool:
        return any(text in message for message in list(self.messages))


class Process:
    """A Python subprocess whose stdout lines are collected, with arrival times, as they come."""

    def __init__(self, args: list[str], cwd: Path = REPO, env: dict[str, str] | None = None):
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.pop("CI", None)
        if env:
            full_env.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.err_lines: list[str] = []
        self._queue: queue.Queue[None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
            else:
                self.err_lines.append(line.rstrip("\n"))

    @property
    def stdout(self) -> list[str]:
        return [line for _, line in self.lines]

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.stdout)

    def times_of(self, text: str) -> list[float]:
        return [at for at, line in list(self.lines) if text in line]

    def wait_for_stdout(self, text: str, timeout: float, count: int = 1) -> None:
        wait_until(
            lambda: self.count(text) >= count or self.proc.poll() is not None,
            timeout,
            what=f"{count} x {text!r} on stdout",
        )
        assert self.count(text) >= count, self.report()

    def wait_for_stderr(self, text: str, timeout: float) -> None:
        wait_until(
            lambda: text in self.stderr or self.proc.poll() is not None,
            timeout,
            what=f"{text!r} on stderr",
        )
        assert text in self.stderr, self.report()

    def finish(self, timeout: float) -> int:
        """Wait for the process to exit (killing it after ``timeout``) and its output to drain."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"process did not exit within {timeout} s\n{self.report()}"
            ) from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def report(self) -> str:
        return "--- stdout\n" + "\n".join(self.stdout) + "\n--- stderr\n" + self.stderr


class NotifySocket:
    """A bound AF_UNIX datagram socket playing systemd's side; collects every message."""

    def __init__(self, address: str, bind_to: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def lines(self) -> list[str]:
        with self._lock:
            return [line for _, text in self.messages for line in text.split("\n")]

    def times_of(self, line: str) -> list[float]:
        with self._lock:
            return [at for at, text in self.messages if line in text.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def loguru_restored() -> Iterator[None]:
    """Put loguru's sinks and patcher back afterwards (for code that calls configure_logging,
    such as ``goworker-py run`` called in-process)."""
    core = logger._core  # type: ignore[attr-defined]
    patcher = core.patcher
    yield
    logger.remove()
    core.patcher = patcher
    logger.add(sys.stderr)
