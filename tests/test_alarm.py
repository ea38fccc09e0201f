"""The process-wide alarm: wake-ups in wall-clock order, taken back, no thread while idle."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import wait_until

from goworker_py.alarm import LEAD, Alarm

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def alarm() -> Iterator[Alarm]:
    """An alarm of the test's own; whatever it still holds is cancelled afterwards."""
    made = Alarm()
    yield made
    for _, _, wake_up in list(made._heap):
        wake_up.cancel()
    thread = made._thread
    if thread is not None:
        thread.join(5.0)


def test_wake_ups_are_called_lead_seconds_early_in_time_order(alarm: Alarm) -> None:
    called: list[tuple[str, float]] = []
    now = time.time()
    # Due LEAD + 0.3 s and LEAD + 0.1 s from now: called about 0.3 s and 0.1 s from now.
    alarm.call_at(now + LEAD + 0.3, lambda: called.append(("late", time.time())))
    alarm.call_at(now + LEAD + 0.1, lambda: called.append(("early", time.time())))
    assert alarm.pending == 2
    wait_until(lambda: len(called) == 2, 5.0, what="both wake-ups")
    assert [name for name, _ in called] == ["early", "late"]
    early, late = called[0][1] - now, called[1][1] - now
    assert early >= 0.1 and late >= 0.3  # never before its time
    assert alarm.pending == 0


def test_a_wake_up_already_due_is_called_at_once(alarm: Alarm) -> None:
    called = threading.Event()
    alarm.call_at(time.time() - 5.0, called.set)
    assert called.wait(2.0)


def test_a_cancelled_wake_up_is_never_called_and_the_thread_ends(alarm: Alarm) -> None:
    called: list[str] = []
    keep = alarm.call_at(time.time() + LEAD + 0.2, lambda: called.append("kept"))
    dropped = alarm.call_at(time.time() + LEAD + 0.1, lambda: called.append("dropped"))
    dropped.cancel()
    assert alarm.pending == 1
    wait_until(lambda: called == ["kept"], 5.0, what="the kept wake-up")
    keep.cancel()  # already called: changes nothing
    assert alarm.pending == 0
    wait_until(lambda: alarm._thread is None, 5.0, what="the alarm's thread to end")


def test_cancelling_every_far_wake_up_ends_the_thread_at_once(alarm: Alarm) -> None:
    """Stopped workers leave no thread behind, even with wake-ups due in a day."""
    wake_ups = [alarm.call_at(time.time() + 86_400 + i, lambda: None) for i in range(100)]
    wait_until(lambda: alarm._thread is not None and alarm._thread.is_alive(), 5.0)
    thread = alarm._thread
    assert thread is not None
    for wake_up in wake_ups:
        wake_up.cancel()
    thread.join(5.0)
    assert not thread.is_alive() and alarm.pending == 0 and alarm._heap == []


def test_the_thread_starts_again_for_a_later_wake_up(alarm: Alarm) -> None:
    first = threading.Event()
    alarm.call_at(time.time(), first.set)
    assert first.wait(2.0)
    wait_until(lambda: alarm._thread is None, 5.0, what="the thread to end")
    second = threading.Event()
    alarm.call_at(time.time(), second.set)
    assert second.wait(2.0)


def test_a_failing_callback_does_not_stop_the_others(alarm: Alarm) -> None:
    called = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    alarm.call_at(time.time(), fail)
    alarm.call_at(time.time() + 0.01, called.set)
    assert called.wait(2.0)


def test_an_earlier_wake_up_interrupts_a_long_sleep(alarm: Alarm) -> None:
    alarm.call_at(time.time() + 3600, lambda: None)
    wait_until(lambda: alarm._thread is not None, 5.0)
    called = threading.Event()
    alarm.call_at(time.time() + LEAD + 0.05, called.set)
    assert called.wait(2.0)


def test_a_set_wall_clock_wakes_the_sleeping_alarm(alarm: Alarm) -> None:
    """The kernel tells the alarm when the wall clock is set (timerfd, TFD_TIMER_CANCEL_ON_SET):
    its sleep, counted on the monotonic clock, is then recomputed without any polling."""
    alarm.call_at(time.time() + 3600, lambda: None)
    wait_until(lambda: alarm._thread is not None, 5.0)
    assert alarm._clock_fd >= 0, "no timerfd: the alarm polls the wall clock every second"
    before = alarm.clock_changes
    try:
        # Set the clock to what it reads: a step of microseconds, harmless to the machine.
        time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME))
    except PermissionError:
        pytest.skip("setting the wall clock needs CAP_SYS_TIME (CI runs as root)")
    wait_until(lambda: alarm.clock_changes > before, 5.0, what="the alarm noticed the change")
