"""Requests to etcd's v3 HTTP/JSON gateway: hosts, TLS, authentication, and error translation.

Every unary request goes through etcd3gw's :class:`~etcd3gw.client.Etcd3Client` (its session,
its gateway path discovery — ``/v3/`` from etcd 3.4 on — and its HTTP error classes). One client
object is made per request: it is a few attributes around a shared ``requests`` session, and it
is how a request gets its own timeout and host (etcd3gw fixes both per client).

:meth:`Transport.call` is the only way a request is made. It tries the hosts in turn within a
time budget (a member that refuses or does not answer is left for the next), and translates
every failure into the :class:`~goworker_py.errors.BackendError` tree:

- no answer within the budget (refused, reset, timed out, etcd without a leader) →
  :class:`~goworker_py.errors.BackendUnavailable`;
- credentials refused, authentication required, permission denied →
  :class:`~goworker_py.errors.AccessDenied`; an expired auth token is renewed once, silently;
- the lease named by the request is gone → :class:`~goworker_py.errors.LeaseLost`;
- anything else etcd refuses → :class:`~goworker_py.errors.BackendError` with its message.

A retried request may have been applied already (its reply was lost): every write goworker-py
sends is a transaction that is safe to send twice (see :mod:`.backend`).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client
from requests.adapters import HTTPAdapter

from goworker_py.config import DiscoveryConfig
from goworker_py.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    DiscoveryError,
    LeaseLost,
)

# gRPC status codes, as etcd's gateway reports them in the JSON body of a refused request.
_INVALID_ARGUMENT = 3
_NOT_FOUND = 5
_PERMISSION_DENIED = 7
_RESOURCE_EXHAUSTED = 8
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

#: HTTP connections kept per session (shard threads call ``begin_run`` concurrently).
POOL_SIZE = 32


def encode(data: str | bytes) -> str:
    """A key or value as the gateway takes it (base64)."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def decode(data: str) -> bytes:
    """A key or value as the gateway gives it (base64)."""
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range (or a watch) cover every key under ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return encode(bytes(raw))


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    """``"h1:2379,h2:2379"`` as ``[(h1, 2379), (h2, 2379)]``; a :class:`DiscoveryError` names
    what is wrong."""
    parsed: list[tuple[str, int]] = []
    for item in (part.strip() for part in hosts.split(",")):
        name, colon, port = item.rpartition(":")
        if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise DiscoveryError(
                f"etcd hosts {hosts!r}: {item!r} is not host:port (e.g. 127.0.0.1:2379)"
            )
        parsed.append((name.strip("[]"), int(port)))
    return parsed


class _Unreachable(Exception):
    """This host did not answer (the next one may)."""


class _BadToken(Exception):
    """The auth token expired (etcd restarted, or the token's time to live passed)."""


