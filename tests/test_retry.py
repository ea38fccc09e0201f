"""Retry policies and the step retrier, with an injected sleep: no real waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from goworker_py.clock import FakeClock
from goworker_py.errors import ConfigError, RunCancelled, TryAgain
from goworker_py.retry import (
    RETRY_DONE,
    DefaultRetryPolicy,
    RetryPolicy,
    StepResult,
    StepRetrier,
    get_default_retry_policy,
    validate_retry_policy,
)

pytestmark = pytest.mark.timeout(30)


# -- DefaultRetryPolicy ---------------------------------------------------------------------------


def delays(policy: RetryPolicy, attempts: Iterable[int]) -> list[float]:
    return [policy.compute_next_delay(n) for n in attempts]


def test_default_policy_has_the_seeds_defaults() -> None:
    policy = get_default_retry_policy()
    assert policy.initial_interval == 1.0
    assert policy.backoff_coefficient == 2.0
    assert policy.maximum_interval == 10.0
    assert policy.maximum_attempts == 0
    assert policy.non_retryable_error_types == ()
    assert delays(policy, range(1, 9)) == [1, 2, 4, 8, 10, 10, 10, 10]


def test_get_default_retry_policy_returns_a_new_policy_each_time() -> None:
    first = get_default_retry_policy()
    first.set_maximum_attempts(3)
    assert get_default_retry_policy().maximum_attempts == 0
    assert first is not get_default_retry_policy()


def test_unlimited_attempts_never_give_up_and_never_overflow() -> None:
    policy = DefaultRetryPolicy()
    # The seed overflowed after 35 attempts (1 << n); here the cap holds for any attempt.
    assert delays(policy, [35, 36, 64, 1024, 10**6, 10**18]) == [10.0] * 6
    huge = DefaultRetryPolicy(initial_interval=0.001, backoff_coefficient=1000.0)
    assert huge.compute_next_delay(10**6) == pytest.approx(0.01)


@pytest.mark.parametrize("maximum_attempts", [1, 2, 3, 7])
def test_maximum_attempts_allows_exactly_that_many_retries(maximum_attempts: int) -> None:
    policy = DefaultRetryPolicy(maximum_attempts=maximum_attempts)
    for attempt in range(1, maximum_attempts + 1):
        assert policy.compute_next_delay(attempt) > 0
    assert policy.compute_next_delay(maximum_attempts + 1) == RETRY_DONE
    assert policy.compute_next_delay(maximum_attempts + 100) == RETRY_DONE


def test_custom_intervals_and_coefficient() -> None:
    policy = DefaultRetryPolicy(initial_interval=0.5, backoff_coefficient=3, maximum_interval=20)
    assert delays(policy, range(1, 7)) == [0.5, 1.5, 4.5, 13.5, 20.0, 20.0]
    constant = DefaultRetryPolicy(backoff_coefficient=1)
    assert delays(constant, range(1, 5)) == [1.0, 1.0, 1.0, 1.0]


def test_set_initial_interval_resets_the_maximum_to_ten_times_it() -> None:
    policy = DefaultRetryPolicy().set_maximum_interval(100).set_initial_interval(2)
    assert policy.maximum_interval == 20.0
    assert delays(policy, range(1, 7)) == [2, 4, 8, 16, 20, 20]
    # Setting the maximum after the initial interval keeps it.
    policy.set_maximum_interval(5)
    assert delays(policy, range(1, 4)) == [2, 4, 5]


def test_setters_chain_and_return_the_policy() -> None:
    policy = DefaultRetryPolicy()
    same = (
        policy.set_initial_interval(2)
        .set_backoff_coefficient(3)
        .set_maximum_interval(30)
        .set_maximum_attempts(4)
        .set_non_retryable_error_types(KeyError, PermissionError)
    )
    assert same is policy
    assert (policy.initial_interval, policy.backoff_coefficient) == (2.0, 3.0)
    assert (policy.maximum_interval, policy.maximum_attempts) == (30.0, 4)
    assert policy.non_retryable_error_types == (KeyError, PermissionError)
    assert "maximum_attempts=4" in repr(policy)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("initial_interval", 0),
        ("initial_interval", -1),
        ("initial_interval", float("nan")),
        ("initial_interval", float("inf")),
        ("initial_interval", "1"),
        ("initial_interval", True),
        ("backoff_coefficient", 0.5),
        ("backoff_coefficient", float("inf")),
        ("maximum_interval", 0.5),
        ("maximum_interval", -3),
        ("maximum_attempts", -1),
        ("maximum_attempts", 1.5),
        ("maximum_attempts", True),
        ("maximum_attempts", "3"),
        ("non_retryable_error_types", (ValueError, "x")),
        ("non_retryable_error_types", (int,)),
    ],
)
def test_bad_policy_values_are_config_errors_naming_the_setting(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=setting):
        DefaultRetryPolicy(**{setting: value})
    # The chainable setter rejects it the same way.
    setter = getattr(DefaultRetryPolicy(), f"set_{setting}")
    arguments = value if setting == "non_retryable_error_types" else (value,)
    with pytest.raises(ConfigError, match=setting):
        setter(*arguments)


def test_a_failed_setter_leaves_the_policy_unchanged() -> None:
    policy = DefaultRetryPolicy(initial_interval=2)
    with pytest.raises(ConfigError):
        policy.set_initial_interval(-1)
    assert (policy.initial_interval, policy.maximum_interval) == (2.0, 20.0)


def test_validate_retry_policy() -> None:
    policy = DefaultRetryPolicy()
    assert validate_retry_policy(policy) is policy
    assert isinstance(policy, RetryPolicy)

    class Custom:
        def compute_next_delay(self, attempt: int) -> float:
            return 1.0

    custom = Custom()
    assert validate_retry_policy(custom) is custom

    class NotCallable:
        compute_next_delay = 3

    for bad in (None, object(), "policy", NotCallable()):
        with pytest.raises(ConfigError, match="compute_next_delay"):
            validate_retry_policy(bad)


# -- StepRetrier ----------------------------------------------------------------------------------


class Boom(Exception):
    """A failing step's error."""


