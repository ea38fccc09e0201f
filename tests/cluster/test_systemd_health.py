"""systemd watchdog in cluster mode: no WATCHDOG=1 while the instance is RED (real ZooKeeper)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import NotifySocket, wait_until

from goworker_py import HealthStatus
from goworker_py.systemd import SystemdNotifier
from goworker_py.testing import ZooKeeperServer

from .conftest import Cluster, Ledger

pytestmark = pytest.mark.timeout(60)


def test_watchdog_pings_stop_while_fenced_and_resume_after(
    zookeeper_private: ZooKeeperServer, private_cluster: Cluster, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path, path)
    worker = private_cluster.make(Ledger().handler(), total=2, session_timeout=2.0)
    notifier = SystemdNotifier(
        worker, environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    ).start()
    try:
        wait_until(lambda: "READY=1" in sock.lines(), 10, what="READY=1")
        wait_until(lambda: len(sock.times_of("WATCHDOG=1")) >= 3, 5)
        zookeeper_private.pause()
        try:
            wait_until(lambda: worker.health is HealthStatus.RED, 5, what="self-fencing")
            time.sleep(0.15)  # a check that began before the fence may still ping
            fenced_at = time.monotonic()
            time.sleep(0.6)  # three watchdog periods
            assert not [t for t in sock.times_of("WATCHDOG=1") if t > fenced_at]
            assert any("RED" in line for line in sock.lines() if line.startswith("STATUS="))
        finally:
            zookeeper_private.resume()
        wait_until(lambda: worker.health is HealthStatus.GREEN, 15, what="healthy again")
        healthy_at = time.monotonic()
        wait_until(
            lambda: [t for t in sock.times_of("WATCHDOG=1") if t > healthy_at], 5, what="pings"
        )
    finally:
        notifier.stop()
        sock.close()
