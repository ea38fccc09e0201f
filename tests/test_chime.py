"""The chime: the places waiting for one instant are rung one after the other, never lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import wait_until

from goworker_py import chime as chime_module
from goworker_py.chime import SLACK, Chime, Place

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def chime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Chime]:
    """A chime of the test's own, whose thread lingers 0.2 s once it holds no instant."""
    monkeypatch.setattr(chime_module, "_LINGER", 0.2)
    made = Chime()
    yield made
    thread = made._thread
    if thread is not None:
        thread.join(5.0)


def rung(places: list[Place]) -> list[Place]:
    return [place for place in places if place.event.is_set()]


def test_a_peal_rings_its_places_one_at_a_time_each_passing_it_on(chime: Chime) -> None:
    at = time.time() + 0.2
    places = [chime.join(at, threading.Event()) for _ in range(3)]
    assert chime.pending == 3
    order: list[Place] = []
    for count in (1, 2, 3):
        wait_until(
            lambda count=count: len(rung(places)) == count, 5.0, what=f"{count} place(s) rung"
        )
        assert time.time() >= at  # never before the instant
        # Only the place just rung is set: the next one waits until it passes the peal on.
        (just_rung,) = [place for place in rung(places) if place not in order]
        assert just_rung.rung
        order.append(just_rung)
        chime.leave(just_rung)
    assert sorted(id(place) for place in order) == sorted(id(place) for place in places)
    assert chime.pending == 0
    assert chime.stragglers == 0


def test_a_place_left_before_its_turn_is_skipped(chime: Chime) -> None:
    at = time.time() + 0.2
    first, gone, last = (chime.join(at, threading.Event()) for _ in range(3))
    chime.leave(gone)  # woken by something else (a stop) before the instant
    assert chime.pending == 2
    wait_until(lambda: len(rung([first, last])) == 1, 5.0, what="the first ring")
    chime.leave(rung([first, last])[0])
    wait_until(lambda: len(rung([first, last])) == 2, 5.0, what="the second ring")
    assert not gone.event.is_set() and not gone.rung
    assert chime.pending == 0


def test_an_instant_already_past_rings_at_once(chime: Chime) -> None:
    place = chime.join(time.time() - 1.0, threading.Event())
    assert place.event.wait(5.0)
    chime.leave(place)
    assert chime.pending == 0


def test_a_place_joined_while_its_peal_rings_is_rung_in_it(chime: Chime) -> None:
    at = time.time() + 0.1
    first = chime.join(at, threading.Event())
    assert first.event.wait(5.0)
    late = chime.join(at, threading.Event())  # the peal is under way: it reaches this place
    assert not late.event.is_set()
    chime.leave(first)
    assert late.event.is_set() and late.rung
    chime.leave(late)
    assert chime.pending == 0


def test_a_place_joined_after_its_peal_ended_starts_another(chime: Chime) -> None:
    at = time.time() + 0.1
    first = chime.join(at, threading.Event())
    assert first.event.wait(5.0)
    chime.leave(first)  # the peal is over
    again = chime.join(at, threading.Event())
    assert again.event.wait(5.0)
    chime.leave(again)


def test_instants_ring_in_time_order(chime: Chime) -> None:
    now = time.time()
    later = chime.join(now + 0.4, threading.Event())
    sooner = chime.join(now + 0.2, threading.Event())
    assert sooner.event.wait(5.0)
    assert not later.event.is_set()
    assert time.time() >= now + 0.2
    chime.leave(sooner)  # ends its own peal only: the later instant rings at its time
    assert not later.event.is_set()
    assert later.event.wait(5.0)
    assert time.time() >= now + 0.4
    chime.leave(later)


def test_a_herd_of_threads_is_woken_whole_and_the_thread_then_ends(chime: Chime) -> None:
    at = time.time() + 0.3
    woke: list[float] = []
    lock = threading.Lock()

    def shard() -> None:
        event = threading.Event()
        place = chime.join(at, event)
        try:
            event.wait(at - time.time() + SLACK)
        finally:
            chime.leave(place)
        with lock:
            woke.append(time.time())

    threads = [threading.Thread(target=shard) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert len(woke) == 200
    assert min(woke) >= at
    assert chime.stragglers == 0  # every one was rung by the peal, none by its own timeout
    assert chime.pending == 0
    wait_until(lambda: chime._thread is None, 5.0, what="the chime's thread to end")


def test_a_place_the_peal_does_not_reach_in_time_wakes_on_its_own(chime: Chime) -> None:
    at = time.time() + 0.1
    stuck = chime.join(at, threading.Event())
    assert stuck.event.wait(5.0)  # rung, but its thread never passes the peal on
    waiting = chime.join(at, threading.Event())
    assert not waiting.event.wait(at - time.time() + SLACK)  # its own timeout
    chime.leave(waiting)
    assert chime.stragglers == 1 and not waiting.rung
    chime.leave(stuck)  # nothing left to ring
    assert chime.pending == 0


def test_a_place_following_a_run_is_rung_once_every_place_of_the_instant_was(
    chime: Chime,
) -> None:
    at = time.time() + 0.1
    places = [chime.join(at, threading.Event()) for _ in range(2)]
    wait_until(lambda: len(rung(places)) == 1, 5.0, what="the first ring")
    (first,) = rung(places)
    (second,) = [place for place in places if place is not first]
    after_run = chime.follow(first, threading.Event())  # its run is over: it waits its turn
    assert after_run is not None and not after_run.event.is_set()
    stopped = chime.follow(first, threading.Event())  # another, stopped while it waits
    assert stopped is not None
    chime.leave(stopped)
    chime.leave(first)
    assert second.event.is_set() and not after_run.event.is_set()  # the instant's places first
    chime.leave(second)
    assert after_run.event.is_set() and after_run.rung
    chime.leave(after_run)
    assert chime.pending == 0
    assert not stopped.event.is_set() and not stopped.rung  # it left: never rung
    assert chime.follow(after_run, threading.Event()) is None  # the peal is over: no wait
    assert chime.stragglers == 0
