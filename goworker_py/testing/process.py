"""A test server's child process: start, wait until it serves, stop, kill, restart, pause, logs.

ZooKeeper, etcd and Redis (:mod:`~goworker_py.testing.zookeeper`,
:mod:`~goworker_py.testing.etcd`, :mod:`~goworker_py.testing.redis`) differ in their command
line, their config files and how to tell they serve; how the process is run and broken is the
same for all three, so it is written once here, in :class:`ServerProcess`:

- Each server runs in a child process on free loopback ports, with a temp dir of its own for its
  data, config files and log (all starts append to one log file).
- :meth:`~ServerProcess.kill` / :meth:`~ServerProcess.stop` / :meth:`~ServerProcess.restart` take
  it down the way a crash or an upgrade does; the ports and the temp dir stay, so a restart
  comes back where clients look for it, with whatever the server itself persisted.
- :meth:`~ServerProcess.pause` sends ``SIGSTOP``: the server stays "up" but silent, which is what
  a network partition looks like to a client. :meth:`~ServerProcess.resume` ends it.
- The log tail goes into failing tests' reports (see :mod:`~goworker_py.testing.pytest_plugin`).

:class:`ServerCluster` is the same for several members forming one cluster (a ZooKeeper
ensemble, an etcd cluster). Every process started here is killed and its temp dir removed by
``close()``, and at interpreter exit for anything left open.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import functools
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Generic, TextIO, TypeVar

from goworker_py.testing.errors import ZooKeeperError
from goworker_py.testing.network import free_ports

# Methods that return ``self`` are typed to return the subclass.
_T = TypeVar("_T", bound="_Startable")
_P = TypeVar("_P", bound="ServerProcess")

_LIVE: set[ServerProcess] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Close what tests left open, so no server outlives the test run and no temp dir stays."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


def die_with_parent_prefix() -> tuple[str, ...]:
    """A command prefix that kills the child when this process dies, even by ``SIGKILL``, so no
    test leaves a server (or a worker) running: ``setpriv --pdeathsig KILL`` (it execs the
    program, so the child's pid stays the program's), or nothing where util-linux's setpriv
    lacks it.

    Only on the main thread: the signal follows the thread that forked, and a helper thread
    (one that restarts a server, say) may end before the test does. Elsewhere: nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return ()
    return _setpriv_pdeathsig()


@functools.cache
def _setpriv_pdeathsig() -> tuple[str, ...]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "true"], capture_output=True)
    return (setpriv, "--pdeathsig", "KILL") if probe.returncode == 0 else ()


