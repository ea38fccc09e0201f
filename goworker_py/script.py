"""Script tasks: a handler whose run is an external program (SPEC section 5).

::

    Worker(ScriptHandler(["/opt/jobs/backup.sh", "--full"], timeout=600), cron="0 3 * * *")

Each run starts the program once, in a process group of its own, with the run's facts in its
environment:

=============================  ===============================================================
``GOWORKER_SHARD_INDEX``       the shard's index (``0`` to total - 1)
``GOWORKER_SHARD_TOTAL``       ``sharding_total_count``
``GOWORKER_SHARD_PARAM``       the shard's parameter (``""`` when none)
``GOWORKER_PARAMS``            the worker's whole ``params`` string
``GOWORKER_RUN_ID``            the run's id (also in every log line of the run)
``GOWORKER_SCHEDULED_TIME``    the fire time served, ISO 8601
``GOWORKER_FENCING_TOKEN``     cluster mode: the shard claim's fencing token (``""`` locally)
``GOWORKER_ATTEMPT``           1 for the first attempt, then 2, 3 … under the retry policy
``GOWORKER_IS_FAILOVER``       ``1`` when re-running a run interrupted on a dead instance
``GOWORKER_WORKER``            the worker's name
=============================  ===============================================================

Every line the program writes goes to the run's log (stdout at INFO, stderr at WARNING). A
non-zero exit raises :class:`~goworker_py.errors.ScriptFailed` — an error like any other, retried
by the worker's retry policy. When the run is cancelled (shutdown, shard moving, ``stop_run``)
or its ``timeout`` passes, the whole process group gets SIGTERM, then SIGKILL after ``grace``
seconds. The command is an argument list run without a shell, unless ``shell=True``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from goworker_py.errors import InvalidHandlerError, RunCancelled, ScriptFailed, ScriptTimeout
from goworker_py.handler import Context, Handler

#: How many of the last stderr lines a :class:`ScriptFailed` carries.
STDERR_TAIL = 5


class ScriptHandler(Handler):
    """Runs an external program for each run.

    :param command: an argument list (``["backup.sh", "--full"]``) or the path of a program
        taking no argument; with ``shell=True``, a shell command line (a string).
    :param env: extra environment variables (on top of this process's environment, unless
        ``inherit_env=False``, and under the ``GOWORKER_*`` variables of the run).
    :param timeout: seconds a run may take before it is stopped and fails with
        :class:`~goworker_py.errors.ScriptTimeout` (``None``: no limit).
    :param shell: run ``command`` through ``/bin/sh -c``.
    :param cwd: working directory of the program.
    :param grace: seconds between SIGTERM and SIGKILL when a run is stopped.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        shell: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        grace: float = 5.0,
        inherit_env: bool = True,
    ) -> None:
        self.argv = _check_command(command, shell)
        self.shell = shell
        self.display = command if isinstance(command, str) else shlex.join(self.argv)
        self.env = dict(env or {})
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidHandlerError(
                    f"ScriptHandler env must map str to str, got {key!r}: {value!r}"
                )
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise InvalidHandlerError(f"ScriptHandler timeout must be seconds > 0, got {timeout!r}")
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
            raise InvalidHandlerError(f"ScriptHandler grace must be seconds >= 0, got {grace!r}")
        if cwd is not None and not os.path.isdir(cwd):
            raise InvalidHandlerError(f"ScriptHandler cwd {str(cwd)!r} is not a directory")
        self.timeout = timeout
        self.cwd = cwd
        self.grace = float(grace)
        self.inherit_env = inherit_env

    def __repr__(self) -> str:
        return f"ScriptHandler({self.display!r})"

    def environment(self, ctx: Context) -> dict[str, str]:
        """The program's environment for the run ``ctx``."""
        env = dict(os.environ) if self.inherit_env else {}
        env.update(self.env)
        env.update(
            GOWORKER_SHARD_INDEX=str(ctx.shard.index),
            GOWORKER_SHARD_TOTAL=str(ctx.shard.total),
            GOWORKER_SHARD_PARAM=ctx.shard.param,
            GOWORKER_PARAMS=ctx.params,
            GOWORKER_RUN_ID=ctx.run_id,
            GOWORKER_SCHEDULED_TIME=ctx.scheduled_time.isoformat(),
            GOWORKER_FENCING_TOKEN="" if ctx.fencing_token is None else str(ctx.fencing_token),
            GOWORKER_ATTEMPT=str(ctx.attempt),
            GOWORKER_IS_FAILOVER="1" if ctx.is_failover else "0",
            GOWORKER_WORKER=ctx.worker_name,
        )
        return env

    def do(self, ctx: Context) -> None:
        ctx.raise_if_cancelled()
        try:
            proc = subprocess.Popen(
                self.argv,
                shell=self.shell,
                cwd=self.cwd,
                env=self.environment(ctx),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        except OSError as exc:
            raise ScriptFailed(self.display, 127, (f"cannot start: {exc}",)) from exc
        ctx.logger.info("script started: {} (pid {})", self.display, proc.pid)
        tail: deque[str] = deque(maxlen=STDERR_TAIL)

        def on_stderr(line: str) -> None:
            tail.append(line)
            ctx.logger.warning("[stderr] {}", line)

        readers = [
            _pump(proc.stdout, lambda line: ctx.logger.info("[stdout] {}", line)),
            _pump(proc.stderr, on_stderr),
        ]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        timed_out = False
        try:
            while proc.poll() is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    timed_out = True
                    break
                # Woken at once by cancellation; the 0.1 s cap notices the process ending.
                if ctx.wait(0.1 if remaining is None else min(0.1, remaining)):
                    break
        finally:
            if proc.poll() is None:
                self._stop(proc, ctx)
            for reader in readers:
                reader.join(self.grace + 1.0)
        code = proc.wait()
        if timed_out:
            raise ScriptTimeout(self.display, float(self.timeout or 0), code)
        if ctx.cancelled and code != 0:
            raise RunCancelled(f"script {self.display} stopped: the run was cancelled")
        if code != 0:
            raise ScriptFailed(self.display, code, tuple(tail))
        ctx.logger.info("script finished: {}", self.display)

    def _stop(self, proc: subprocess.Popen[bytes], ctx: Context) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
        ctx.logger.warning("stopping script {} (pid {}): SIGTERM", self.display, proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            ctx.logger.warning(
                "script {} still running {:g} s after SIGTERM: SIGKILL", self.display, self.grace
            )
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        # Children that outlived the leader belong to the group too.
        _signal_group(proc.pid, signal.SIGKILL)


def _check_command(command: str | Sequence[str], shell: bool) -> list[str]:
    if shell:
        if not isinstance(command, str) or not command.strip():
            raise InvalidHandlerError(
                f"ScriptHandler with shell=True needs a command line string, got {command!r}"
            )
        return [command]
    command_object: object = command
    if isinstance(command_object, str):
        argv = [command_object]
    elif isinstance(command_object, (list, tuple)):
        argv = list(command_object)
    else:
        raise InvalidHandlerError(
            f"ScriptHandler command must be an argument list or a program path, got {command!r}"
        )
    if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
        raise InvalidHandlerError(
            f"ScriptHandler command must be a non-empty list of strings, got {command!r}"
        )
    program = argv[0]
    found = shutil.which(program) if os.sep not in program else program
    if found is None or not os.path.isfile(found):
        hint = (
            " (it is not split into arguments: pass a list such as "
            f"{shlex.split(program)!r}, or shell=True)"
            if isinstance(command, str) and " " in program.strip()
            else ""
        )
        raise InvalidHandlerError(f"ScriptHandler program {program!r} not found{hint}")
    if not os.access(found, os.X_OK):
        raise InvalidHandlerError(
            f"ScriptHandler program {program!r} is not executable (chmod +x, or run it through "
            "its interpreter: ['/bin/sh', 'script.sh'])"
        )
    return argv


def _pump(stream: IO[bytes] | None, emit: Callable[[str], object]) -> threading.Thread:
    """Read ``stream`` line by line on a thread, passing each decoded line to ``emit``."""

    def read() -> None:
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\r\n")
                with contextlib.suppress(Exception):
                    emit(line)

    thread = threading.Thread(target=read, name="goworker:script-output", daemon=True)
    thread.start()
    return thread


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
