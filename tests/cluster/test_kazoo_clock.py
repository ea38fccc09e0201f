"""The self-fencing clock: only completed replies count as "heard from ZooKeeper" (real server).

The lease an instance fences itself by counts from the send time of the latest request the
server answered (``goworker_py.cluster.backends.zookeeper.clock``). A read that discovers a
dead connection, and a reply that waited in a buffer, must not renew it: either would delay
the fence past the server's expiry of the session.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from helpers import wait_until
from kazoo.client import KazooClient

from goworker_py.cluster.backends.zookeeper.clock import ReplyClock, check_kazoo
from goworker_py.errors import ClusterError
from goworker_py.testing import ZooKeeperServer

pytestmark = pytest.mark.timeout(60)


def started(hosts: str, clock_timeout: float = 2.0) -> tuple[KazooClient, ReplyClock]:
    client = KazooClient(
        hosts=hosts,
        timeout=clock_timeout,
        connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1, "max_delay": 0.05},
    )
    clock = ReplyClock(client, clock_timeout)
    client.start(timeout=15)
    return client, clock


def test_the_installed_kazoo_has_the_internals_the_clock_wraps(zk_client: KazooClient) -> None:
    assert check_kazoo(zk_client) is zk_client._connection


def test_kazoo_internals_that_moved_fail_loudly() -> None:
    moved = SimpleNamespace(_connection=SimpleNamespace(_connect=print, _submit=print))
    with pytest.raises(ClusterError, match=r"kazoo .* changed .*_read_header, _read_socket"):
        check_kazoo(moved)  # type: ignore[arg-type]


def test_a_request_answered_renews_the_lease_from_its_send_time(zk_hosts: str) -> None:
    client, clock = started(zk_hosts)
    try:
        assert clock.negotiated_timeout == pytest.approx(2.0, abs=0.01)
        before = clock.answered_at
        sent = time.monotonic()
        client.exists("/")
        answered = time.monotonic()
        assert sent <= clock.answered_at <= answered
        assert clock.answered_at > before
        assert clock.lease_valid_until() == pytest.approx(clock.answered_at + 2.0)
    finally:
        client.stop()
        client.close()


def test_watch_events_answer_no_request(zk_hosts: str) -> None:
    client, clock = started(zk_hosts)
    other, _ = started(zk_hosts)
    try:
        client.ensure_path("/clock")
        fired: list[object] = []
        client.get_children("/clock", watch=fired.append)
        answered = clock.answered_at
        other.create("/clock/child")
        wait_until(lambda: fired, 5.0, what="the watch event")
        # The event was read, yet no request of ours was answered since.
        assert clock.answered_at == answered
    finally:
        for each in (client, other):
            each.stop()
            each.close()


def test_a_dead_connection_is_not_heard_from(zookeeper_private: ZooKeeperServer) -> None:
    """The server is killed: the read that finds the connection gone (RST or EOF) answers
    nothing, nor do the reconnect attempts, so the lease keeps its last renewal."""
    client, clock = started(zookeeper_private.hosts)
    try:
        client.exists("/")
        answered = clock.answered_at
        lost = []
        client.add_listener(lost.append)
        zookeeper_private.kill()
        wait_until(lambda: lost, 10.0, what="kazoo noticed the dead connection")
        time.sleep(0.5)  # reconnect attempts: refused, every one
        assert clock.answered_at == answered
    finally:
        client.stop()
        client.close()


def test_a_connect_attempt_nobody_answers_is_cut_short() -> None:
    """A server that accepts the connection but never answers the connect request (ZooKeeper
    does so for a moment while it starts: the port is bound before the database is loaded, and
    the connection it refuses stays open) must not hold the attempt for kazoo's whole connect
    timeout (a session timeout with one host): by then a restarted server has expired the
    session it restored. The attempt is given up after a third of the session timeout."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[tuple[float, socket.socket]] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = silent.accept()
                accepted.append((time.monotonic(), conn))

    threading.Thread(target=accept, daemon=True).start()
    client = KazooClient(
        hosts=f"127.0.0.1:{silent.getsockname()[1]}",
        timeout=3.0,
        connection_retry={"max_tries": -1, "delay": 0.05, "backoff": 1, "max_delay": 0.05},
    )
    ReplyClock(client, 3.0)
    client.start_async()
    try:
        wait_until(lambda: len(accepted) >= 2, 10.0, what="a second connect attempt")
        gap = accepted[1][0] - accepted[0][0]
        # Given up at T/3 = 1 s, retried 0.05 s later; kazoo alone waits T = 3 s.
        assert gap < 2.5, f"the first attempt was held {gap:.2f} s"
    finally:
        silent.close()
        client.stop()
        client.close()
        for _, conn in accepted:
            conn.close()
