"""A real Redis server process for tests: start, stop, kill, restart, pause, logs.

:class:`RedisServer` runs ``redis-server`` (Debian's package, or ``REDIS_SERVER``) on a free
loopback port in a temp dir, **without persistence** (``save ""``, ``appendonly no``): a
:meth:`~RedisServer.restart` comes back on the same port with every key gone — the Redis fault
the coordination backend must survive. :meth:`~RedisServer.pause` sends ``SIGSTOP`` (a silent
server, as a partition looks to clients). A password (``requirepass``) and ACL users are
optional, and so are keyspace notifications (``notify_keyspace_events="Ex"``) and TLS
(``tls=True``: a throw-away CA and server certificate made with the ``openssl`` command; clients
trust :attr:`RedisServer.ca_path`).

It needs no Redis client library: readiness is checked with a raw ``PING``.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TextIO
from urllib.parse import quote

from goworker_py.testing.errors import RedisStartError, ZooKeeperError
from goworker_py.testing.install import find_redis_server
from goworker_py.testing.network import free_ports
from goworker_py.testing.zookeeper import _die_with_parent_prefix, _wait_for_threads

_LIVE: set[RedisServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


class RedisServer:
    """A real ``redis-server`` child process for tests (see the module docstring).

    ``password`` sets ``requirepass`` (the ``default`` user's password); ``users`` maps ACL
    user names to passwords, each allowed everything. Use as a context manager, or call
    :meth:`close`; anything left open is closed at exit.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        users: Mapping[str, str] | None = None,
        notify_keyspace_events: str = "",
        tls: bool = False,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.password = password
        self.users = dict(users or {})
        self.notify_keyspace_events = notify_keyspace_events
        self.tls = tls
        self.start_timeout = start_timeout
        self._executable = executable
        self._port = port
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._final_log = ""
        self._lock = threading.RLock()

    # -- identity --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port (chosen at the first start unless given)."""
        if self._port is None:
            self._port = free_ports(1)[0]
        return self._port

    @property
    def hosts(self) -> str:
        """``"127.0.0.1:<port>"``, as ``DiscoveryConfig.hosts`` takes it."""
        return f"127.0.0.1:{self.port}"

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        """A ``redis://`` (``rediss://`` with TLS) discovery URL, with credentials if given."""
        auth = ""
        if password is not None:
            auth = f"{quote(user or '', safe='')}:{quote(password, safe='')}@"
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.hosts}/{db}"

    @property
    def ca_path(self) -> Path:
        """The CA certificate that signed the server's (``tls=True``, once started)."""
        if self._workdir is None:
            raise ZooKeeperError(f"{self!r} has no certificates (not started, or closed)")
        return self._workdir / "ca.crt"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """True while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.is_running

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<RedisServer {self.hosts} {state}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server (no-op if running) and wait until it answers; returns ``self``."""
        with self._lock:
            if self.is_running:
                return self
            if self._executable is None:
                self._executable = find_redis_server()
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="goworker-redis-"))
                if self.tls:
                    _make_certificates(self._workdir)
            with _LIVE_LOCK:
                _LIVE.add(self)
            conf = self._workdir / "redis.conf"
            conf.write_text(self._config_text())
            cmd = [self._executable, str(conf)]
            if threading.current_thread() is threading.main_thread():
                cmd = [*_die_with_parent_prefix(), *cmd]  # dies with us, even on SIGKILL
            with open(self.log_path, "ab") as log:
                log.write(f"---- goworker_py.testing: starting {self.hosts} ----\n".encode())
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self._workdir
            )
            self._paused = False
            self._wait_until_serving()
            return self

    def _config_text(self) -> str:
        assert self._workdir is not None
        work = self._workdir
        ports = [f"port {self.port}"]
        if self.tls:
            ports = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {work / 'server.crt'}",
                f"tls-key-file {work / 'server.key'}",
                f"tls-ca-cert-file {work / 'ca.crt'}",
                "tls-auth-clients no",
            ]
        lines = [
            *ports,
            "bind 127.0.0.1",
            "protected-mode no",
            'save ""',
            "appendonly no",
            f"dir {self._workdir}",
            f"logfile {self.log_path}",
            "daemonize no",
            f'notify-keyspace-events "{self.notify_keyspace_events}"',
        ]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        lines += [f"user {name} on >{pw} ~* &* +@all" for name, pw in self.users.items()]
        return "\n".join(lines) + "\n"

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self.answers():
            if not self.is_running:
                raise RedisStartError(
                    f"redis-server on {self.hosts} exited during start-up:\n{self.log_tail(60)}"
                )
            if time.monotonic() > deadline:
                raise RedisStartError(
                    f"redis-server on {self.hosts} not answering after {self.start_timeout} s:\n"
                    f"{self.log_tail(60)}"
                )
            time.sleep(0.01)

    def answers(self, timeout: float = 1.0) -> bool:
        """True if the server answers a ``PING`` (``NOAUTH`` counts: it is up)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as raw:
                sock = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.ca_path))
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:  # ssl.SSLError too
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop with ``SIGTERM`` (``SIGKILL`` after ``timeout``); without persistence every key
        is gone."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._paused = False

    def kill(self) -> None:
        """Kill with ``SIGKILL`` (a crash)."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            self._paused = False

    def restart(self, down_for: float = 0.0, *, kill: bool = False) -> None:
        """Stop (or kill), stay down ``down_for`` s, start again on the same port: every key
        is gone (no persistence), as after a restart of a cache-only Redis."""
        with self._lock:
            if kill:
                self.kill()
            else:
                self.stop()
            time.sleep(down_for)
            self.start()

    def pause(self) -> None:
        """Freeze the server with ``SIGSTOP``: connections stay open, nothing answers."""
        with self._lock:
            if self._proc is None or not self.is_running:
                raise ZooKeeperError(f"{self!r} is not running: nothing to pause")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True
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

    def __enter__(self) -> RedisServer:
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
        return self._workdir / "redis.log"

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
        print(f"---- Redis {self.hosts}: last {lines} log lines ----", file=out)
        print(self.log_tail(lines), file=out)


def _make_certificates(directory: Path) -> None:
    """A throw-away CA (``ca.crt``) and a server certificate for 127.0.0.1 signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RedisStartError("RedisServer(tls=True) needs the `openssl` command")

    def run(*args: str) -> None:
        done = subprocess.run([openssl, *args], cwd=directory, capture_output=True, text=True)
        if done.returncode != 0:
            raise RedisStartError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    new_key = ("-newkey", "rsa:2048", "-nodes")
    run("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=goworker-py test CA")  # fmt: skip
    run("req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
