"""How changes reach a Redis backend's host: a pub/sub listener thread, and what it hands on.

:class:`ChangeFeed` turns the messages of the service's ``changes`` channel into
:class:`~goworker_py.cluster.backend.Change` events, calls the ``watch_runs`` callbacks of run
records (of this service or another), and follows keyspace events when the server publishes
them. :class:`ChangeListener` is the thread under it.

Pub/sub delivers a message only to a connection subscribed when it is published: whatever was
published while the listener was disconnected is lost. So after every reconnect, once a channel
is subscribed again, :class:`ChangeListener` calls ``on_resubscribed(channel)`` and the backend
reports every kind of change on it (the host then reads everything again). A connection that
dies silently is caught by the backend's change counter (see the ``TICK`` script).

redis-py's ``PubSub`` object is not meant to be shared between threads, so only this thread
touches it: another thread asks for a channel with :meth:`ChangeListener.add_channel`, which
queues it and wakes the thread by publishing on the listener's own wake channel.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger
from redis.client import PubSub
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from goworker_py.cluster.backend import Change, RunRecord
from goworker_py.cluster.backends.redis.client import Requests
from goworker_py.errors import BackendError

#: Seconds one wait for a message lasts: how soon the thread notices ``close()`` at worst.
POLL_SECONDS = 1.0


class ChangeListener:
    """Follows pub/sub channels on a thread of its own and hands each message on.

    ``on_message(channel, data)``, ``on_resubscribed(channel)`` and ``on_cut()`` (the server
    closed or reset the connection: it may be restarting) run on this thread.
    """

    def __init__(
        self,
        make_pubsub: Callable[[], PubSub],
        wake: Callable[[str], object],
        on_message: Callable[[str, str], None],
        on_resubscribed: Callable[[str], None],
        *,
        on_cut: Callable[[], None] = lambda: None,
        wake_channel: str,
        max_backoff: float,
        name: str,
    ) -> None:
        self._make_pubsub = make_pubsub
        self._wake = wake
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._on_cut = on_cut
        self._wake_channel = wake_channel
        self._max_backoff = max_backoff
        self._lock = threading.Lock()
        self._channels: dict[str, threading.Event] = {wake_channel: threading.Event()}
        self._pending: list[str] = []
        #: Channels to report again once subscribed anew (after a lost connection).
        self._stale: set[str] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def add_channel(self, channel: str, timeout: float) -> bool:
        """Follow ``channel``; True once the server confirmed the subscription (waits at most
        ``timeout`` seconds: a subscription confirmed later still counts, and is reported
        through ``on_resubscribed`` if the connection was lost meanwhile)."""
        with self._lock:
            event = self._channels.get(channel)
            if event is None:
                event = self._channels[channel] = threading.Event()
                self._pending.append(channel)
        if not event.is_set():
            with contextlib.suppress(RedisError, BackendError):
                self._wake(self._wake_channel)  # else it subscribes within POLL_SECONDS anyway
        return event.wait(timeout)

    def close(self, timeout: float) -> None:
        """Stop the thread (waiting at most ``timeout`` seconds)."""
        self._closed.set()
        with contextlib.suppress(RedisError, BackendError):
            self._wake(self._wake_channel)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        pubsub: PubSub | None = None
        failures = 0
        while not self._closed.is_set():
            live = pubsub is not None  # subscribed: not a reconnect attempt
            try:
                if pubsub is None:
                    pubsub = self._make_pubsub()
                    with self._lock:
                        self._pending.clear()
                        channels = list(self._channels)
                    pubsub.subscribe(*channels)
                self._subscribe_pending(pubsub)
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is not None:
                    failures = 0
                    self._handle(message)
            except (RedisError, OSError) as exc:
                failures += 1
                logger.debug("Redis pub/sub connection lost ({!r}); subscribing again", exc)
                if live and not isinstance(exc, RedisTimeout):
                    self._on_cut()  # closed or reset, not merely slow
                self._discard(pubsub)
                pubsub = None
                with self._lock:
                    self._stale = set(self._channels)
                    for event in self._channels.values():
                        event.clear()
                self._closed.wait(min(self._max_backoff, 0.05 * 2 ** min(failures, 10)))
        self._discard(pubsub)

    def _subscribe_pending(self, pubsub: PubSub) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            pubsub.subscribe(*pending)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = str(message.get("channel"))
        if kind == "subscribe":
            with self._lock:
                event = self._channels.get(channel)
                stale = channel in self._stale
                self._stale.discard(channel)
            if event is not None:
                event.set()
            if stale and channel != self._wake_channel:
                self._on_resubscribed(channel)
        elif kind == "message" and channel != self._wake_channel:
            self._on_message(channel, str(message.get("data")))

    @staticmethod
    def _discard(pubsub: PubSub | None) -> None:
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                pubsub.close()


#: The kinds of change published on a service's ``changes`` channel, as the host sees them.
KINDS = {
    "members": Change.MEMBERS,
    "claims": Change.CLAIMS,
    "settings": Change.SETTINGS,
    "control": Change.CONTROL,
}

RunCallback = Callable[[RunRecord | None], bool]


class ChangeFeed:
    """What a Redis backend follows, and what it reports (on the listener's thread).

    ``emit`` reports a change of this service (a release of claims only when ``awaited(shards)``
    says this instance waits for one of them); ``read_run(service, shard)`` reads a run record;
    ``look_again()`` wakes the backend's ticker (an expiry to prune, or our own lease gone);
    ``own_lease()`` is the current lease id; ``on_cut()`` is told when the server closed or
    reset the listener's connection.
    """

    def __init__(
        self,
        requests: Requests,
        *,
        service: str,
        prefix_of: Callable[[str], str],
        emit: Callable[[Change], None],
        awaited: Callable[[list[int]], bool],
        read_run: Callable[[str, int], RunRecord | None],
        look_again: Callable[[], None],
        own_lease: Callable[[], str],
        wake_id: str,
        max_backoff: float,
        confirm_timeout: float,
        on_cut: Callable[[], None] = lambda: None,
    ) -> None:
        self.service = service
        self._requests = requests
        self._prefix_of = prefix_of
        self._emit = emit
        self._awaited = awaited
        self._read_run = read_run
        self._look_again = look_again
        self._own_lease = own_lease
        self._confirm_timeout = confirm_timeout
        self._lock = threading.Lock()
        self._channel_services: dict[str, str] = {}
        self._watchers: dict[tuple[str, int], list[RunCallback]] = {}
        #: Per service, the highest change number received, and one a TICK saw unreceived.
        self._seen: dict[str, int] = {}
        self._expected: dict[str, int] = {}
        client = requests.client
        self._listener = ChangeListener(
            lambda: client.pubsub(),
            lambda channel: requests.do(lambda c: c.publish(channel, "wake"), "PUBLISH"),
            self._on_message,
            self._on_resubscribed,
            on_cut=on_cut,
            wake_channel=f"{prefix_of(service)}wake:{wake_id}",
            max_backoff=max_backoff,
            name=f"goworker:redis-listen:{service}",
        )

    def start(self, keyspace: list[str]) -> bool:
        """Start listening; True once the service's own channel is confirmed."""
        self._listener.start()
        for channel in keyspace:
            self._listener.add_channel(channel, 0.0)
        return self.follow(self.service)

    def close(self, timeout: float) -> None:
        """Stop the listener thread."""
        self._listener.close(timeout)

    def follow(self, service: str) -> bool:
        """Subscribe to ``service``'s changes; note its change number once subscribed."""
        channel = self._prefix_of(service) + "changes"
        with self._lock:
            self._channel_services[channel] = service
            known = service in self._seen
        confirmed = self._listener.add_channel(channel, self._confirm_timeout)
        if confirmed and not known:
            self._note_seq(service)
        return confirmed

    def services(self) -> list[str]:
        """This service, then every other one whose run records are watched."""
        with self._lock:
            others = {service for service, _ in self._watchers if service != self.service}
        return [self.service, *sorted(others)]

    # -- run record watches -----------------------------------------------------------------------

    def watch(self, service: str, shard: int, callback: RunCallback) -> None:
        """``watch_runs``: call ``callback`` now (this thread) and on each change."""
        with self._lock:
            self._watchers.setdefault((service, shard), []).append(callback)
        self.follow(service)
        if not callback(self._read_run(service, shard)):
            self._drop(service, shard, callback)

    def _drop(self, service: str, shard: int, callback: RunCallback) -> None:
        with self._lock:
            callbacks = self._watchers.get((service, shard), [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._watchers.pop((service, shard), None)

    def _fire(self, service: str, shard: int) -> None:
        with self._lock:
            callbacks = list(self._watchers.get((service, shard), ()))
        if not callbacks:
            return
        found = self._read_run(service, shard)
        for callback in callbacks:
            try:
                keep = callback(found)
            except Exception as exc:  # noqa: BLE001 - a host callback must not kill the listener
                logger.opt(exception=exc).error("run record watch of {}/{} raised", service, shard)
                keep = True
            if not keep:
                self._drop(service, shard, callback)

    # -- messages ---------------------------------------------------------------------------------

    def _on_message(self, channel: str, data: str) -> None:
        service = self._channel_services.get(channel)
        if service is None:
            self._on_keyspace_event(data)
            return
        seq, _, kind = data.partition(" ")
        with self._lock:
            if seq.isdigit():
                self._seen[service] = max(self._seen.get(service, 0), int(seq))
        if service == self.service:
            if kind.startswith("claims:"):
                if self._awaited(_shards(kind[len("claims:") :])):
                    self._emit(Change.CLAIMS)
            elif kind in KINDS:
                self._emit(KINDS[kind])
        if kind.startswith("run:") and kind[4:].isdigit():
            self._fire(service, int(kind[4:]))

    def _on_keyspace_event(self, key: str) -> None:
        prefix = self._prefix_of(self.service)
        if not key.startswith(prefix):
            return
        name = key[len(prefix) :]
        if name.startswith("member:"):
            self._emit(Change.MEMBERS)
        elif name.startswith("claim:"):
            if self._awaited(_shards(name[len("claim:") :])):
                self._emit(Change.CLAIMS)
        elif name != f"lease:{self._own_lease()}":
            return
        self._look_again()  # prune the index (publishing it), or find our own lease gone

    def _on_resubscribed(self, channel: str) -> None:
        service = self._channel_services.get(channel)
        if service is not None:
            with contextlib.suppress(BackendError):  # else the next TICK compares again
                self._note_seq(service)
            self.resync(service)

    def _note_seq(self, service: str) -> None:
        key = self._prefix_of(service) + "seq"
        seq = int(self._requests.get(key) or 0)
        with self._lock:
            self._seen[service] = max(seq, self._seen.get(service, 0))
            self._expected.pop(service, None)

    def check_seq(self, service: str, seq: int) -> None:
        """A TICK read ``service``'s change number: report everything again when pub/sub lost
        a message (the number stayed ahead of what was received for a whole tick), or when it
        went back (a restart without persistence)."""
        with self._lock:
            if service not in self._seen:
                return  # not followed (yet)
            seen, expected = self._seen[service], self._expected.pop(service, None)
            missed = seq < seen or (expected is not None and seen < expected <= seq)
            if missed:
                self._seen[service] = seq
            elif seq > seen:
                self._expected[service] = seq
        if missed:
            logger.debug("Redis: changes of {} missed by pub/sub; reporting all", service)
            self.resync(service)

    def resync(self, service: str) -> None:
        """Report every kind of change of ``service`` (messages may have been lost)."""
        if service == self.service:
            for change in KINDS.values():
                self._emit(change)
        with self._lock:
            shards = [shard for s, shard in self._watchers if s == service]
        for shard in shards:
            try:
                self._fire(service, shard)
            except BackendError as exc:
                logger.debug("Redis: re-reading run record {}/{} failed: {!r}", service, shard, exc)


def _shards(text: str) -> list[int]:
    """``"3,7"`` -> ``[3, 7]`` (anything else is skipped)."""
    return [int(part) for part in text.split(",") if part.isdigit()]
