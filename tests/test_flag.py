"""Flag: a threading.Event that makes its Condition only when first waited on."""

from __future__ import annotations

import threading

import pytest

from goworker_py.flag import Flag

pytestmark = pytest.mark.timeout(60)


def test_reading_setting_and_clearing_need_no_condition() -> None:
    flag = Flag()
    assert not flag.is_set()
    flag.set()
    assert flag.is_set()
    flag.clear()
    assert not flag.is_set()
    assert flag._made is None
    assert not flag.wait(0.01)  # a wait makes it
    assert flag._made is not None


def test_a_flag_set_before_the_wait_returns_at_once() -> None:
    flag = Flag()
    flag.set()
    assert flag.wait(5.0)


def test_a_waiter_is_woken_by_set_and_clear_then_works_as_an_event() -> None:
    flag = Flag()
    woke = threading.Event()
    thread = threading.Thread(target=lambda: flag.wait(30.0) and woke.set())
    thread.start()
    while flag._made is None:  # the waiter made the Condition
        woke.wait(0.001)
    flag.set()
    assert woke.wait(5.0)
    thread.join(5.0)
    flag.clear()
    assert not flag.is_set() and not flag.wait(0.01)


def test_a_set_racing_the_first_wait_is_never_lost() -> None:
    # The flag is set by one thread while another makes its Condition to wait on it: the waiter
    # must see the set either way (a lost set would leave it waiting its full 10 s).
    for _ in range(2000):
        flag, started = Flag(), threading.Event()
        results: list[bool] = []

        def wait(
            flag: Flag = flag, started: threading.Event = started, results: list[bool] = results
        ) -> None:
            started.set()
            results.append(flag.wait(10.0))

        thread = threading.Thread(target=wait)
        thread.start()
        started.wait()
        flag.set()
        thread.join(10.0)
        assert results == [True]