@dataclass
class Harness:
    """Drives a StepRetrier with a scripted step and records everything it does."""

    outcomes: list[BaseException | None]
    policy: RetryPolicy = field(default_factory=DefaultRetryPolicy)
    cancel_on_sleep: int | None = None  # the n-th sleep (1-based) reports cancellation
    calls: int = 0
    reported: list[BaseException] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)
    clock: FakeClock = field(default_factory=FakeClock)

    def call(self) -> None:
        self.calls += 1
        outcome = self.outcomes[min(self.calls, len(self.outcomes)) - 1]
        if outcome is not None:
            raise outcome

    def sleep(self, seconds: float) -> bool:
        self.sleeps.append(seconds)
        if self.cancel_on_sleep is not None and len(self.sleeps) >= self.cancel_on_sleep:
            self.event.set()
        return self.clock.wait(self.event, seconds)

    def run(self) -> StepResult:
        retrier = StepRetrier(
            policy=self.policy,
            call=self.call,
            report=self.reported.append,
            set_attempt=self.attempts.append,
            cancelled=self.event.is_set,
            sleep=self.sleep,
        )
        return retrier.run()


def test_success_at_the_first_attempt() -> None:
    harness = Harness([None])
    result = harness.run()
    assert result == StepResult(ok=True, attempts=1, error=None, reason="")
    assert harness.calls == 1
    assert harness.reported == [] and harness.sleeps == []
    assert harness.attempts == [1]


def test_fail_twice_then_succeed() -> None:
    first, second = Boom("one"), Boom("two")
    harness = Harness([first, second, None])
    result = harness.run()
    assert result.ok and result.attempts == 3
    assert harness.calls == 3
    assert harness.reported == [first, second]
    assert harness.reported[0] is first and harness.reported[1] is second
    assert harness.sleeps == [1.0, 2.0]
    assert harness.attempts == [1, 2, 3]
    assert harness.clock.monotonic() == 3.0  # the fake clock advanced; nobody really waited


