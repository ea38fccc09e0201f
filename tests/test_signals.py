"""SIGINT/SIGTERM handling, in subprocesses (signal handlers belong to the main thread)."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SAMPLES, Process

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cron_sample_stops_cleanly_on_signal(
    processes: list[Process], signum: signal.Signals
) -> None:
    process = Process([str(SAMPLES / "cron.py"), "* * * * * *"])
    processes.append(process)
    process.wait_for_stdout("after", timeout=10)
    process.proc.send_signal(signum)
    code = process.finish(timeout=10)
    assert code == 0, process.report()
    assert "worker ended: signalled" in process.stdout, process.report()
    assert "Traceback" not in process.stderr
    assert "KeyboardInterrupt" not in process.stderr


def test_signal_mid_run_cancels_it_and_after_runs(processes: list[Process], tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        from goworker_py import Context, Handler, Worker

        class Consumer(Handler):
            def before(self, ctx: Context) -> None:
                print("before", flush=True)

            def do(self, ctx: Context) -> None:
                print("do started", flush=True)
                while not ctx.wait(0.05):
                    pass
                print("do saw cancel", flush=True)

            def after(self, ctx: Context) -> None:
                print(f"after ran, cancelled={ctx.cancelled}", flush=True)

        worker = Worker(Consumer)
        worker.run()
        print(f"worker ended: {worker.wait().value}", flush=True)
        """,
    )
    process = Process([script])
    processes.append(process)
    process.wait_for_stdout("do started", timeout=10)
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(timeout=10) == 0, process.report()
    assert process.stdout == [
        "before",
        "do started",
        "do saw cancel",
        "after ran, cancelled=True",
        "worker ended: signalled",
    ], process.report()
    assert "Traceback" not in process.stderr


def test_second_signal_forces_a_fast_stop(processes: list[Process], tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import threading

        from goworker_py import Context, Handler, Worker, WorkerConfig

        class Stubborn(Handler):
            def do(self, ctx: Context) -> None:
                print("do started", flush=True)
                threading.Event().wait(120)  # ignores ctx.cancelled

        worker = Worker(Stubborn, config=WorkerConfig(shutdown_timeout=30))
        worker.run()
        print(f"worker ended: {worker.wait().value}", flush=True)
        """,
    )
    process = Process([script])
    processes.append(process)
    process.wait_for_stdout("do started", timeout=10)
    process.proc.send_signal(signal.SIGTERM)
    process.wait_for_stderr("worker stopping", timeout=10)
    assert process.proc.poll() is None  # the first signal waits for the stubborn handler
    second_at = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(timeout=10) == 0, process.report()
    assert time.monotonic() - second_at < 5
    assert "worker ended: signalled" in process.stdout
    assert "ignores ctx.cancelled" in process.stderr
    assert "Traceback" not in process.stderr


def test_previous_signal_handlers_are_restored(processes: list[Process], tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import signal

        from goworker_py import Context, Handler, Worker

        def mine(signum, frame):
            print("mine", flush=True)

        signal.signal(signal.SIGTERM, mine)
        int_before = signal.getsignal(signal.SIGINT)

        class Look(Handler):
            def do(self, ctx: Context) -> None:
                during = signal.getsignal(signal.SIGTERM)
                print(f"during: replaced={during is not mine}", flush=True)

        worker = Worker(Look)
        worker.run()
        print(f"worker ended: {worker.wait().value}", flush=True)
        print(f"sigterm restored: {signal.getsignal(signal.SIGTERM) is mine}", flush=True)
        print(f"sigint restored: {signal.getsignal(signal.SIGINT) is int_before}", flush=True)
        signal.raise_signal(signal.SIGTERM)
        """,
    )
    process = Process([script])
    processes.append(process)
    assert process.finish(timeout=15) == 0, process.report()
    assert process.stdout == [
        "during: replaced=True",
        "worker ended: completed",
        "sigterm restored: True",
        "sigint restored: True",
        "mine",
    ], process.report()


def test_previous_handlers_restored_after_a_signalled_stop(
    processes: list[Process], tmp_path: Path
) -> None:
    script = _script(
        tmp_path,
        """
        import signal

        from goworker_py import Context, Handler, Worker

        class Waits(Handler):
            def do(self, ctx: Context) -> None:
                print("do started", flush=True)
                ctx.wait(60)

        worker = Worker(Waits)
        worker.run()
        print(f"worker ended: {worker.wait().value}", flush=True)
        restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        print(f"sigterm default again: {restored}", flush=True)
        """,
    )
    process = Process([script])
    processes.append(process)
    process.wait_for_stdout("do started", timeout=10)
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(timeout=10) == 0, process.report()
    assert process.stdout[-2:] == [
        "worker ended: signalled",
        "sigterm default again: True",
    ], process.report()


def test_two_workers_share_the_signal_and_both_stop(
    processes: list[Process], tmp_path: Path
) -> None:
    script = _script(
        tmp_path,
        """
        import os

        from goworker_py import Context, Handler, Worker

        class Waits(Handler):
            def do(self, ctx: Context) -> None:
                # One write(2) per line: two threads' print() calls may interleave text and "\\n".
                os.write(1, f"do started {ctx.worker_name}\\n".encode())
                ctx.wait(60)

        first = Worker(Waits, name="first")
        second = Worker(Waits, name="second")
        first.run()
        second.run()
        print(f"first: {first.wait().value}", flush=True)
        print(f"second: {second.wait().value}", flush=True)
        """,
    )
    process = Process([script])
    processes.append(process)
    process.wait_for_stdout("do started", timeout=10, count=2)
    process.proc.send_signal(signal.SIGINT)
    assert process.finish(timeout=10) == 0, process.report()
    assert process.stdout[-2:] == ["first: signalled", "second: signalled"], process.report()
    assert "Traceback" not in process.stderr


def test_run_off_the_main_thread_installs_nothing(processes: list[Process], tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        """
        import signal
        import threading

        from goworker_py import Context, Handler, Worker

        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        during = {}

        class Look(Handler):
            def do(self, ctx: Context) -> None:
                during.update({s: signal.getsignal(s) for s in before})

        result = []

        def start() -> None:
            worker = Worker(Look)  # handle_signals=True, but not on the main thread
            worker.run()
            result.append(worker.wait(timeout=10).value)

        thread = threading.Thread(target=start)
        thread.start()
        thread.join(15)
        after = {s: signal.getsignal(s) for s in before}
        print(f"result: {result}", flush=True)
        print(f"untouched during: {during == before}", flush=True)
        print(f"untouched after: {after == before}", flush=True)
        """,
    )
    process = Process([script])
    processes.append(process)
    assert process.finish(timeout=15) == 0, process.report()
    assert process.stdout == [
        "result: ['completed']",
        "untouched during: True",
        "untouched after: True",
    ], process.report()
    assert "Traceback" not in process.stderr


def test_sigterm_with_no_worker_running_keeps_its_default(
    processes: list[Process], tmp_path: Path
) -> None:
    """After the worker ended, SIGTERM kills the process as if goworker had never been there."""
    script = _script(
        tmp_path,
        """
        import signal
        import threading

        from goworker_py import Context, Handler, Worker

        class Quick(Handler):
            def do(self, ctx: Context) -> None:
                pass

        worker = Worker(Quick)
        worker.run()
        print(f"worker ended: {worker.wait().value}", flush=True)
        threading.Event().wait(60)
        """,
    )
    process = Process([script])
    processes.append(process)
    process.wait_for_stdout("worker ended", timeout=10)
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(timeout=10) == -signal.SIGTERM, process.report()
