"""The chime: the places waiting for one instant are rung one after the other, never lost.

The first place of a peal leads it: it sleeps until the instant on its own timer and begins the
peal; the chime's own thread times an instant only when its leader left before it.
"""

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


def pass_along(chime: Chime, places: list[Place]) -> list[Place]:
    """Leave each place as the peal reaches it (one at a time); the order they were rung in."""
    order: list[Place] = []
    for count in range(1, len(places) + 1):
        wait_until(
            lambda count=count: len(rung(places)) == count, 5.0, what=f"{count} place(s) rung"
        )
        # Only the place just rung is set: the next one waits until it passes the peal on.
        (just_rung,) = [place for place in rung(places) if place not in order]
        assert just_rung.rung
        order.append(just_rung)
        chime.leave(just_rung)
    return order


def test_the_leader_begins_the_peal_at_its_instant_and_each_place_passes_it_on(
    chime: Chime,
) -> None:
    at = time.time() + 0.2
    leader = chime.join(at, threading.Event())
    others = [chime.join(at, threading.Event()) for _ in range(3)]
    assert leader.leads and not any(place.leads for place in others)
    assert chime.pending == 4
    assert chime.sleep(leader)  # on its own timer: the peal began with it
    assert time.time() >= at  # never before the instant
    assert leader.rung and not leader.event.is_set()
    order = pass_along(chime, others)
    assert sorted(map(id, order)) == sorted(map(id, others))
    assert chime.pending == 0
    assert chime.stragglers == 0
    assert chime._thread is None  # the leader timed the instant: no thread was needed


def test_a_place_left_before_its_turn_is_skipped(chime: Chime) -> None:
    at = time.time() + 0.2
    leader = chime.join(at, threading.Event())
    first, gone, last = (chime.join(at, threading.Event()) for _ in range(3))
    chime.leave(gone)  # woken by something else (a stop) before the instant
    assert chime.pending == 3
    assert chime.sleep(leader)
    pass_along(chime, [first, last])
    assert not gone.event.is_set() and not gone.rung
    assert chime.pending == 0


def test_a_leader_stopped_before_its_instant_hands_it_to_the_chimes_thread(
    chime: Chime,
) -> None:
    at = time.time() + 0.3
    leader = chime.join(at, threading.Event())
    others = [chime.join(at, threading.Event()) for _ in range(2)]
    leader.event.set()  # a stop or a trigger wakes it
    assert not chime.sleep(leader)  # it leaves: not rung, the peal not begun
    assert not leader.rung and chime.pending == 2
    assert chime._thread is not None
    assert not rung(others)
    pass_along(chime, others)
    assert time.time() >= at
    assert chime.pending == 0 and chime.stragglers == 0
    wait_until(lambda: chime._thread is None, 5.0, what="the chime's thread to end")


def test_a_lone_leader_stopped_early_ends_its_peal(chime: Chime) -> None:
    at = time.time() + 0.3
    leader = chime.join(at, threading.Event())
    leader.event.set()
    assert not chime.sleep(leader)
    assert chime.pending == 0 and chime._thread is None
    again = chime.join(at, threading.Event())  # the shard goes back to sleep: it leads anew
    assert again.leads
    assert chime.sleep(again) and time.time() >= at
    assert chime.pending == 0