def test_seed_style_custom_policy_gives_up_after_five_calls() -> None:
    class SeedPolicy:
        def compute_next_delay(self, attempt: int) -> float:
            return 2.0 if attempt < 5 else RETRY_DONE

    errors: list[BaseException | None] = [Boom(f"#{n}") for n in range(1, 10)]
    harness = Harness(errors, policy=SeedPolicy())
    result = harness.run()
    assert not result.ok
    assert result.reason == "retry policy gave up"
    assert result.attempts == 5
    assert harness.calls == 5
    assert harness.sleeps == [2.0] * 4
    assert harness.reported == errors[:5]
    assert result.error is errors[4]
    assert harness.attempts == [1, 2, 3, 4, 5]


def test_maximum_attempts_m_gives_m_retries() -> None:
    harness = Harness([Boom()], policy=DefaultRetryPolicy(maximum_attempts=3))
    result = harness.run()
    assert not result.ok and result.reason == "retry policy gave up"
    assert harness.calls == 4
    assert result.attempts == 4
    assert harness.sleeps == [1.0, 2.0, 4.0]
    assert len(harness.reported) == 4


def test_policy_returning_none_gives_up() -> None:
    class NonePolicy:
        def compute_next_delay(self, attempt: int) -> float | None:
            return None

    harness = Harness([Boom()], policy=NonePolicy())  # type: ignore[arg-type]
    result = harness.run()
    assert (result.ok, result.reason, harness.calls, harness.sleeps) == (
        False,
        "retry policy gave up",
        1,
        [],
    )


def test_zero_delay_retries_without_sleeping() -> None:
    class Immediate:
        def compute_next_delay(self, attempt: int) -> float:
            return 0.0 if attempt < 3 else RETRY_DONE

    harness = Harness([Boom()], policy=Immediate())
    result = harness.run()
    assert not result.ok and harness.calls == 3
    assert harness.sleeps == []


def test_try_again_reruns_without_counting_an_attempt_or_reporting() -> None:
    boom = Boom("real")
    harness = Harness([TryAgain(), TryAgain(), boom, TryAgain(), None])
    result = harness.run()
    assert result.ok
    assert harness.calls == 5
    assert harness.reported == [boom]  # TryAgain is never reported
    assert harness.sleeps == [1.0]  # only the real failure waits
    assert result.attempts == 2
    assert harness.attempts == [1, 1, 1, 2, 2]


def test_try_again_is_not_limited_by_maximum_attempts() -> None:
    harness = Harness([TryAgain()] * 50 + [None], policy=DefaultRetryPolicy(maximum_attempts=1))
    result = harness.run()
    assert result.ok and harness.calls == 51
    assert harness.reported == [] and harness.sleeps == []
    assert set(harness.attempts) == {1}


def test_try_again_stops_once_cancelled() -> None:
    harness = Harness([TryAgain()])

    def call() -> None:
        harness.calls += 1
        if harness.calls == 3:
            harness.event.set()
        raise TryAgain()

    harness.call = call  # type: ignore[method-assign]
    result = harness.run()
    assert result.reason == "cancelled" and not result.ok
    assert harness.calls == 3


def test_non_retryable_error_ends_the_step_at_once() -> None:
    policy = DefaultRetryPolicy().set_non_retryable_error_types(PermissionError)
    denied = PermissionError("no")
    harness = Harness([denied, None], policy=policy)
    result = harness.run()
    assert not result.ok
    assert result.reason == "non-retryable error"
    assert result.error is denied
    assert harness.calls == 1
    assert harness.reported == [denied]
    assert harness.sleeps == []


def test_non_retryable_subclass_after_retryable_failures() -> None:
    class Fatal(KeyError):
        pass

    policy = DefaultRetryPolicy(non_retryable_error_types=(KeyError,))
    harness = Harness([Boom(), Boom(), Fatal("gone"), None], policy=policy)
    result = harness.run()
    assert (result.ok, result.reason, harness.calls) == (False, "non-retryable error", 3)
    assert harness.sleeps == [1.0, 2.0]
    assert isinstance(result.error, Fatal)


