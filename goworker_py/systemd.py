"""systemd ``Type=notify`` support, without a dependency: the ``sd_notify`` datagram protocol.

Under a unit with ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (and, with ``WatchdogSec=``,
``WATCHDOG_USEC``). :class:`SystemdNotifier` watches one or more workers and tells systemd:

- ``READY=1`` once every worker is running (in cluster mode: connected and registered);
- ``WATCHDOG=1`` every half watchdog interval while every worker is healthy — running, its
  supervisor not stuck inside one pass for a whole interval, health not ``RED`` — so systemd
  restarts a process that hangs or stays cut off from ZooKeeper longer than ``WatchdogSec``;
- ``STATUS=...`` when the picture changes (shards, health, paused);
- ``STOPPING=1`` when a worker starts shutting down.

``goworker-py run`` uses it by itself; an application running its own workers adds::

    SystemdNotifier(worker_a, worker_b).start()

Outside systemd (no ``NOTIFY_SOCKET``) everything here does nothing.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from loguru import logger

from goworker_py.instance import HealthStatus

if TYPE_CHECKING:
    from goworker_py.worker import Worker


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (``"READY=1\\nSTATUS=..."``) to systemd; False outside systemd.

    ``NOTIFY_SOCKET`` is a path, or an abstract socket name starting with ``@``.
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            logger.warning("systemd notification {!r} failed: {!r}", message, exc)
            return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval systemd expects pings within (seconds), or None if it is off."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process
    return int(usec) / 1e6


class SystemdNotifier:
    """Reports the lifecycle and health of ``workers`` to systemd (a daemon thread)."""

    #: How often the picture is looked at when there is no watchdog (seconds).
    POLL = 1.0

    def __init__(self, *workers: Worker, environ: Mapping[str, str] | None = None) -> None:
        self.workers = workers
        self.environ = dict(os.environ if environ is None else environ)
        self.interval = watchdog_interval(self.environ)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = ""
        self._ready = False
        self._stopping = False

    @property
    def enabled(self) -> bool:
        """True under systemd (``NOTIFY_SOCKET`` set)."""
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def start(self) -> SystemdNotifier:
        """Start reporting (does nothing outside systemd); returns self."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="goworker:systemd-notify", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reporting (after a last ``STOPPING=1`` if it was not sent yet)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.enabled and not self._stopping:
            self._send("STOPPING=1\nSTATUS=stopped")

    def _send(self, message: str) -> None:
        notify(message, self.environ)

    def _loop(self) -> None:
        pause = self.POLL if self.interval is None else min(self.interval / 2, self.POLL)
        while not self._stop.is_set():
            self.check()
            if self._stopping:
                return
            self._stop.wait(pause)

    def check(self) -> None:
        """One look at the workers: send what changed (and a watchdog ping if healthy)."""
        from goworker_py.worker import WorkerState

        states = [w.state for w in self.workers]
        if any(s is WorkerState.SHUTDOWN for s in states) or any(w.stopping for w in self.workers):
            self._stopping = True
            self._send("STOPPING=1\nSTATUS=stopping")
            return
        running = all(s is WorkerState.RUNNING for s in states)
        status = self._describe() if running else "starting"
        lines = []
        if running and not self._ready:
            self._ready = True
            lines.append("READY=1")
        if status != self._status:
            self._status = status
            lines.append(f"STATUS={status}")
        healthy = running and all(w.health is not HealthStatus.RED for w in self.workers)
        if self.interval is not None and healthy:
            # A supervisor stuck in a call for a whole watchdog interval no longer follows the
            # cluster, however healthy it last looked: let systemd restart the process.
            healthy = all(w.supervisor_stalled_for() < self.interval for w in self.workers)
        if self.interval is not None and healthy:
            lines.append("WATCHDOG=1")
        if lines:
            self._send("\n".join(lines))

    def _describe(self) -> str:
        parts = []
        for worker in self.workers:
            text = f"{worker.name}: {len(worker.shards)} shard(s) {worker.health.name}"
            if worker.paused:
                text += " paused"
            parts.append(text)
        return "; ".join(parts)
