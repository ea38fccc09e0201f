"""The fence thread and the callback thread: the two threads that keep user code away from
the decision to fence (no server needed: injected deadlines)."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import LogCapture, wait_until

from goworker_py.callbacks import CallbackThread
from goworker_py.cluster.fence import Fence

pytestmark = pytest.mark.timeout(20)


class Deadline:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_the_fence_trips_once_its_deadline_passes() -> None:
    deadline = Deadline(time.monotonic() + 0.2)
    trips: list[tuple[float, str]] = []
    fence = Fence(deadline, lambda why: trips.append((time.monotonic(), why)), "test-fence")
    fence.start()
    try:
        wait_until(lambda: trips, 5.0, what="the fence tripped")
        ((at, why),) = trips
        assert at >= deadline.at and "not renewed" in why
        assert fence.tripped and fence.fenced_at is not None
        time.sleep(0.1)
        assert len(trips) == 1, "tripped twice"
    finally:
        fence.close()


def test_a_renewed_deadline_postpones_the_fence() -> None:
    deadline = Deadline(time.monotonic() + 0.15)
    trips: list[float] = []
    fence = Fence(deadline, lambda why: trips.append(time.monotonic()), "test-fence")
    fence.start()
    try:
        renewed_until = time.monotonic() + 0.6
        for _ in range(4):  # renewed before each deadline, as replies keep coming
            time.sleep(0.1)
            deadline.at = time.monotonic() + 0.15
        deadline.at = renewed_until
        wait_until(lambda: trips, 5.0, what="the fence tripped")
        assert trips[0] >= renewed_until
    finally:
        fence.close()


def test_lift_then_trip_again() -> None:
    deadline = Deadline(time.monotonic() - 1.0)
    trips: list[str] = []
    fence = Fence(deadline, trips.append, "test-fence")
    fence.start()
    try:
        wait_until(lambda: len(trips) == 1, 5.0)
        deadline.at = time.monotonic() + 0.1
        fence.lift()
        assert not fence.tripped
        wait_until(lambda: len(trips) == 2, 5.0, what="tripped again after the new deadline")
        assert fence.trip("session lost") is False  # already tripped
        fence.lift()
        assert fence.trip("session lost") is True
        assert trips[-1] == "session lost"
    finally:
        fence.close()


def test_the_fence_is_not_delayed_by_a_blocked_callback_thread() -> None:
    """The callback thread runs user code; the fence trips on time while it blocks."""
    callbacks = CallbackThread("test-callbacks")
    blocked = threading.Event()
    release = threading.Event()
    callbacks.submit("watch", lambda: (blocked.set(), release.wait(10)))
    assert blocked.wait(5)
    deadline = Deadline(time.monotonic() + 0.1)
    trips: list[float] = []
    fence = Fence(deadline, lambda why: trips.append(time.monotonic()), "test-fence")
    fence.start()
    try:
        wait_until(lambda: trips, 2.0, what="the fence tripped")
        assert trips[0] - deadline.at < 0.5
    finally:
        release.set()
        fence.close()
        callbacks.close()


def test_callbacks_run_in_order_latest_per_key_and_survive_errors() -> None:
    callbacks = CallbackThread("test-callbacks")
    gate = threading.Event()
    ran: list[str] = []
    try:
        callbacks.submit("gate", lambda: (gate.wait(5), ran.append("gate")))
        callbacks.submit(1, lambda: ran.append("one, first"))
        callbacks.submit(2, lambda: ran.append("two"))
        callbacks.submit(1, lambda: ran.append("one, latest"))
        with LogCapture("ERROR") as log:
            callbacks.submit(3, lambda: 1 / 0)
            callbacks.submit(4, lambda: ran.append("after the error"))
            gate.set()
            wait_until(lambda: "after the error" in ran, 5.0)
        assert ran == ["gate", "two", "one, latest", "after the error"]
        assert log.contains("ZeroDivisionError")
    finally:
        callbacks.close()


def test_a_closed_callback_thread_runs_nothing_more() -> None:
    callbacks = CallbackThread("test-callbacks")
    ran: list[int] = []
    callbacks.submit(0, lambda: ran.append(0))
    wait_until(lambda: ran, 5.0)
    callbacks.close()
    callbacks.submit(1, lambda: ran.append(1))
    time.sleep(0.05)
    assert ran == [0]
