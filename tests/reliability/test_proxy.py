"""The fault proxy's partition modes, on a plain TCP echo server (no ZooKeeper needed).

The reliability tests trust the proxy to cut a client off exactly as documented (R21): a
partition that resets at once and keeps resetting, one that stays silent and resets on the
client's next packet, and a black hole. Each mode is shown here doing that, and healing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)

QUIET = 0.3  # seconds a silent link is watched for (nothing may arrive)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy in front of an echo server of its own."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    built = TcpProxy("127.0.0.1", server.getsockname()[1])
    try:
        yield built
    finally:
        built.close()
        stop.set()
        thread.join(5.0)
        server.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5.0)
    sock.settimeout(5.0)
    return sock


def echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    sock.sendall(payload)
    return sock.recv(4096) == payload


def is_reset(sock: socket.socket) -> bool:
    """True when the connection was reset (a RST, not a clean close, not silence)."""
    try:
        sock.recv(4096)
    except ConnectionResetError:
        return True
    return False


def new_connection_reset(proxy: TcpProxy) -> bool:
    """True when a new connection is reset: the handshake completes (the kernel does it), then
    a RST comes - while the connect is still being confirmed, or at the first read."""
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return is_reset(sock)


def silent(sock: socket.socket) -> bool:
    """True when nothing arrives for ``QUIET`` seconds (and the connection is not reset)."""
    sock.settimeout(QUIET)
    try:
        sock.recv(4096)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5.0)
    return False


def test_reset_partition_resets_every_connection_and_every_new_one(proxy: TcpProxy) -> None:
    with connect(proxy) as old:
        assert echoes(old)
        before = time.time()
        proxy.partition("reset")
        assert is_reset(old)
        assert new_connection_reset(proxy)
        assert len(proxy.client_resets) == 2
        assert all(t >= before for t in proxy.client_resets)
        proxy.heal()
        with connect(proxy) as healed:
            assert echoes(healed)


def test_reset_on_next_packet_is_silent_until_the_client_sends(proxy: TcpProxy) -> None:
    with connect(proxy) as old:
        assert echoes(old)
        proxy.partition("reset_on_next_packet")
        assert silent(old), "the link must stay silent while the client sends nothing"
        assert proxy.client_resets == []
        sent = time.time()
        old.sendall(b"next")
        assert is_reset(old)
        assert len(proxy.client_resets) == 1 and proxy.client_resets[0] >= sent
        assert proxy.last_client_packet >= sent
        with connect(proxy) as new:  # left unaccepted: silent, not reset
            new.sendall(b"hello")
            assert silent(new)
            proxy.heal()
            assert new.recv(4096) == b"hello", "after the heal the waiting connection goes on"


def test_drop_partition_holds_traffic_until_healed(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert echoes(sock)
        proxy.blackhole()
        assert proxy.partition_mode == "drop" and proxy.blackholed
        sock.sendall(b"held")
        assert silent(sock)
        assert proxy.client_resets == []
        proxy.heal()
        assert sock.recv(4096) == b"held"
        assert not proxy.blackholed


def test_an_unknown_partition_mode_is_refused(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="unknown partition mode"):
        proxy.partition("flaky")  # type: ignore[arg-type]
