"""Flag: a threading.Event that makes its Condition only when first waited on."""

from __future__ import annotations

import threading

import pytest

from goworker_py.flag import Bell, Flag

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


def test_a_bell_set_before_the_wait_returns_at_once_and_clear_resets_it() -> None:
    bell = Bell()
    assert not bell.is_set()
    bell.set()
    assert bell.is_set() and bell.wait(5.0)
    bell.clear()
    assert not bell.is_set()
    assert not bell.wait(0.01)  # times out: nobody rang


def test_a_bell_wakes_its_waiter_and_then_rings_again() -> None:
    bell = Bell()
    for _ in range(3):
        woke = threading.Event()
        thread = threading.Thread(target=lambda woke=woke: bell.wait(30.0) and woke.set())
        thread.start()
        while not bell._waiting:  # the waiter blocks on the bell
            woke.wait(0.001)
        bell.set()
        assert woke.wait(5.0)
        thread.join(5.0)
        bell.clear()


def test_a_bell_has_one_waiter_at_a_time() -> None:
    bell = Bell()
    thread = threading.Thread(target=bell.wait, args=(30.0,))
    thread.start()
    while not bell._waiting:
        threading.Event().wait(0.001)
    with pytest.raises(RuntimeError, match="one thread at a time"):
        bell.wait(1.0)
    bell.set()
    thread.join(5.0)
    assert not thread.is_alive()


def test_a_bell_rung_as_its_wait_times_out_stays_consistent() -> None:
    # set() racing the end of a timed wait: whichever wins, the next wait after a clear()
    # must block again (a release left behind would make it return at once, unrung).
    bell = Bell()
    for index in range(300):
        ringer = threading.Timer(0.001 * (index % 3), bell.set)
        ringer.start()
        bell.wait(0.001)
        ringer.join(5.0)
        assert bell.is_set()
        bell.clear()
        assert not bell._ring.acquire(False)  # still held: no stray release
        assert not bell.wait(0.0)
