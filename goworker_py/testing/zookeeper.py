"""A real ZooKeeper server process for tests: start, stop, kill, pause, restart, logs.

Cluster behaviour can only be trusted when it is tested against a real server, so this module
runs ZooKeeper itself (a JVM child process on a free loopback port, with its own temp data dir
and log file) and injects faults the way they happen in production:

- :meth:`ZooKeeperServer.kill` / :meth:`~ZooKeeperServer.stop` / :meth:`~ZooKeeperServer.restart`
  take the server down; a restart keeps the port and the data dir, so sessions survive an
  outage shorter than their timeout.
- :meth:`ZooKeeperServer.pause` sends ``SIGSTOP``: the server stays "up" but silent, which is
  what a network partition looks like to a client.

Where ZooKeeper comes from: see :func:`goworker_py.testing.install.find_zookeeper`. Sessions are
expired for real by :func:`goworker_py.testing.sessions.expire_session`; a 3-server quorum is
:class:`goworker_py.testing.ensemble.ZooKeeperEnsemble`.

Every process started here is killed and its temp dir removed by :meth:`ZooKeeperServer.close`,
and at interpreter exit for anything left open.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from goworker_py.testing.errors import ZooKeeperError, ZooKeeperStartError
from goworker_py.testing.install import ZooKeeperInstall, find_zookeeper
from goworker_py.testing.network import FourLetterWords, free_ports

STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

# A small, quick JVM: C1 JIT only, the serial GC, class-data sharing. Measured on 2 cores: start
# about 0.27 s, and a quarter less CPU than the JVM defaults (it matters when tests share CPUs).
DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-Xms16m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{HH:mm:ss,SSS} %-5p [%t] %c{1} - %m%n
"""

