"""Expiring a client's ZooKeeper session on the server, the way it happens in production.

kazoo's own test harness fakes expiry inside the client; that skips the server-side part (the
victim's ephemerals vanish and its watches fire on *other* clients) that cluster code relies on.
Here a second client joins the victim's session with its id and password, which moves the
session to the new connection, then closes it: the server ends the session for good, and the
victim learns it (``KazooState.LOST``) when it reconnects.
"""

from __future__ import annotations

import threading
import time

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.testing.errors import ZooKeeperError


def expire_session(client: KazooClient, hosts: str | None = None, *, timeout: float = 15.0) -> None:
    """Expire ``client``'s session on the server and wait until ``client`` sees ``LOST``.

    ``hosts`` is a connection string for the same ensemble (default: the client's own hosts,
    without its chroot). Raises :class:`ZooKeeperError` if ``client`` is not connected, or
    does not observe the loss within ``timeout`` seconds.
    """
    client_id = client.client_id
    if client_id is None:
        raise ZooKeeperError("the client is not connected: it has no session to expire")
    if hosts is None:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in client.hosts)
    lost = threading.Event()

    def on_state(state: str) -> None:
        # Runs on kazoo's connection thread: only set an event.
        if state == KazooState.LOST:
            lost.set()

    client.add_listener(on_state)
    deadline = time.monotonic() + timeout
    try:
        # The victim may win its session back by reconnecting between the twin's connect and its
        # close, so a round that does not end in LOST is retried until the deadline.
        while not lost.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ZooKeeperError(
                    f"session 0x{client_id[0]:x} was not observed LOST within {timeout}s"
                )
            twin = KazooClient(hosts=hosts, client_id=client_id)
            try:
                twin.start(timeout=max(remaining, 0.5))
            except KazooTimeoutError:  # not connected in time: close and try again
                pass
            finally:
                twin.stop()
                twin.close()
            lost.wait(min(2.0, max(deadline - time.monotonic(), 0.0)))
    finally:
        client.remove_listener(on_state)
