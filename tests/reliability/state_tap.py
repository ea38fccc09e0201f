"""The seam tapped: what an instance of a reliability scenario learns through the coordination
backend, recorded for the history (``instance_main.py``, on the backends other than ZooKeeper).

:func:`tapped_discovery` registers a discovery protocol whose backend is the real one of a
discovery URL, wrapped in a :class:`StateTap`; the worker gets that config, so the host talks to
the backend exactly as it would, and the tap sees what passes: connection-state changes
(``Change.CONNECTION``) and registrations. Nothing else is changed or delayed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from goworker_py import DiscoveryConfig, WorkerInstance
from goworker_py.cluster.backend import Change, CoordinationBackend, Member
from goworker_py.cluster.discovery import get_discovery, set_discovery

#: The protocol name the tapped backend is registered under (see :func:`tapped_discovery`).
TAPPED = "reliability-tapped"


class StateTap:
    """A backend built by the registry, whose connection-state changes and registrations are
    teed to ``record(event, **fields)`` on their way; everything else is the backend's own.

    - ``conn_state`` (``state``, ``lease``, ``inferred``) for every ``Change.CONNECTION``
      delivered to the host: the ``ConnectionState``'s name read on delivery, and the lease it
      concerns. The tap knows the lease the instance holds (from ``register`` and from each
      change): a ``LOST`` names that lease. A lease replaced without a ``LOST`` delivered for it
      (the state read on delivery was ``CONNECTED`` again, or the host registered on the new
      lease first) is recorded as a ``LOST`` of the old one, ``inferred``, when the new lease
      was seen - never before the fact.
    - ``registered`` (``session``: the lease, ``node``: the member key, ``member``: the
      instance id, ``timeout``: the lease's TTL) for every member entry ``register`` made.

    ``record`` runs on the backend's threads (the seam allows signalling only) or the host's
    supervisor: it appends to a deque that the history watcher writes out.
    """

    def __init__(self, backend: CoordinationBackend, record: Callable[..., None]) -> None:
        self._backend = backend
        self._record = record
        self._held = ""
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        backend = self._backend

        def tee(change: Change) -> None:
            if change is Change.CONNECTION:
                self._seen(backend.state.name, backend.lease_id)
            if on_change is not None:
                on_change(change)

        backend.connect(tee)

    def register(self, instance: WorkerInstance) -> Member:
        member = self._backend.register(instance)
        self._seen("", member.lease)
        self._record(
            "registered",
            session=member.lease,
            node=member.key,
            member=member.instance.id,
            timeout=self._backend.negotiated_timeout,
        )
        return member

    def _seen(self, state: str, lease: str) -> None:
        """A connection state (or, with ``state`` "", a registration) on ``lease``."""
        with self._lock:
            held = self._held
            if held and (state == "LOST" or (lease and lease != held)):
                self._held = ""
                self._record("conn_state", state="LOST", lease=held, inferred=state != "LOST")
                if state == "LOST":
                    return
            if lease:
                self._held = lease
            if state:
                self._record("conn_state", state=state, lease=lease, inferred=False)


def tapped_discovery(url: str, record: Callable[..., None], **settings: Any) -> DiscoveryConfig:
    """The discovery config of ``url`` (with ``settings``), under the :data:`TAPPED` protocol:
    its backend is the URL's own, wrapped in a :class:`StateTap` that calls ``record``."""
    config = DiscoveryConfig.from_url(url, **settings)

    def factory(tapped: DiscoveryConfig, service: str) -> CoordinationBackend:
        backend = get_discovery(replace(tapped, protocol=config.protocol), service)
        return StateTap(backend, record)  # type: ignore[return-value]

    set_discovery(TAPPED, factory)
    return replace(config, protocol=TAPPED)
