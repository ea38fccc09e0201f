"""The Redis backend's requests: reaching a server, and redis-py errors translated.

Everything that talks to redis-py goes through :class:`Requests`, which turns every redis-py
(or socket) error into the :class:`~goworker_py.errors.BackendError` tree — unreachable or
timed out: :class:`~goworker_py.errors.BackendUnavailable`; refused credentials or ACL rights:
:class:`~goworker_py.errors.AccessDenied` — and retries once, on a fresh connection, a request
whose connection was reset (a server restart): every script of the backend is idempotent. A
timeout is never retried: the request's deadline is the caller's budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from redis import exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from goworker_py.cluster.backends.redis.scripts import SCRIPTS
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import AccessDenied, BackendError, BackendUnavailable, DiscoveryError

_T = TypeVar("_T")

#: redis-py's errors that mean "these credentials may not do this".
_DENIED = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.AuthenticationWrongNumberOfArgsError,
    rex.NoPermissionError,
)


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """``"h1:6379,h2:6379"`` -> ``[("h1", 6379), ...]`` (raises ``DiscoveryError``)."""
    parsed = []
    for item in hosts.split(","):
        name, colon, port = item.strip().rpartition(":")
        if not colon or not name or not port.isdigit():
            raise DiscoveryError(f"Redis host {item!r} is not host:port (e.g. 127.0.0.1:6379)")
        parsed.append((name.strip("[]"), int(port)))
    return parsed


def translate(exc: Exception, doing: str) -> BackendError:
    """The :class:`~goworker_py.errors.BackendError` for a redis-py (or socket) error."""
    if isinstance(exc, _DENIED):
        return AccessDenied(f"Redis refused {doing}: {exc} (check auth_user/auth_password)")
    if isinstance(exc, rex.ReadOnlyError):
        return BackendUnavailable(f"Redis refused {doing}: the server is a replica ({exc})")
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
        return BackendUnavailable(f"Redis unavailable for {doing}: {_describe(exc)}")
    return BackendError(f"Redis failed {doing}: {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    # redis-py's repr of its errors can hide the message ("network:ConnectionError").
    return "no answer" if exc is None else f"{type(exc).__name__}: {exc}"


def make_client(config: DiscoveryConfig, host: tuple[str, int], timeout: float) -> redis.Redis:
    """A redis-py client of ``host`` whose every request (and connect) times out after
    ``timeout`` s, without redis-py's own retries."""
    options: dict[str, Any] = {}
    if config.use_ssl:
        options = {
            "ssl": True,
            "ssl_certfile": config.certfile,
            "ssl_keyfile": config.keyfile,
            "ssl_ca_certs": config.ca,
            "ssl_cert_reqs": "required" if config.verify_certs else "none",
            "ssl_check_hostname": config.verify_certs,
        }
    return redis.Redis(
        host=host[0],
        port=host[1],
        db=config.database,
        username=config.auth_user,
        password=config.auth_password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        **options,
    )


def reachable_host(config: DiscoveryConfig) -> tuple[str, int]:
    """The first of ``config.hosts`` that answers a ``PING`` within the connect timeout.

    Raises ``AccessDenied`` at once for refused credentials, ``BackendUnavailable`` once the
    connect timeout has passed (a paused server counts as unreachable: never a hang).
    """
    hosts = parse_hosts(config.hosts)
    deadline = time.monotonic() + config.connect_timeout
    last: Exception | None = None
    while True:
        for host in hosts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailable(
                    f"Redis at {config.hosts} did not answer within "
                    f"{config.connect_timeout} s ({_describe(last)})"
                )
            probe = make_client(config, host, remaining)
            try:
                probe.ping()
                return host
            except (rex.RedisError, OSError) as exc:
                error = translate(exc, "connect")
                if isinstance(error, AccessDenied):
                    raise error from exc
                last = exc
            finally:
                probe.close()
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


class Requests:
    """The backend's requests on one client: translated errors, one retry after a reset,
    and a count of requests sent (for the benchmarks)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._scripts = {name: client.register_script(lua) for name, lua in SCRIPTS.items()}
        self._lock = threading.Lock()
        self._sent = 0

    @property
    def sent(self) -> int:
        """Requests sent so far (each retry counts)."""
        return self._sent

    def do(self, request: Callable[[redis.Redis], _T], doing: str) -> _T:
        """Run ``request(client)``; redis-py's errors come out as ``BackendError``."""
        for attempt in (0, 1):
            with self._lock:
                self._sent += 1
            try:
                return request(self.client)
            except (rex.RedisError, OSError) as exc:
                error = translate(exc, doing)
                timed_out = isinstance(exc, (rex.TimeoutError, TimeoutError))
                if type(error) is BackendUnavailable and not timed_out and not attempt:
                    continue  # a reset connection (e.g. a server restart): once more, afresh
                raise error from exc
        raise AssertionError("unreachable")

    def call(self, name: str, *args: str | int) -> Any:
        """Run the script ``name`` (see :mod:`.scripts`) with ``ARGV = args``."""
        script = self._scripts[name]
        return self.do(lambda client: script(args=list(args), client=client), name)

    def get(self, key: str) -> str | None:
        """``GET key`` (replies are decoded: ``str``)."""
        return cast("str | None", self.do(lambda c: c.get(key), f"GET {key}"))

    def keyspace_channels(self, database: int) -> list[str]:
        """The keyspace-event channels worth following: those the server's
        ``notify-keyspace-events`` publishes (expired ``Ex``, deleted ``Eg``); none when the
        setting cannot be read (an ACL, a managed Redis): the poll finds expiries alone."""
        try:
            reply = self.do(lambda c: c.config_get("notify-keyspace-events"), "CONFIG GET")
        except BackendError:
            return []
        flags = set(str(reply.get("notify-keyspace-events", "")))
        if "E" not in flags:
            return []
        wanted = [("x", "expired"), ("g", "del")]
        return [f"__keyevent@{database}__:{event}" for flag, event in wanted if {flag, "A"} & flags]

    def close(self) -> None:
        """Disconnect every pooled connection."""
        self.client.close()
