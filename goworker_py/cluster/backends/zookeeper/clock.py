"""When ZooKeeper last answered us: the one place goworker-py reaches into kazoo's internals.

(Also :func:`abort_connection`, which cuts a connect attempt short.)

Self-fencing (SPEC 4.2) needs a lower bound of the moment the server last heard from this
client: the server expires a session about one session timeout ``T`` after that, and an
instance that stops its runs well before then can never overlap the shard's next owner.
kazoo keeps nothing of the kind public, so :class:`ReplyClock` wraps four methods of the
client's connection object:

- ``_connect``: a new socket; its connect request (sent after the wrapper started) is answered
  once it returns, which also gives the negotiated session timeout. An attempt not answered
  within a third of the session timeout is given up (:func:`abort_connection`) and retried;
- ``_submit``: every request written to the socket — its send time is queued;
- ``_read_header`` and ``_read_socket``: a reply read *completely* takes the oldest queued send
  time (ZooKeeper answers a session's requests in order; watch events answer nothing).

The server touched the session when it received the answered request, so no earlier than that
request's send time: :attr:`ReplyClock.answered_at` is that send time. A read that fails (a
TCP RST, an EOF) answers nothing, and a reply that sat in a buffer while the process was frozen
still carries its old send time — both, counted as "heard now", would postpone the fence past
the session's expiry.

:func:`check_kazoo` fails loudly (a :class:`~goworker_py.errors.ClusterError` naming what moved)
when a kazoo release changes these internals; a test calls it against the installed kazoo.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
import time
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol import connection as kazoo_connection

from goworker_py.errors import ClusterError

#: The connection methods wrapped, and the module constant they rely on.
_WRAPPED = ("_connect", "_submit", "_read_header", "_read_socket")


def check_kazoo(client: KazooClient) -> Any:
    """Return ``client``'s connection object once its internals are the ones we wrap."""
    connection = getattr(client, "_connection", None)
    missing = [name for name in _WRAPPED if not callable(getattr(connection, name, None))]
    if getattr(kazoo_connection, "WATCH_XID", None) != -1:
        missing.append("kazoo.protocol.connection.WATCH_XID == -1")
    if missing:
        import kazoo.version

        raise ClusterError(
            f"kazoo {kazoo.version.__version__} changed the connection internals that "
            f"goworker-py's self-fencing clock wraps ({', '.join(missing)}): "
            "use a kazoo release goworker-py supports (see setup.cfg)"
        )
    return connection


class ReplyClock:
    """Tracks, for one kazoo client, when the server last answered and the session timeout.

    Every method of the wrappers runs on kazoo's connection thread; the attributes are read from
    any thread (plain float assignments).
    """

    def __init__(
        self, client: KazooClient, session_timeout: float, give_up_after: float | None = None
    ) -> None:
        """``give_up_after``: seconds a connect attempt may wait for its answer (default: a
        third of the session timeout)."""
        connection = check_kazoo(client)
        #: ``time.monotonic()`` send time of the latest request the server answered.
        self.answered_at = time.monotonic()
        #: The session timeout the server granted, in seconds (the requested one until then).
        self.negotiated_timeout = float(session_timeout)
        self._sent: collections.deque[float] = collections.deque()
        self._last_xid = 0
        connect = connection._connect
        submit = connection._submit
        read_header = connection._read_header
        read_socket = connection._read_socket

        def connecting(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            self._sent.clear()
            # kazoo waits for the answer to its connect request for T / len(hosts); a server
            # that accepted the connection but never answers (ZooKeeper, for a moment while it
            # starts) would hold the attempt until a restarted server has expired the session.
            limit = give_up_after or self.negotiated_timeout / 3
            give_up = threading.Timer(limit, abort_connection, (client,))
            give_up.daemon = True
            give_up.start()
            try:
                read_timeout, connect_timeout = connect(*args, **kwargs)
            finally:
                give_up.cancel()
            # The requests _connect sent (connect, auth) were answered inside it.
            self._sent.clear()
            # kazoo's read timeout is two thirds of the negotiated session timeout (ms).
            self.negotiated_timeout = read_timeout * 1.5 / 1000.0
            self._answered(began)
            return read_timeout, connect_timeout

        def submitting(*args: Any, **kwargs: Any) -> Any:
            self._sent.append(time.monotonic())
            return submit(*args, **kwargs)

        def reading_header(*args: Any, **kwargs: Any) -> Any:
            header, buffer, offset = read_header(*args, **kwargs)
            self._last_xid = header.xid
            return header, buffer, offset

        def reading(*args: Any, **kwargs: Any) -> Any:
            self._last_xid = kazoo_connection.WATCH_XID
            response = read_socket(*args, **kwargs)
            # Only now is the reply complete; a watch event answers no request.
            if self._last_xid != kazoo_connection.WATCH_XID and self._sent:
                self._answered(self._sent.popleft())
            return response

        connection._connect = connecting
        connection._submit = submitting
        connection._read_header = reading_header
        connection._read_socket = reading

    def _answered(self, sent_at: float) -> None:
        self.answered_at = max(self.answered_at, sent_at)

    def lease_valid_until(self) -> float:
        """``time.monotonic()`` instant before which the server certainly keeps our session."""
        return self.answered_at + self.negotiated_timeout


def abort_connection(client: KazooClient) -> None:
    """Shut the socket of a connect attempt in progress, so that ``client.stop()`` returns at
    once: kazoo waits for the server's answer to its connect request for a whole session
    timeout, and a server that accepts connections but never answers would hold it that long."""
    sock = getattr(getattr(client, "_connection", None), "_socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