def test_a_leader_woken_before_its_instant_by_a_trailing_wall_clock_sleeps_on(
    chime: Chime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timeouts run on the monotonic clock: a slewed wall clock can still be short of the
    instant when the leader's timer ends. The leader sleeps again; it never hands over."""
    lags = iter([0.0, 0.1])  # the first timeout, then 100 ms short on waking

    class Trailing:
        @staticmethod
        def time() -> float:
            return time.time() - next(lags, 0.0)

    at = time.time() + 0.2
    leader = chime.join(at, threading.Event())
    follower = chime.join(at, threading.Event())
    monkeypatch.setattr(chime_module, "time", Trailing)
    assert chime.sleep(leader)
    assert time.time() >= at
    assert chime._thread is None  # it slept on instead of handing the instant over
    pass_along(chime, [follower])


def test_an_instant_already_past_rings_at_once(chime: Chime) -> None:
    place = chime.join(time.time() - 1.0, threading.Event())
    assert place.leads
    started = time.monotonic()
    assert chime.sleep(place)
    assert time.monotonic() - started < 1.0
    assert chime.pending == 0


def test_a_place_joined_while_its_peal_rings_is_rung_in_it(chime: Chime) -> None:
    at = time.time() + 0.1
    leader = chime.join(at, threading.Event())
    waiting = chime.join(at, threading.Event())
    assert chime.sleep(leader)
    assert waiting.event.is_set()
    late = chime.join(at, threading.Event())  # the peal is under way: it reaches this place
    assert not late.leads and not late.event.is_set()
    chime.leave(waiting)
    assert late.event.is_set() and late.rung
    chime.leave(late)
    assert chime.pending == 0


def test_a_place_joined_after_its_peal_ended_starts_another(chime: Chime) -> None:
    at = time.time() + 0.1
    first = chime.join(at, threading.Event())
    assert chime.sleep(first)  # alone: the peal is over once it began
    again = chime.join(at, threading.Event())
    assert again.leads
    assert chime.sleep(again)
    assert chime.pending == 0


def test_instants_handed_to_the_chimes_thread_ring_in_time_order(chime: Chime) -> None:
    now = time.time()
    peals = []
    for at in (now + 0.4, now + 0.2):
        leader = chime.join(at, threading.Event())
        peals.append(chime.join(at, threading.Event()))
        leader.event.set()
        assert not chime.sleep(leader)  # handed over
    later, sooner = peals
    assert sooner.event.wait(5.0)
    assert not later.event.is_set()
    assert time.time() >= now + 0.2
    chime.leave(sooner)  # ends its own peal only: the later instant rings at its time
    assert not later.event.is_set()
    assert later.event.wait(5.0)
    assert time.time() >= now + 0.4
    chime.leave(later)
    assert chime.pending == 0


def test_a_herd_of_threads_is_woken_whole_with_no_thread_of_the_chimes(chime: Chime) -> None:
    at = time.time() + 0.3
    woke: list[float] = []
    began: list[bool] = []
    lock = threading.Lock()

    def shard() -> None:
        place = chime.join(at, threading.Event())
        was_rung = chime.sleep(place)
        with lock:
            woke.append(time.time())
            began.append(was_rung)

    threads = [threading.Thread(target=shard) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert len(woke) == 200
    assert min(woke) >= at
    assert all(began)  # every one was rung by the peal (the leader began it)
    assert chime.stragglers == 0  # none woke on its own timeout
    assert chime.pending == 0
    assert chime._thread is None


def test_a_place_the_peal_does_not_reach_in_time_wakes_on_its_own(chime: Chime) -> None:
    at = time.time() + 0.1
    leader = chime.join(at, threading.Event())
    stuck = chime.join(at, threading.Event())
    assert chime.sleep(leader)
    assert stuck.event.is_set()  # rung, but its thread never passes the peal on
    waiting = chime.join(at, threading.Event())
    started = time.monotonic()
    assert not chime.sleep(waiting)  # its own timeout
    assert time.monotonic() - started >= SLACK - 0.15
    assert chime.stragglers == 1 and not waiting.rung
    chime.leave(stuck)  # nothing left to ring
    assert chime.pending == 0


def follow_in_thread(chime: Chime, place: Place) -> threading.Event:
    """Call ``chime.follow(place)`` on a thread of its own; the event is set when it returns."""
    done = threading.Event()

    def after_run() -> None:
        chime.follow(place)
        done.set()

    threading.Thread(target=after_run, daemon=True).start()
    return done


def test_a_shard_after_its_run_waits_until_every_place_of_its_instant_was_rung(
    chime: Chime,
) -> None:
    at = time.time() + 0.1
    leader = chime.join(at, threading.Event())
    second, third = (chime.join(at, threading.Event()) for _ in range(2))
    assert chime.sleep(leader)
    (first,) = rung([second, third])
    (other,) = [place for place in (second, third) if place is not first]
    leader_followed = follow_in_thread(chime, leader)  # its run is over: it waits its turn
    wait_until(lambda: chime.pending == 2, 5.0, what="the leader at the peal's end")
    chime.leave(first)
    assert other.event.is_set()
    first.event.clear()  # a shard's thread clears its event before its run
    first_followed = follow_in_thread(chime, first)
    wait_until(lambda: chime.pending == 2, 5.0, what="the first shard at the peal's end")
    first.event.set()  # stopped while it waits at the end: it leaves
    assert first_followed.wait(5.0) and not first.rung
    assert not leader_followed.wait(0.1)  # the instant's places first
    chime.leave(other)
    assert leader_followed.wait(5.0)
    assert leader.rung and leader.event.is_set()
    assert chime.pending == 0
    started = time.monotonic()
    chime.follow(other)  # the peal is over: no wait
    assert time.monotonic() - started < 0.5
    assert chime.stragglers == 0


def test_a_leader_leaving_early_hands_over_a_peal_with_only_shards_at_its_end(
    chime: Chime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall clock stepped back can bring a shard that ran an instant back to the end of a
    new peal of that same instant: it is rung there, not left to its own timeout."""
    at = time.time() + 0.3

    class Ahead:
        @staticmethod
        def time() -> float:
            return time.time() + 0.5

    ran = chime.join(at, threading.Event())
    monkeypatch.setattr(chime_module, "time", Ahead)
    assert chime.sleep(ran)  # the clock read past the instant: it ran, alone
    monkeypatch.undo()  # ... and stepped back
    leader = chime.join(at, threading.Event())
    assert leader.leads
    followed = follow_in_thread(chime, ran)  # back from its run: at the new peal's end
    wait_until(lambda: chime.pending == 2, 5.0, what="the shard at the new peal's end")
    leader.event.set()  # stopped before the instant
    assert not chime.sleep(leader)
    assert followed.wait(5.0)
    assert ran.rung and time.time() >= at
    assert chime.stragglers == 0 and chime.pending == 0