_LOGBACK_XML = """\
<configuration>
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level [%thread] %logger{1} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""


# -- a local server process -----------------------------------------------------------------------

_LIVE: set[ZooKeeperServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


@functools.cache
def _die_with_parent_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL`` where util-linux's setpriv supports it, else nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    probe = subprocess.run([setpriv, "--pdeathsig", "KILL", "true"], capture_output=True)
    return (setpriv, "--pdeathsig", "KILL") if probe.returncode == 0 else ()


def _wait_for_threads(pid: int, *, stopped: bool, timeout: float = 5.0) -> None:
    """Wait until all threads of ``pid`` are (or are no longer) stopped, as Linux reports it."""
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


@dataclass(frozen=True)
class _Quorum:
    myid: int
    peers: tuple[str, ...]  # "server.N=127.0.0.1:peer:election" lines


class ZooKeeperServer(FourLetterWords):
    """A real ZooKeeper server in a child JVM, for tests.

    ``tick_time`` (ms) is small by default so sessions can expire sub-second: the server accepts
    session timeouts from ``2 * tick_time`` up to ``max_session_timeout`` ms. ``stop()`` keeps the
    data dir so ``start()`` resumes with the same sessions; ``close()`` also removes it.
    Use as a context manager, or call :meth:`close`; anything left open is closed at exit.
    """

    def __init__(
        self,
        tick_time: int = 100,
        *,
        max_session_timeout: int = 60_000,
        port: int | None = None,
        install: ZooKeeperInstall | None = None,
        jvm_flags: Sequence[str] | None = None,
        start_timeout: float = 30.0,
        fsync: bool = False,
        _quorum: _Quorum | None = None,
    ) -> None:
        self.tick_time = tick_time
        self.max_session_timeout = max_session_timeout
        self.start_timeout = start_timeout
        self.fsync = fsync
        self.last_start_seconds: float | None = None
        self._install = install
        extra = shlex.split(os.environ.get("ZOOKEEPER_JVM_FLAGS", ""))
        self._jvm_flags = [*(DEFAULT_JVM_FLAGS if jvm_flags is None else jvm_flags), *extra]
        self._port = port
        self._auto_port = port is None
        self._quorum = _quorum
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._served = False
        self._final_log = ""
        self._lock = threading.RLock()

    # -- identity --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (chosen at the first start unless given)."""
        if self._port is None:
            self._port = free_ports(1)[0]
        return self._port

    @property
    def hosts(self) -> str:
        """The connection string, ``"127.0.0.1:<port>"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """The server's temp dir (``None`` before the first start and after ``close()``)."""
        return self._workdir

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """``True`` while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """``True`` between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.is_running

    def _address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<ZooKeeperServer {self.hosts} tick={self.tick_time}ms {state}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> ZooKeeperServer:
        """Start the server (no-op if running) and wait until it serves; returns ``self``."""
        with self._lock:
            if self.is_running:
                return self
            if self._install is None:
                self._install = find_zookeeper()
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="goworker-zk-"))
                (self._workdir / "data").mkdir()
                if self._quorum is not None:
                    (self._workdir / "data" / "myid").write_text(f"{self._quorum.myid}\n")
                (self._workdir / "log4j.properties").write_text(_LOG4J_PROPERTIES)
                (self._workdir / "logback.xml").write_text(_LOGBACK_XML)
            with _LIVE_LOCK:
                _LIVE.add(self)
            began = time.monotonic()
            for attempt in range(3):
                self._spawn()
                if not wait:
                    return self
                try:
                    self.wait_until_serving(self.start_timeout)
                    break
                except ZooKeeperStartError:
                    # Lost a race for a port we picked: pick another, but only before any
                    # client knows it (a restart must come back on the same port).
                    in_use = "already in use" in self.log_tail()
                    self.kill()
                    if not (in_use and self._auto_port and not self._served and attempt < 2):
                        raise
                    self._port = free_ports(1)[0]
            self._served = True
            self.last_start_seconds = time.monotonic() - began
            return self

    def _spawn(self) -> None:
        assert self._workdir is not None and self._install is not None
        cfg = self._workdir / "zoo.cfg"
        cfg.write_text(self._config_text())
        work = self._workdir
        props = [
            f"-Dlog4j.configuration=file:{work / 'log4j.properties'}",
            f"-Dlogback.configurationFile={work / 'logback.xml'}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-Dzookeeper.jmx.log4j.disable=true",
            f"-Dzookeeper.forceSync={'yes' if self.fsync else 'no'}",
            "-Dzookeeper.cnxTimeout=1000",
        ]
        if self._quorum is not None:
            # Election rounds back off up to 60 s by default; a test needs a leader in seconds.
            props.append("-Dzookeeper.fastleader.maxNotificationInterval=1000")
        main = STANDALONE_MAIN if self._quorum is None else QUORUM_MAIN
        cmd = [self._install.java, *self._jvm_flags, *props, "-cp", self._install.classpath]
        cmd += [main, str(cfg)]
        # The JVM dies with us even on SIGKILL (PR_SET_PDEATHSIG via setpriv, which execs java so
        # the pid stays the JVM's). Only from the main thread: the signal follows the forking
        # thread, and a helper thread that restarts the server may end before the test does.
        if threading.current_thread() is threading.main_thread():
            cmd = [*_die_with_parent_prefix(), *cmd]
        with open(self.log_path, "ab") as log:
            log.write(f"---- goworker_py.testing: starting {self.hosts} ----\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=work
            )
        self._paused = False

    def _config_text(self) -> str:
        assert self._workdir is not None
        lines = [
            f"tickTime={self.tick_time}",
            f"dataDir={self._workdir / 'data'}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            f"minSessionTimeout={2 * self.tick_time}",
            f"maxSessionTimeout={self.max_session_timeout}",
            "4lw.commands.whitelist=*",
            "admin.enableServer=false",
            "maxClientCnxns=0",  # every test client comes from 127.0.0.1: no per-IP limit
            "preAllocSize=1024",
        ]
        if self._quorum is not None:
            # In ticks: about 10 s to sync at start, 4 s before a lagging follower is dropped.
            sync = max(10, 4000 // self.tick_time)
            lines += [f"initLimit={max(20, 10_000 // self.tick_time)}", f"syncLimit={sync}"]
            lines += list(self._quorum.peers)
        return "\n".join(lines) + "\n"

    def wait_until_serving(self, timeout: float | None = None) -> None:
        """Block until ``srvr`` reports a ``Mode`` (the server serves clients)."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self.mode(timeout=1.0) is None:
            if not self.is_running:
                raise ZooKeeperStartError(
                    f"ZooKeeper on {self.hosts} exited during start-up:\n{self.log_tail(60)}"
                )
            if time.monotonic() > deadline:
                raise ZooKeeperStartError(
                    f"ZooKeeper on {self.hosts} not serving after {limit}s:\n{self.log_tail(60)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process with ``SIGTERM`` (``SIGKILL`` after ``timeout``); keeps the data dir."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)  # a stopped JVM cannot act on SIGTERM
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
        """Stop (or kill), stay down ``down_for`` seconds, start again on the same port and data.

        Sessions whose timeout is longer than the outage survive: the server reloads them.
        """
        with self._lock:
            if kill:
                self.kill()
            else:
                self.stop()
            time.sleep(down_for)
            self.start()

    def pause(self) -> None:
        """Freeze the server with ``SIGSTOP``: connections stay open but nothing answers.

        This is how a partitioned server looks to clients. :meth:`resume` undoes it. One
        difference from a real partition: the kernel still accepts connections to a stopped
        process, so a client's reconnect attempts queue up, and on resume ZooKeeper may handle
        one (reviving the session) before its expiry thread runs. Sessions whose deadline passed
        during the pause therefore expire at resume only if their client stayed away (as it
        would behind a real partition): to be sure, point it elsewhere meanwhile (kazoo's
        ``client.set_hosts``).
        """
        with self._lock:
            if self._proc is None or not self.is_running:
                raise ZooKeeperError(f"{self!r} is not running: nothing to pause")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True
            # Signals arrive asynchronously: on a busy machine the JVM could still answer for a
            # moment after kill() returned. Only return once every thread is really stopped.
            _wait_for_threads(self._proc.pid, stopped=True)

    def resume(self) -> None:
        """Continue a paused server (``SIGCONT``)."""
        with self._lock:
            if self._proc is not None and self.is_running:
                self._proc.send_signal(signal.SIGCONT)
                _wait_for_threads(self._proc.pid, stopped=False)
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

    def __enter__(self) -> ZooKeeperServer:
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

    # -- logs ------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The server's log file (all starts append to it)."""
        if self._workdir is None:
            raise ZooKeeperError(f"{self!r} has no log file (not started, or closed)")
        return self._workdir / "zookeeper.log"

    def log_text(self) -> str:
        """The whole server log so far."""
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
        print(f"---- ZooKeeper {self.hosts}: last {lines} log lines ----", file=out)
        print(self.log_tail(lines), file=out)
