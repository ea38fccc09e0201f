"""Prefix watches over etcd's gateway that lose no event, and the thread that runs callbacks.

A :class:`PrefixWatch` streams every change of the keys under one prefix. It remembers the
revision up to which it has delivered everything (the latest event's revision, or a progress
notification's), and each new stream starts right after it: a stream cut by a restarted etcd, a
reconnect to another member, or a partition resumes where the last one stopped, so no event is
lost and none is delivered twice. Should etcd have compacted that revision away meanwhile, the
watch cannot know what changed: it reads the current revision, calls ``on_resync`` (the owner
looks at everything again) and goes on from there.

A stream that stays silent for ``idle`` seconds is re-opened (from its revision: nothing is
lost), so a connection that died without a word (a partition that swallowed the reset) does not
stay deaf for long; :meth:`PrefixWatch.restart` does it at once — the backend calls it when the
lease's keep-alives get through again after failing.

A :class:`Dispatcher` is the backend's one callback thread: change events and
``watch_runs`` callbacks run there, in the order they were submitted, never on a watch thread
(which must keep reading) nor on the caller's.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from loguru import logger

from goworker_py.cluster.backends.etcd.transport import Transport, decode, encode, prefix_end
from goworker_py.errors import BackendError

_log = logger.bind(component="etcd")

#: Seconds of silence after which a watch stream is re-opened (from its revision).
IDLE_RESTART = 60.0


@dataclass(frozen=True)
class KeyEvent:
    """One change of one key: its full name, its value (empty when deleted), its revision."""

    key: str
    deleted: bool
    value: bytes
    revision: int


class Dispatcher:
    """Runs submitted callables one after the other on a thread of its own."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        """Run ``task`` after everything submitted before it."""
        self._queue.put(task)

    def close(self) -> None:
        """Stop after the tasks already submitted."""
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while (task := self._queue.get()) is not None:
            try:
                task()
            except Exception as exc:  # noqa: BLE001 - a callback's bug must not end the thread
                _log.opt(exception=exc).error("etcd backend callback failed: {!r}", exc)


class PrefixWatch:
    """Every change under ``prefix`` after revision ``after``, delivered to ``on_events`` (on
    the watch's thread: it must only hand them on)."""

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        after: int,
        on_events: Callable[[list[KeyEvent]], None],
        on_resync: Callable[[], None],
        idle: float = IDLE_RESTART,
    ) -> None:
        self._transport = transport
        self._session = transport.session()
        self.prefix = prefix
        #: Every event up to this revision has been delivered.
        self.revision = after
        #: Streams opened so far, and the revision the latest one started after.
        self.streams = 0
        self.started_after = after
        self._on_events = on_events
        self._on_resync = on_resync
        self._idle = idle
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._closed = threading.Event()
        self._retry = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"goworker-etcd-watch {prefix}", daemon=True
        )

    def start(self) -> PrefixWatch:
        """Start streaming."""
        self._thread.start()
        return self

    def restart(self) -> None:
        """Cut the current stream; the next one starts after :attr:`revision` at once."""
        self._retry.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def close(self) -> None:
        """Stop the watch (its thread ends promptly: the stream's socket is shut down)."""
        with self._lock:
            self._closed.set()
            response = self._response
        self._retry.set()
        if response is not None:
            _shutdown(response)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    @property
    def alive(self) -> bool:
        """True while the watch's thread runs."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        pause = 0.05
        while not self._closed.is_set():
            self._retry.clear()
            try:
                if self._stream():
                    pause = 0.05
            except BackendError as exc:
                if not self._closed.is_set():
                    _log.debug("etcd watch of {} interrupted: {}", self.prefix, exc)
            except (requests.RequestException, OSError, ValueError, AttributeError) as exc:
                # The stream ended (etcd stopped, the socket was shut down, a reset).
                if not self._closed.is_set():
                    _log.debug("etcd watch of {} ended: {!r}", self.prefix, exc)
            except Exception as exc:  # noqa: BLE001 - a watch thread must never die silently
                _log.opt(exception=exc).error("etcd watch of {} failed: {!r}", self.prefix, exc)
            if self._closed.is_set():
                return
            self._retry.wait(pause)
            pause = min(pause * 2, 1.0)

    def _stream(self) -> bool:
        """One stream, until it ends; True if etcd accepted it."""
        body = {
            "create_request": {
                "key": encode(self.prefix),
                "range_end": prefix_end(self.prefix),
                "start_revision": str(self.revision + 1),
                "progress_notify": True,
            }
        }
        response = self._transport.stream("watch", body, self._session, self._idle)
        with self._lock:
            if self._closed.is_set():
                response.close()
                return False
            self._response = response
            self.streams += 1
            self.started_after = self.revision
        created = False
        try:
            buffer = b""
            for chunk in response.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    if line.strip():
                        created = self._message(json.loads(line)) or created
                if self._closed.is_set():
                    break
        finally:
            with self._lock:
                self._response = None
            response.close()
        return created

    def _message(self, message: dict[str, Any]) -> bool:
        """Handle one message of the stream; True if it confirms the watch was created."""
        if "error" in message:
            raise BackendError(f"etcd watch of {self.prefix}: {message['error']}")
        result = message.get("result", {})
        compacted = int(result.get("compact_revision", 0))
        if compacted:
            self._resync(compacted)
            raise BackendError(f"etcd compacted the history of {self.prefix} to {compacted}")
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            if "invalid auth token" in reason:  # etcd restarted: its tokens are gone
                self._transport.authenticate(self._session, self._transport.config.connect_timeout)
            raise BackendError(f"etcd cancelled the watch of {self.prefix}: {reason}")
        if result.get("created"):
            return True
        events = [_event(item) for item in result.get("events", [])]
        if events:
            self._on_events(events)
            self.revision = max(self.revision, *(event.revision for event in events))
        else:
            # A progress notification: every event up to its revision has been sent.
            revision = int(result.get("header", {}).get("revision", 0))
            self.revision = max(self.revision, revision)
        return False

    def _resync(self, compacted: int) -> None:
        """The history after :attr:`revision` is gone: go on from the current revision, and
        let the owner read everything again."""
        reply = self._transport.call(
            "kv/range",
            {"key": encode(self.prefix), "range_end": prefix_end(self.prefix), "count_only": True},
            self._transport.config.connect_timeout,
            self._session,
        )
        current = int(reply.get("header", {}).get("revision", compacted))
        _log.info(
            "etcd compacted revision {} of {}: reading it again at {}",
            self.revision + 1,
            self.prefix,
            current,
        )
        self.revision = max(self.revision, current)
        self._on_resync()


def _event(item: dict[str, Any]) -> KeyEvent:
    kv = item.get("kv", {})
    return KeyEvent(
        key=decode(kv.get("key", "")).decode(errors="replace"),
        deleted=item.get("type") == "DELETE",
        value=decode(kv.get("value", "")),
        revision=int(kv.get("mod_revision", 0)),
    )


def _shutdown(response: requests.Response) -> None:
    """Wake the thread reading ``response``: shut its socket down (closing it would not wake a
    blocked read). Through urllib3's connection object when it has one; else close."""
    connection = getattr(response.raw, "connection", None) or getattr(
        response.raw, "_connection", None
    )
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(Exception):
        response.close()