class Transport:
    """The hosts of one etcd cluster, the credentials, and the requests made to them."""

    def __init__(self, config: DiscoveryConfig) -> None:
        if not config.hosts:
            raise DiscoveryError("discovery hosts are empty: set DiscoveryConfig(hosts='h:2379')")
        self.config = config
        self.hosts = parse_hosts(config.hosts)
        self.scheme = "https" if config.use_ssl else "http"
        self._current = 0
        self._api_path: str | None = None
        self._token: str | None = None
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []

    def describe(self) -> str:
        """How errors name the server: ``"etcd at h1:2379,h2:2379"``."""
        return f"etcd at {self.config.hosts}"

    # -- sessions ---------------------------------------------------------------------------------

    def session(self) -> requests.Session:
        """A new HTTP session with the TLS settings (each thread kind gets its own: the lease's
        keep-alives never wait behind the supervisor's requests)."""
        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if self.config.use_ssl:
            session.verify = self.config.ca or self.config.verify_certs
            if self.config.ca or not self.config.verify_certs:
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's
                # verify: the configured trust must win (this also ignores proxy variables).
                session.trust_env = False
            if self.config.certfile:
                session.cert = (
                    (self.config.certfile, self.config.keyfile)
                    if self.config.keyfile
                    else self.config.certfile
                )
        with self._lock:
            self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every session (their pooled connections)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def headers(self) -> dict[str, str]:
        """The auth header of every request (none without credentials)."""
        token = self._token
        return {"Authorization": token} if token else {}

    def url(self, path: str, host: int | None = None) -> str:
        """The URL of gateway ``path`` on the current host (or host number ``host``)."""
        name, port = self.hosts[self._current if host is None else host]
        client = Etcd3Client(name, port, protocol=self.scheme, api_path=self._api_path or "/v3/")
        return client.get_url(path)

    def rotate(self, failed: int) -> None:
        """Host number ``failed`` did not answer: the next requests go to the next host."""
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self.hosts)

    # -- connecting -------------------------------------------------------------------------------

    def discover(self, session: requests.Session, budget: float) -> None:
        """Find the gateway's path (``/v3/`` from etcd 3.4 on) with etcd3gw's discovery."""

        def attempt(host: int, timeout: float) -> dict[str, Any]:
            name, port = self.hosts[host]
            client = Etcd3Client(
                name, port, protocol=self.scheme, timeout=timeout, session=session, api_path=None
            )
            try:
                self._api_path = client.api_path
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
                raise self._failed_connection(exc, name, port) from None
            except etcd_errors.Etcd3Exception as exc:
                raise BackendError(
                    f"{self.describe()}: {name}:{port} is no etcd v3 gateway ({_message(exc)})"
                ) from None
            except (requests.RequestException, OSError) as exc:
                raise _Unreachable(repr(exc)) from None
            return {}

        self._retrying(attempt, budget, "GET /version")

    def authenticate(self, session: requests.Session, budget: float) -> None:
        """Trade the configured user and password for a token (no-op without a user)."""
        user = self.config.auth_user
        if not user:
            return
        body = {"name": user, "password": self.config.auth_password or ""}
        try:
            reply = self._retrying(
                lambda host, timeout: self._post(
                    host, "auth/authenticate", body, timeout, session, auth=False
                ),
                budget,
                "auth/authenticate",
            )
        except AccessDenied as refused:
            raise AccessDenied(
                f"{self.describe()} refused user {user!r}: wrong user name or password ({refused})"
            ) from None
        except BackendError as refused:
            if "authentication is not enabled" in str(refused):
                self._token = None  # nothing to authenticate against: requests go through
                return
            raise
        self._token = str(reply.get("token", "")) or None

    # -- requests ---------------------------------------------------------------------------------

    def call(
        self, path: str, body: dict[str, Any], budget: float, session: requests.Session
    ) -> dict[str, Any]:
        """POST ``body`` to gateway ``path``; the reply, or a :class:`BackendError` once no host
        answered within ``budget`` seconds. An expired auth token is renewed once."""
        renewed = False
        while True:
            try:
                return self._retrying(
                    lambda host, timeout: self._post(host, path, body, timeout, session),
                    budget,
                    path,
                )
            except _BadToken:
                if renewed or not self.config.auth_user:
                    raise AccessDenied(
                        f"{self.describe()} refused the auth token of {path}: set auth_user and "
                        "auth_password"
                    ) from None
                renewed = True
                self.authenticate(session, budget)

    def _retrying(
        self, attempt: Callable[[int, float], dict[str, Any]], budget: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + budget
        pause = 0.02
        last = "no attempt"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailable(
                    f"{self.describe()} did not answer {what} within {budget:g} s ({last})"
                )
            # With several hosts, a silent one must leave time to try the others.
            share = remaining if len(self.hosts) == 1 else max(min(remaining, 0.5), remaining / 2)
            host = self._current
            try:
                return attempt(host, share)
            except _Unreachable as exc:
                last = f"{self.hosts[host][0]}:{self.hosts[host][1]}: {exc}"
                self.rotate(host)
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, 0.25)

    def _failed_connection(
        self, exc: etcd_errors.Etcd3Exception, name: str, port: int
    ) -> Exception:
        """Refused, reset, timed out, HTTP 503/504 (etcd without a leader): the next host may
        answer. A failed TLS handshake is an error at once: no retry fixes a certificate."""
        if "SSLError" in str(exc.detail_text):
            return BackendError(
                f"{self.describe()}: the TLS handshake with {name}:{port} failed (check "
                f"use_ssl, ca, verify_certs, certfile and keyfile): {_message(exc)}"
            )
        return _Unreachable(_message(exc))

    def _post(
        self,
        host: int,
        path: str,
        body: dict[str, Any],
        timeout: float,
        session: requests.Session,
        *,
        auth: bool = True,
    ) -> dict[str, Any]:
        name, port = self.hosts[host]
        client = Etcd3Client(
            name,
            port,
            protocol=self.scheme,
            timeout=timeout,
            session=session,
            api_path=self._api_path or "/v3/",
        )
        try:
            reply = client.post(
                client.get_url(path), json=body, headers=self.headers() if auth else {}
            )
        except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
            raise self._failed_connection(exc, name, port) from None
        except etcd_errors.Etcd3Exception as exc:
            raise translate(_error_of(exc), path) from None
        except (requests.RequestException, OSError) as exc:
            raise _Unreachable(repr(exc)) from None
        except ValueError as exc:  # a reply that is not JSON: not an etcd gateway
            raise BackendError(f"{self.describe()}: {path} answered no JSON ({exc})") from None
        if not isinstance(reply, dict):
            raise BackendError(f"{self.describe()}: {path} answered {reply!r}")
        # A streaming endpoint (lease/keepalive) reports its error inside a 200 reply.
        if isinstance(reply.get("error"), dict):
            raise translate(reply["error"], path)
        return reply

    def stream(
        self, path: str, body: dict[str, Any], session: requests.Session, idle: float
    ) -> requests.Response:
        """Open a streaming request (a watch) on the current host: connect within the connect
        timeout, and give up when nothing arrives for ``idle`` seconds.

        Not through etcd3gw's ``Watcher``, which hides why a stream ended (compaction,
        cancellation, a lost connection) and swallows the errors of its reading thread.
        """
        host = self._current
        try:
            response = session.post(
                self.url(path, host),
                json=body,
                headers=self.headers(),
                stream=True,
                timeout=(self.config.connect_timeout, idle),
            )
        except (requests.RequestException, OSError) as exc:
            self.rotate(host)
            raise BackendUnavailable(f"{self.describe()}: {path}: {exc!r}") from None
        if response.status_code == 200:
            return response
        text = response.text
        response.close()
        try:
            error = translate(json.loads(text), path)
        except ValueError:
            error = BackendError(f"{self.describe()}: {path}: HTTP {response.status_code} {text}")
        if isinstance(error, _BadToken):
            self.authenticate(session, self.config.connect_timeout)
            raise BackendUnavailable(f"{self.describe()}: {path}: the auth token was renewed")
        if isinstance(error, _Unreachable) or response.status_code in (503, 504):
            self.rotate(host)
            raise BackendUnavailable(f"{self.describe()}: {path}: {error}")
        raise error


