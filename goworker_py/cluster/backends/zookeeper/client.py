"""A configured kazoo client, started within the connect timeout, and kazoo's errors translated.

Every call the ZooKeeper backend makes goes through :func:`translated`, so nothing above the
seam ever sees a kazoo exception (SPEC 4.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import make_digest_acl

from goworker_py.cluster.backends.zookeeper.clock import abort_connection
from goworker_py.cluster.hosts import refuse_fast
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    LeaseLost,
    ZooKeeperUnavailable,
)


def service_root(namespace: str, service: str) -> str:
    """``/<namespace>/<service>``: where a service's nodes live."""
    return "/" + "/".join(p for p in (namespace.strip("/"), service) if p)


def kazoo_client(config: DiscoveryConfig) -> KazooClient:
    """A (not yet started) kazoo client for ``config``: hosts, timeouts, digest auth, TLS."""
    auth: list[tuple[str, str]] = []
    acl = None
    if config.auth_user:
        auth = [("digest", f"{config.auth_user}:{config.auth_password or ''}")]
        acl = [make_digest_acl(config.auth_user, config.auth_password or "", all=True)]
    return KazooClient(
        hosts=config.hosts,
        timeout=config.session_timeout,
        auth_data=auth or None,
        default_acl=acl,
        use_ssl=config.use_ssl,
        certfile=config.certfile,
        keyfile=config.keyfile,
        ca=config.ca,
        verify_certs=config.verify_certs,
        # kazoo's default reconnect backoff grows to an hour: after a long outage an instance
        # would stay cut off long after ZooKeeper is back. Retry forever, at most 1 s apart.
        connection_retry={"max_tries": -1, "delay": 0.1, "backoff": 2, "max_delay": 1.0},
    )


def start_client(client: KazooClient, config: DiscoveryConfig) -> None:
    """Connect ``client`` within ``config.connect_timeout``; a clear error instead of a hang
    (at once when every host refuses the connection)."""
    refuse_fast(config.hosts, "ZooKeeper", config.connect_timeout, ZooKeeperUnavailable)
    # kazoo's start() stops a client that did not connect in time itself — and that stop
    # waits for the server's answer to the connect request, up to a session timeout.
    client.start_async().wait(timeout=config.connect_timeout)
    if not client.connected:
        abort_connection(client)
        client.stop()
        client.close()
        raise ZooKeeperUnavailable(
            f"cannot reach ZooKeeper at {config.hosts!r} within {config.connect_timeout} s "
            "(connect_timeout): is the server running and the address right?"
        )


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a kazoo call, turning its errors into goworker-py's backend errors."""
    try:
        yield
    except SessionExpiredError as exc:
        raise LeaseLost(f"ZooKeeper session expired during {what}") from exc
    except (ConnectionLoss, KazooTimeoutError) as exc:
        raise BackendUnavailable(f"ZooKeeper did not answer {what}: {exc!r}") from exc
    except (NoAuthError, AuthFailedError) as exc:
        raise AccessDenied(
            f"ZooKeeper denied {what}: check auth_user/auth_password (the nodes belong to "
            "other credentials)"
        ) from exc
    except KazooException as exc:
        raise BackendError(f"ZooKeeper failed {what}: {exc!r}") from exc