def wait_for_threads(pid: int, *, stopped: bool, timeout: float = 5.0) -> None:
    """Wait until all threads of ``pid`` are (or are no longer) stopped, as Linux reports it.

    Signals arrive asynchronously: on a busy machine a process could still answer for a moment
    after ``SIGSTOP`` was sent. A pause that returns only once every thread is stopped is a
    pause a test can count on.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = [
                (task / "stat").read_text().rpartition(")")[2].split()[0]
                for task in Path(f"/proc/{pid}/task").iterdir()
            ]
        except (OSError, IndexError):
            return  # no /proc (not Linux), or the process is gone: nothing to wait for
        if all((state in "tT") == stopped for state in states):
            return
        time.sleep(0.002)


class _Startable(abc.ABC):
    """``with`` support for what starts and must be closed: closed on the way out, and also
    when the start itself fails, so a half-started server never outlives its test."""

    @abc.abstractmethod
    def start(self: _T) -> _T:
        """Start; return ``self`` once it serves."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop for good and release everything."""

    def __enter__(self: _T) -> _T:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ServerProcess(_Startable):
    """One test server in a child process; a subclass says how to run and probe its program.

    ``stop()`` keeps the temp dir so ``start()`` resumes with the same data; ``close()`` also
    removes it. Use as a context manager, or call :meth:`close`; anything left open is closed at
    exit. A subclass sets the class attributes below and implements the four abstract methods:
    how to find its program, what its temp dir holds, its command line, and when it serves.
    """

    #: How logs, errors and test reports name the program: ``"ZooKeeper"``, ``"etcd"``...
    kind: ClassVar[str]
    #: The prefix of the temp dir's name, so a leftover dir says whose it is.
    _dir_prefix: ClassVar[str]
    #: The log file's name in the temp dir.
    _log_name: ClassVar[str]
    #: Raised when the process does not come up (the message has its log tail).
    _start_error: ClassVar[type[ZooKeeperError]]
    #: How often :meth:`wait_until_serving` probes.
    _poll_seconds: ClassVar[float] = 0.02

    def __init__(self, *, port: int | None, start_timeout: float) -> None:
        self.start_timeout = start_timeout
        #: Seconds the last waited-for start took (``None`` before one).
        self.last_start_seconds: float | None = None
        self._port = port
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._final_log = ""
        self._lock = threading.RLock()

    # -- what a subclass provides ----------------------------------------------------------------

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """Write this start's config files into the temp dir; return the command line."""

    @abc.abstractmethod
    def _serves(self) -> bool:
        """One quick readiness probe: ``True`` once clients can use the server."""

    @abc.abstractmethod
    def _find_program(self) -> None:
        """Locate the program (raise its ``...NotFound``) before anything is made, so a missing
        program leaves no temp dir behind."""

    @abc.abstractmethod
    def _prepare(self, workdir: Path) -> None:
        """Make what every start needs in the temp dir, once, when it is created (a data dir,
        certificates)."""

    def _identity(self) -> str:
        """What tells this server from others of its kind, in logs and ``repr``."""
        return self.hosts

    # -- identity --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (chosen at the first start unless given)."""
        if self._port is None:
            self._port = free_ports(1)[0]
        return self._port

    @property
    def hosts(self) -> str:
        """``"127.0.0.1:<port>"``, the connection string (``DiscoveryConfig.hosts``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """The server's temp dir (``None`` before the first start and after ``close()``)."""
        return self._workdir

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """``True`` while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.is_running

    def _state(self) -> str:
        return "paused" if self.is_paused else "running" if self.is_running else "stopped"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._identity()} {self._state()}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self: _P, *, wait: bool = True) -> _P:
        """Start the server (no-op if running); with ``wait``, until it serves. Returns ``self``."""
        with self._lock:
            if self.is_running:
                return self
            self._find_program()
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix=self._dir_prefix))
                with _LIVE_LOCK:
                    _LIVE.add(self)  # first: even if _prepare fails, exit removes the dir
                self._prepare(self._workdir)
            if not wait:
                self._spawn()
                return self
            began = time.monotonic()
            self._spawn_until_serving()
            self.last_start_seconds = time.monotonic() - began
            return self

    def _spawn_until_serving(self) -> None:
        """Spawn the process and wait until it serves (a subclass may retry, e.g. on a port)."""
        self._spawn()
        self.wait_until_serving()

    def _spawn(self) -> None:
        cmd = [*die_with_parent_prefix(), *self._command()]
        with open(self.log_path, "ab") as log:
            log.write(f"---- goworker_py.testing: starting {self._label()} ----\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
            )
        self._paused = False

    def wait_until_serving(self, timeout: float | None = None) -> None:
        """Block until the server serves clients (``start_timeout`` by default); raise, with the
        log tail, when the process exits first or the time runs out."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self._serves():
            if not self.is_running:
                raise self._start_error(
                    f"{self._label()} exited during start-up:\n{self.log_tail(60)}"
                )
            if time.monotonic() > deadline:
                raise self._start_error(
                    f"{self._label()} not serving after {limit}s:\n{self.log_tail(60)}"
                )
            time.sleep(self._poll_seconds)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process with ``SIGTERM`` (``SIGKILL`` after ``timeout``); keeps the data dir."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._paused = False

    def kill(self) -> None:
        """Kill the process with ``SIGKILL`` (a crash); keeps the data dir."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            self._paused = False

    def restart(self, down_for: float = 0.0, *, kill: bool = False) -> None:
        """Stop (or kill), stay down ``down_for`` seconds, start again on the same ports and data
        dir: what survives is what the server itself restores from its data."""
        with self._lock:
            if kill:
                self.kill()
            else:
                self.stop()
            time.sleep(down_for)
            self.start()

    def pause(self) -> None:
        """Freeze the server with ``SIGSTOP``: connections stay open but nothing answers.

        This is how a partitioned server looks to clients; :meth:`resume` undoes it. Returns
        once every thread of the process is really stopped.
        """
        with self._lock:
            if self._proc is None or not self.is_running:
                raise ZooKeeperError(f"{self!r} is not running: nothing to pause")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True
            wait_for_threads(self._proc.pid, stopped=True)

    def resume(self) -> None:
        """Continue a paused server (``SIGCONT``)."""
        with self._lock:
            if self._proc is not None and self.is_running:
                self._proc.send_signal(signal.SIGCONT)
                wait_for_threads(self._proc.pid, stopped=False)
            self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: :meth:`pause` on entry, :meth:`resume` on exit."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        """Kill the process and delete the temp dir (the log is kept in memory)."""
        with self._lock:
            self.kill()
            self._proc = None
            if self._workdir is not None:
                self._final_log = self.log_text()
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    # -- logs ------------------------------------------------------------------------------------

    def _label(self) -> str:
        return f"{self.kind} {self._identity()}"

    @property
    def log_path(self) -> Path:
        """The server's log file (all starts append to it)."""
        if self._workdir is None:
            raise ZooKeeperError(f"{self!r} has no log file (not started, or closed)")
        return self._workdir / self._log_name

    def log_text(self) -> str:
        """The whole server log so far (after ``close()``: as it was then)."""
        if self._workdir is None:
            return self._final_log
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def dump_log(self, lines: int = 200, file: TextIO | None = None) -> None:
        """Print the log tail (to stderr by default), e.g. from a failing test."""
        out = sys.stderr if file is None else file
        print(f"---- {self._label()}: last {lines} log lines ----", file=out)
        print(self.log_tail(lines), file=out)


_S = TypeVar("_S", bound=ServerProcess)


class ServerCluster(_Startable, Generic[_S]):
    """Several :class:`ServerProcess` members forming one cluster on loopback.

    Every fault helper of a single server also works on one member
    (``cluster.servers[i].pause()``), so a test can lose a member, or the leader, and watch the
    rest carry on. A subclass builds :attr:`servers` and says how the cluster starts.
    """

    def __init__(self, servers: Iterable[_S]) -> None:
        #: The members, in the order of :attr:`hosts`.
        self.servers = list(servers)

    @property
    def hosts(self) -> str:
        """Every member's client address, comma-separated."""
        return ",".join(server.hosts for server in self.servers)

    def close(self) -> None:
        """Kill every member and remove their temp dirs."""
        for server in self.servers:
            server.close()
