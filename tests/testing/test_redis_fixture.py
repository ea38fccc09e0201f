"""The Redis test fixture: finding redis-server, and a server to stop, restart and pause."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest

from goworker_py.testing import REDIS_INSTALL_HINT, RedisNotFound, RedisServer, find_redis_server
from goworker_py.testing.__main__ import ensure_redis


def _command(server: RedisServer, *args: str, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        parts = [arg.encode() for arg in args]
        request = b"*%d\r\n" % len(parts)
        request += b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        sock.sendall(request)
        return sock.recv(4096)


def test_find_redis_server_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(RedisNotFound, match="apt-get install -y redis-server"):
        find_redis_server({"PATH": str(tmp_path)}, debian_binary=tmp_path / "none")
    with pytest.raises(RedisNotFound, match=r"REDIS_SERVER=/nope is not an executable"):
        find_redis_server({"REDIS_SERVER": "/nope"})
    assert "REDIS_SERVER=" in REDIS_INSTALL_HINT


def test_ensure_redis_checks_a_real_server(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert ensure_redis(install=False, out=out, err=err) == 0, err.getvalue()
    assert out.getvalue().startswith("Redis OK: ")
    monkeypatch.setenv("REDIS_SERVER", "/nope")
    assert ensure_redis(install=True, out=out, err=err) == 1  # explicit: never apt-get
    assert "REDIS_SERVER=/nope is not an executable" in err.getvalue()


def test_a_restart_keeps_the_port_and_loses_every_key(redis_private: RedisServer) -> None:
    port = redis_private.port
    assert _command(redis_private, "SET", "k", "v") == b"+OK\r\n"
    redis_private.restart()
    assert redis_private.port == port and redis_private.is_running
    assert _command(redis_private, "GET", "k") == b"$-1\r\n"  # no persistence


def test_a_paused_server_answers_nothing_until_resumed(redis_private: RedisServer) -> None:
    with redis_private.paused():
        assert redis_private.is_paused
        with pytest.raises(TimeoutError):
            _command(redis_private, "PING", timeout=0.3)
    assert _command(redis_private, "PING") == b"+PONG\r\n"


def test_passwords_users_and_the_log() -> None:
    with RedisServer(password="pw", users={"alice": "secret"}) as server:
        assert _command(server, "PING").startswith(b"-NOAUTH")
        assert _command(server, "AUTH", "alice", "secret") == b"+OK\r\n"
        assert server.url("alice", "se cret", db=3) == f"redis://alice:se%20cret@{server.hosts}/3"
        assert "Ready to accept connections" in server.log_text()
    assert "Ready to accept connections" in server.log_text()  # kept after close
