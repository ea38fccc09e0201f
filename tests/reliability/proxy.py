"""A TCP proxy in front of ZooKeeper that can cut one client off, the way a network does.

``TcpProxy(host, port)`` listens on a free loopback port (:attr:`TcpProxy.address`,
:attr:`TcpProxy.hosts`) and forwards every connection to the target. One thread per proxy runs
a ``selectors`` loop (no busy waiting, no thread per connection). Faults:

- :meth:`~TcpProxy.blackhole`: nothing is forwarded any more, either way, and the sockets stay
  open - what a partition looks like. Bytes already sent wait in the kernel's buffers, as TCP
  would keep retransmitting them; new connections wait in the listen backlog unaccepted, as
  their SYNs would. :meth:`~TcpProxy.heal` ends it: connections whose end hung up meanwhile are
  reset without forwarding what they had sent (it was lost in the partition), the others carry
  on with what was buffered.
- :meth:`~TcpProxy.partition` with a ``mode``: ``"drop"`` is :meth:`~TcpProxy.blackhole`;
  ``"reset"`` resets every connection at once (a TCP RST to both ends) and every new one as soon
  as it is accepted, while the partition lasts (a link whose far end is gone for good);
  ``"reset_on_next_packet"`` forwards nothing, like a blackhole, but answers the next packet a
  client sends on a connection with a RST (a router that has lost the connection's state) and
  leaves new connections unaccepted. :meth:`~TcpProxy.heal` ends any of them.
- :meth:`~TcpProxy.reset`: every connection is reset (``SO_LINGER`` 0: a TCP RST), both ways.
- :meth:`~TcpProxy.drop_next_reply`: the server's reply to the next request (optionally of one
  opcode, or about one path) is swallowed. ZooKeeper loses a reply only with its connection,
  so by default the connection is then reset too (``reset_after=False`` keeps it open).

The proxy understands ZooKeeper's framing (a 4-byte big-endian length before every packet; the
first packet each way is the connect request/response; then requests start with ``xid, type``
and replies with ``xid, zxid, err``), which is how it finds "the reply to that request".
Every public method returns once the loop has applied it. :attr:`TcpProxy.last_client_packet`
and :attr:`TcpProxy.client_resets` (``time.time()``) say when a client last sent something and
when a partition reset a client's connection.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

#: ZooKeeper request opcodes whose body starts with a path.
_PATH_OPS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 19, 21}
#: Named opcodes, for ``drop_next_reply(op="create")``.
OPCODES = {
    "create": 1,
    "delete": 2,
    "exists": 3,
    "get_data": 4,
    "set_data": 5,
    "get_children": 8,
    "sync": 9,
    "get_children2": 12,
    "multi": 14,
    "create2": 15,
    "create_container": 19,
    "create_ttl": 21,
}
#: How a partition treats the connections (see the module doc).
PartitionMode = Literal["drop", "reset", "reset_on_next_packet"]
PARTITION_MODES: tuple[PartitionMode, ...] = ("drop", "reset", "reset_on_next_packet")
_MAX_FRAME = 64 * 1024 * 1024
_CHUNK = 65536


class _Splitter:
    """Cuts a byte stream into length-prefixed frames (raw pass-through if it is not framed)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.raw = False
        self.frames_seen = 0

    def feed(self, data: bytes) -> list[bytes]:
        if self.raw:
            return [data]
        self.buffer += data
        frames: list[bytes] = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from(">i", self.buffer)
            if length < 0 or length > _MAX_FRAME:
                # Not ZooKeeper framing: forward everything as it comes from now on.
                self.raw = True
                frames.append(bytes(self.buffer))
                self.buffer.clear()
                break
            if len(self.buffer) < 4 + length:
                break
            frames.append(bytes(self.buffer[: 4 + length]))
            del self.buffer[: 4 + length]
        self.frames_seen += len(frames)
        return frames


@dataclass
class DropRule:
    """An armed :meth:`TcpProxy.drop_next_reply`; :meth:`wait` for it to have happened."""

    op: int | None
    path_contains: str | None
    reset_after: bool
    dropped: threading.Event = field(default_factory=threading.Event)
    #: Filled when the request is seen: its xid, opcode and path.
    xid: int | None = None
    request_op: int | None = None
    path: str | None = None

    def matches(self, op: int, path: str | None) -> bool:
        if self.op is not None and op != self.op:
            return False
        return self.path_contains is None or (path is not None and self.path_contains in path)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the reply was swallowed."""
        return self.dropped.wait(timeout)


class _Connection:
    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.connecting = False
        self.to_client = bytearray()
        self.to_upstream = bytearray()
        self.from_client = _Splitter()
        self.from_upstream = _Splitter()
        #: xid of the request whose reply is to be swallowed on this connection.
        self.drop: DropRule | None = None
        self.closed = False

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.client, self.upstream) if s is not None]


def _hung_up(sock: socket.socket) -> bool:
    """True when the peer closed or reset its end (even with unread data still buffered)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return any(
        mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0)
    )


