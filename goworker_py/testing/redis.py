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

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from goworker_py.testing.certificates import CA_FILE, CERT_FILE, KEY_FILE, make_test_certificates
from goworker_py.testing.errors import RedisStartError, ZooKeeperError
from goworker_py.testing.install import find_redis_server
from goworker_py.testing.process import ServerProcess


class RedisServer(ServerProcess):
    """A real ``redis-server`` child process for tests (see the module docstring).

    ``password`` sets ``requirepass`` (the ``default`` user's password); ``users`` maps ACL
    user names to passwords, each allowed everything. Without persistence, a :meth:`stop` or
    :meth:`restart` loses every key, as a cache-only Redis does. Use as a context manager, or
    call :meth:`close`; anything left open is closed at exit.
    """

    kind = "Redis"
    _dir_prefix = "goworker-redis-"
    _log_name = "redis.log"
    _start_error = RedisStartError
    _poll_seconds = 0.01  # it starts in milliseconds

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
        super().__init__(port=port, start_timeout=start_timeout)
        self.password = password
        self.users = dict(users or {})
        self.notify_keyspace_events = notify_keyspace_events
        self.tls = tls
        self._executable = executable

    # -- identity --------------------------------------------------------------------------------

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
        return self._workdir / CA_FILE

    # -- what is Redis's own ---------------------------------------------------------------------

    def _find_program(self) -> None:
        if self._executable is None:
            self._executable = find_redis_server()

    def _prepare(self, workdir: Path) -> None:
        if self.tls:
            make_test_certificates(workdir, missing=RedisStartError, failed=RedisStartError)

    def _command(self) -> list[str]:
        assert self._workdir is not None and self._executable is not None
        conf = self._workdir / "redis.conf"
        conf.write_text(self._config_text())
        return [self._executable, str(conf)]

    def _config_text(self) -> str:
        assert self._workdir is not None
        work = self._workdir
        ports = [f"port {self.port}"]
        if self.tls:
            ports = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {work / CERT_FILE}",
                f"tls-key-file {work / KEY_FILE}",
                f"tls-ca-cert-file {work / CA_FILE}",
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

    def _serves(self) -> bool:
        return self.answers()

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