def test_cancellation_during_the_first_sleep() -> None:
    boom = Boom()
    harness = Harness([boom, None], cancel_on_sleep=1)
    result = harness.run()
    assert result.reason == "cancelled" and not result.ok
    assert harness.calls == 1  # no further call after the cancelled wait
    assert harness.sleeps == [1.0]
    assert result.error is boom
    assert result.attempts == 1


def test_cancellation_during_a_later_sleep() -> None:
    harness = Harness([Boom(), Boom(), Boom(), None], cancel_on_sleep=3)
    result = harness.run()
    assert result.reason == "cancelled"
    assert harness.calls == 3
    assert harness.sleeps == [1.0, 2.0, 4.0]
    assert len(harness.reported) == 3


def test_cancelled_while_the_step_ran_does_not_retry() -> None:
    harness = Harness([Boom()])

    def call() -> None:
        harness.calls += 1
        harness.event.set()
        raise Boom("failed while the run was being cancelled")

    harness.call = call  # type: ignore[method-assign]
    result = harness.run()
    assert result.reason == "cancelled"
    assert harness.calls == 1
    assert len(harness.reported) == 1  # the error is still reported
    assert harness.sleeps == []


@pytest.mark.parametrize("failures_before", [0, 1, 4])
def test_run_cancelled_raised_by_the_step(failures_before: int) -> None:
    outcomes: list[BaseException | None] = [Boom() for _ in range(failures_before)]
    outcomes += [RunCancelled("stop"), None]
    harness = Harness(outcomes)
    result = harness.run()
    assert not result.ok and result.reason == "cancelled"
    assert harness.calls == failures_before + 1
    assert len(harness.reported) == failures_before  # RunCancelled itself is not an error


def test_unlimited_attempts_go_far_past_thirty_five() -> None:
    harness = Harness([Boom()] * 100 + [None])
    result = harness.run()
    assert result.ok
    assert harness.calls == 101 and result.attempts == 101
    assert len(harness.reported) == 100
    assert harness.sleeps == [1.0, 2.0, 4.0, 8.0] + [10.0] * 96
    assert harness.attempts == list(range(1, 102))


def test_keyboard_interrupt_is_not_swallowed() -> None:
    harness = Harness([Boom(), KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        harness.run()
    assert harness.calls == 2


def test_a_retrier_with_the_default_policy_reports_every_error_in_order() -> None:
    errors: list[BaseException | None] = [Boom(str(n)) for n in range(6)]
    harness = Harness([*errors, None])
    result = harness.run()
    assert result.ok and harness.reported == errors[:6]
    assert harness.sleeps == [1, 2, 4, 8, 10, 10]


class BrokenPolicy:
    """Raises (or returns a non-number) from the ``broken_from``-th failure on."""

    def __init__(self, broken_from: int, result: object = None) -> None:
        self.broken_from = broken_from
        self.result = result

    def compute_next_delay(self, attempt: int) -> float:
        if attempt < self.broken_from:
            return 1.0
        if self.result is not None:
            return self.result  # type: ignore[return-value]
        raise ZeroDivisionError("bug in the policy")


@pytest.mark.parametrize("broken_from", [1, 3])  # the first failure, and a later one
@pytest.mark.parametrize("result", [None, "2"], ids=["raises", "returns-a-string"])
def test_a_broken_policy_ends_the_step_the_same_way_at_any_attempt(
    broken_from: int, result: object
) -> None:
    errors: list[BaseException | None] = [Boom(str(n)) for n in range(10)]
    harness = Harness(errors, policy=BrokenPolicy(broken_from, result))
    outcome = harness.run()  # must not raise: that would kill the shard's thread
    assert not outcome.ok
    assert outcome.reason.startswith("retry policy raised ")
    assert harness.calls == broken_from
    assert outcome.error is errors[broken_from - 1]
    assert harness.reported == errors[:broken_from]