def _message(exc: etcd_errors.Etcd3Exception) -> str:
    detail = exc.detail_text or ""
    try:
        data = json.loads(detail)
    except ValueError:
        return detail or repr(exc)
    return (
        str(data.get("message") or data.get("error") or detail)
        if isinstance(data, dict)
        else detail
    )


def _error_of(exc: etcd_errors.Etcd3Exception) -> dict[str, Any]:
    try:
        data = json.loads(exc.detail_text or "")
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    return {"message": exc.detail_text or repr(exc), "code": -1}


def translate(error: Any, path: str) -> Exception:
    """etcd's refusal of ``path`` (``{"code": ..., "message": ...}``) as one of our errors."""
    if not isinstance(error, dict):
        return BackendError(f"etcd refused {path}: {error!r}")
    code = error.get("code", error.get("grpc_code", -1))
    message = str(error.get("message") or error.get("error") or error)
    if code == _UNAUTHENTICATED and "invalid auth token" in message:
        return _BadToken(message)
    if code in (_UNAVAILABLE, _RESOURCE_EXHAUSTED):
        return _Unreachable(message)
    if code == _NOT_FOUND and "lease not found" in message:
        return LeaseLost(f"etcd: {message}")
    if code == _PERMISSION_DENIED or (
        code in (_INVALID_ARGUMENT, _UNAUTHENTICATED)
        and ("user name is empty" in message or "authentication failed" in message)
    ):
        hint = " (set auth_user and auth_password)" if "user name is empty" in message else ""
        return AccessDenied(f"etcd refused {path}: {message}{hint}")
    return BackendError(f"etcd refused {path}: {message}")