def _abort(sock: socket.socket | None) -> None:
    """Close with a TCP RST (``SO_LINGER`` on, zero timeout)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:<free port>`` to ``(target_host, target_port)``; see the module doc."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, int(target_port))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        #: ``(host, port)`` the proxy listens on.
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        #: The partition in force, or None while forwarding.
        self._partition: PartitionMode | None = None
        self._closed = False
        self._rules: list[DropRule] = []
        #: Counters for reports: connections accepted, resets done.
        self.accepted = 0
        self.resets = 0
        #: ``time.time()`` of the last bytes received from a client (0.0: none yet).
        self.last_client_packet = 0.0
        #: ``time.time()`` of every RST a partition sent a client (``reset``,
        #: ``reset_on_next_packet``).
        self.client_resets: list[float] = []
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._loop, name=f"tcp-proxy:{self.address[1]}", daemon=True
        )
        self._thread.start()
        self._call(self._rearm)

    @property
    def hosts(self) -> str:
        """The proxy as a ZooKeeper connection string, ``"127.0.0.1:<port>"``."""
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def blackholed(self) -> bool:
        """True between :meth:`blackhole` (or any :meth:`partition`) and :meth:`heal`."""
        return self._partition is not None

    @property
    def partition_mode(self) -> PartitionMode | None:
        """The partition in force, or None while forwarding."""
        return self._partition

    def __repr__(self) -> str:
        state = f"partitioned ({self._partition})" if self._partition else "forwarding"
        return f"<TcpProxy {self.hosts} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- public API, any thread -----------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding both ways; keep every socket open (a partition)."""
        self.partition("drop")

    def partition(self, mode: PartitionMode = "drop") -> None:
        """Cut the clients off in one of the :data:`PARTITION_MODES` (see the module doc)."""
        if mode not in PARTITION_MODES:
            raise ValueError(f"unknown partition mode {mode!r}: one of {PARTITION_MODES}")

        def apply() -> None:
            self._partition = mode
            if mode == "reset":
                for conn in list(self._connections):
                    self._reset_client(conn)
            self._rearm()

        self._call(apply)

    def heal(self) -> None:
        """End a partition: forward again (connections abandoned meanwhile are reset)."""
        self._call(self._heal)

    def reset(self) -> None:
        """Reset every connection (RST to both ends)."""

        def apply() -> None:
            for conn in list(self._connections):
                self._kill(conn)
                self.resets += 1

        self._call(apply)

    def drop_next_reply(
        self,
        op: int | str | None = None,
        path_contains: str | None = None,
        reset_after: bool = True,
    ) -> DropRule:
        """Swallow the server's reply to the next client request (pings excluded).

        ``op`` (an opcode or a name from :data:`OPCODES`) and ``path_contains`` narrow which
        request. With ``reset_after`` (the default) the connection is reset once the reply is
        swallowed, as when a reply is lost for real; otherwise it stays open and the client
        sees its next reply out of order. Returns the armed :class:`DropRule`.
        """
        code = OPCODES[op] if isinstance(op, str) else op
        rule = DropRule(code, path_contains, reset_after)
        self._call(lambda: self._rules.append(rule))
        return rule

    def close(self) -> None:
        """Stop the proxy and close every socket."""
        if self._closed:
            return

        def apply() -> None:
            for conn in list(self._connections):
                self._kill(conn)
            self._closed = True

        if self._thread.is_alive():
            self._call(apply)
            self._thread.join(5.0)
        for sock in (self._listener, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(Exception):
            self._selector.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop thread ------------------------------------------------------------------------

    def _call(self, action: Callable[[], None], timeout: float = 5.0) -> None:
        if threading.current_thread() is self._thread:
            action()
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((action, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise RuntimeError(f"{self!r}: the proxy loop did not answer within {timeout} s")

    def _loop(self) -> None:
        while not self._closed:
            self._dispatch(self._selector.select())

    def _dispatch(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in ready:
            if key.data is None:
                self._run_commands()
            elif key.data == "listen":
                self._accept()
            else:
                conn, which = key.data
                if not conn.closed:
                    self._service(conn, which, mask)
            if self._closed:
                return

    def _run_commands(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            commands, self._commands = self._commands, []
        for action, done in commands:
            try:
                action()
            finally:
                done.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._partition == "reset":
                self.resets += 1
                self.client_resets.append(time.time())  # before the RST: no one sees it earlier
                _abort(client)
                continue
            self.accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(client)
            self._connections.append(conn)
            self._connect_upstream(conn)

    def _connect_upstream(self, conn: _Connection) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.upstream = upstream
        conn.connecting = True
        error = upstream.connect_ex(self.target)
        if error not in (0, 115, 11):  # 0, EINPROGRESS, EAGAIN
            self._kill(conn, rst=False)
            return
        self._rearm_connection(conn)

    def _reset_client(self, conn: _Connection) -> None:
        """A partition resets ``conn``: a RST to both ends, nothing forwarded."""
        if conn.closed:
            return
        self.resets += 1
        self.client_resets.append(time.time())  # before the RST: no one sees it earlier
        self._kill(conn)

    def _heal(self) -> None:
        self._partition = None
        for conn in list(self._connections):
            if conn.closed:
                continue
            if _hung_up(conn.client):
                # The client gave up on this connection during the partition: the server
                # never hears from it again (what it sent was lost).
                self._kill(conn)
            elif conn.upstream is not None and not conn.connecting and _hung_up(conn.upstream):
                self._kill(conn, rst=False)
        self._rearm()
        # Connections made during the partition waited in the backlog; the ones the client has
        # already abandoned never reached the server.
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                break
            if _hung_up(client):
                _abort(client)
                continue
            self.accepted += 1
            client.setblocking(False)
            conn = _Connection(client)
            self._connections.append(conn)
            self._connect_upstream(conn)

    def _rearm(self) -> None:
        accepting = self._partition in (None, "reset")
        self._register(self._listener, selectors.EVENT_READ if accepting else 0, "listen")
        for conn in list(self._connections):
            self._rearm_connection(conn)

    def _register(self, sock: socket.socket, events: int, data: object) -> None:
        try:
            if events:
                try:
                    self._selector.modify(sock, events, data)
                except KeyError:
                    self._selector.register(sock, events, data)
            else:
                with contextlib.suppress(KeyError):
                    self._selector.unregister(sock)
        except (ValueError, OSError):
            pass  # closed meanwhile

    def _rearm_connection(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if self._partition is not None:
            for sock in conn.sockets():
                self._register(sock, 0, None)
            if self._partition == "reset_on_next_packet":
                # Only to notice the client's next packet, which is answered with a RST.
                self._register(conn.client, selectors.EVENT_READ, (conn, "client"))
            return
        upstream = conn.upstream
        if conn.connecting:
            self._register(conn.client, 0, None)
            if upstream is not None:
                self._register(upstream, selectors.EVENT_WRITE, (conn, "upstream"))
            return
        client_events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.to_client else 0)
        self._register(conn.client, client_events, (conn, "client"))
        if upstream is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.to_upstream else 0)
            self._register(upstream, events, (conn, "upstream"))

    def _service(self, conn: _Connection, which: str, mask: int) -> None:
        sock = conn.client if which == "client" else conn.upstream
        assert sock is not None
        if self._partition is not None:
            if which == "client" and self._partition == "reset_on_next_packet":
                self.last_client_packet = time.time()
                self._reset_client(conn)
            return
        if which == "upstream" and conn.connecting:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._kill(conn, rst=False)  # the server is down: the client sees a close
                return
            conn.connecting = False
            self._rearm_connection(conn)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._kill(conn)
                return
            if data == b"":
                self._kill(conn, rst=False)
                return
            if data:
                if which == "client":
                    self.last_client_packet = time.time()
                    self._from_client(conn, data)
                else:
                    self._from_upstream(conn, data)
                    if conn.closed:
                        return
        if mask & selectors.EVENT_WRITE:
            pending = conn.to_client if which == "client" else conn.to_upstream
            if pending:
                try:
                    sent = sock.send(pending)
                    del pending[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self._kill(conn)
                    return
        self._rearm_connection(conn)

    def _from_client(self, conn: _Connection, data: bytes) -> None:
        splitter = conn.from_client
        first = splitter.frames_seen == 0
        for frame in splitter.feed(data):
            if not splitter.raw and not first and len(frame) >= 12 and self._rules:
                xid, op = struct.unpack_from(">ii", frame, 4)
                if xid >= 0:
                    path = self._path_of(op, frame)
                    for rule in list(self._rules):
                        if rule.matches(op, path):
                            rule.xid, rule.request_op, rule.path = xid, op, path
                            conn.drop = rule
                            self._rules.remove(rule)
                            break
            first = False
            conn.to_upstream += frame
        self._flush(conn)

    @staticmethod
    def _path_of(op: int, frame: bytes) -> str | None:
        if op not in _PATH_OPS or len(frame) < 16:
            return None
        (length,) = struct.unpack_from(">i", frame, 12)
        if length < 0 or 16 + length > len(frame):
            return None
        return frame[16 : 16 + length].decode("utf-8", "replace")

    def _from_upstream(self, conn: _Connection, data: bytes) -> None:
        splitter = conn.from_upstream
        first = splitter.frames_seen == 0
        for frame in splitter.feed(data):
            rule = conn.drop
            if rule is not None and not first and not splitter.raw and len(frame) >= 8:
                (xid,) = struct.unpack_from(">i", frame, 4)
                if xid == rule.xid:
                    conn.drop = None
                    rule.dropped.set()
                    if rule.reset_after:
                        self._flush(conn)
                        self._kill(conn)
                        self.resets += 1
                        return
                    first = False
                    continue
            first = False
            conn.to_client += frame
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        """Send what can be sent at once; the rest goes when the socket is writable."""
        for sock, pending in ((conn.client, conn.to_client), (conn.upstream, conn.to_upstream)):
            if sock is None or not pending or conn.connecting:
                continue
            try:
                sent = sock.send(pending)
                del pending[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._kill(conn)
                return

    def _kill(self, conn: _Connection, rst: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        for sock in conn.sockets():
            self._register(sock, 0, None)
            if rst:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        with contextlib.suppress(ValueError):
            self._connections.remove(conn)
