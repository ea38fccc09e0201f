"""Retry policies, and the loop that runs one step of a run with retries.

A :class:`RetryPolicy` answers one question: after the ``attempt``-th failure of a step, how
long to wait before trying again — or :data:`RETRY_DONE` to give up. :class:`DefaultRetryPolicy`
is the seed's exponential backoff (1, 2, 4, 8, 10, 10, ... seconds by default, unlimited
attempts), computed with tenacity's ``wait_exponential`` so very high attempt numbers cannot
overflow. Any object with a ``compute_next_delay(attempt)`` method is a policy too.

Attempts count per step per run. A step that raises :class:`~goworker_py.errors.TryAgain` is
re-run at once without counting an attempt. Errors whose type is listed in
``non_retryable_error_types`` end the step at the first occurrence (Temporal's rule). Waits
between attempts are interruptible: a cancelled run stops retrying at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from goworker_py.errors import ConfigError, RunCancelled, TryAgain

#: Returned by ``compute_next_delay`` to stop retrying (the seed's ``RetryDone``).
RETRY_DONE = -1.0

_DEFAULT_INITIAL_INTERVAL = 1.0
_DEFAULT_BACKOFF_COEFFICIENT = 2.0
_DEFAULT_MAXIMUM_INTERVAL_COEFFICIENT = 10.0


@runtime_checkable
class RetryPolicy(Protocol):
    """Decides the delay before the next attempt of a failed step."""

    def compute_next_delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based), or :data:`RETRY_DONE`."""


class DefaultRetryPolicy:
    """Exponential backoff with the seed's defaults, plus non-retryable error types.

    The delay after the ``n``-th failure is ``initial_interval * backoff_coefficient ** (n - 1)``,
    capped at ``maximum_interval`` (default ten times the initial interval). With
    ``maximum_attempts = M > 0`` a step is retried ``M`` times (``M + 1`` attempts in all);
    ``0`` means unlimited. The setters return the policy, so calls chain::

        policy = get_default_retry_policy().set_initial_interval(2).set_maximum_attempts(3)
    """

    def __init__(
        self,
        initial_interval: float = _DEFAULT_INITIAL_INTERVAL,
        backoff_coefficient: float = _DEFAULT_BACKOFF_COEFFICIENT,
        maximum_interval: float | None = None,
        maximum_attempts: int = 0,
        non_retryable_error_types: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._initial_interval = _DEFAULT_INITIAL_INTERVAL
        self._backoff_coefficient = _DEFAULT_BACKOFF_COEFFICIENT
        self._maximum_interval = _DEFAULT_INITIAL_INTERVAL * _DEFAULT_MAXIMUM_INTERVAL_COEFFICIENT
        self._maximum_attempts = 0
        self.non_retryable_error_types: tuple[type[BaseException], ...] = ()
        self.set_initial_interval(initial_interval)
        self.set_backoff_coefficient(backoff_coefficient)
        if maximum_interval is not None:
            self.set_maximum_interval(maximum_interval)
        self.set_maximum_attempts(maximum_attempts)
        self.set_non_retryable_error_types(*non_retryable_error_types)

    @property
    def initial_interval(self) -> float:
        """Seconds before the first retry."""
        return self._initial_interval

    @property
    def backoff_coefficient(self) -> float:
        """Factor by which each delay grows (at least 1)."""
        return self._backoff_coefficient

    @property
    def maximum_interval(self) -> float:
        """Upper bound of a delay, in seconds."""
        return self._maximum_interval

    @property
    def maximum_attempts(self) -> int:
        """Retries allowed per step; 0 means unlimited."""
        return self._maximum_attempts

    def set_initial_interval(self, seconds: float) -> DefaultRetryPolicy:
        """Set the first delay; like the seed, this resets the maximum to ten times it."""
        _check_number("initial_interval", seconds, minimum=0.0, strict=True)
        self._initial_interval = float(seconds)
        self._maximum_interval = self._initial_interval * _DEFAULT_MAXIMUM_INTERVAL_COEFFICIENT
        return self

    def set_backoff_coefficient(self, coefficient: float) -> DefaultRetryPolicy:
        """Set the growth factor of the delays (``1`` gives a constant delay)."""
        _check_number("backoff_coefficient", coefficient, minimum=1.0)
        self._backoff_coefficient = float(coefficient)
        return self

    def set_maximum_interval(self, seconds: float) -> DefaultRetryPolicy:
        """Cap every delay at ``seconds`` (not below the initial interval)."""
        _check_number("maximum_interval", seconds, minimum=self._initial_interval)
        self._maximum_interval = float(seconds)
        return self

    def set_maximum_attempts(self, attempts: int) -> DefaultRetryPolicy:
        """Allow ``attempts`` retries per step; ``0`` means unlimited."""
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ConfigError(
                f"maximum_attempts must be an int >= 0 (0 = unlimited), got {attempts!r}"
            )
        self._maximum_attempts = attempts
        return self

    def set_non_retryable_error_types(self, *types: type[BaseException]) -> DefaultRetryPolicy:
        """Errors of these types (or subclasses) end the step at once, without retries."""
        for kind in types:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigError(
                    f"non_retryable_error_types must be exception classes, got {kind!r}"
                )
        self.non_retryable_error_types = tuple(types)
        return self

    def compute_next_delay(self, attempt: int) -> float:
        if self._maximum_attempts and attempt > self._maximum_attempts:
            return RETRY_DONE
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = max(attempt, 1)
        backoff = wait_exponential(
            multiplier=self._initial_interval,
            exp_base=self._backoff_coefficient,
            max=self._maximum_interval,
        )
        return float(backoff(state))

    def __repr__(self) -> str:
        return (
            f"DefaultRetryPolicy(initial_interval={self._initial_interval}, "
            f"backoff_coefficient={self._backoff_coefficient}, "
            f"maximum_interval={self._maximum_interval}, maximum_attempts={self._maximum_attempts})"
        )


def get_default_retry_policy() -> DefaultRetryPolicy:
    """A new :class:`DefaultRetryPolicy` with the defaults (the seed's GetDefaultRetryPolicy)."""
    return DefaultRetryPolicy()


def _check_number(name: str, value: float, minimum: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def validate_retry_policy(policy: object) -> RetryPolicy:
    """Return ``policy`` if it has a callable ``compute_next_delay``, else raise ``ConfigError``."""
    if not callable(getattr(policy, "compute_next_delay", None)):
        raise ConfigError(
            f"retry_policy must have a compute_next_delay(attempt) method, got {policy!r}"
        )
    return policy  # type: ignore[return-value]


# -- running one step ---------------------------------------------------------------------------


@dataclass
class StepResult:
    """How one step of a run ended."""

    ok: bool
    attempts: int = 1
    error: BaseException | None = None
    #: Why the step gave up: "retry policy gave up", "non-retryable error", "cancelled",
    #: or "retry policy raised <error>" for a policy that failed or returned a non-number.
    reason: str = ""


class _Interrupted(Exception):
    """Leaves the tenacity loop when the run is cancelled during a retry wait."""


class StepRetrier:
    """Runs one step with the worker's retry policy; one instance serves one step of one run.

    ``call`` runs the step (the handler method bound to the run's context), ``report`` receives
    every error in order (the handler's ``error_message``), ``set_attempt`` tells the context
    the current attempt number, ``cancelled`` says whether the run was cancelled and ``sleep``
    waits interruptibly (returning True if cancelled meanwhile).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        call: Callable[[], object],
        report: Callable[[BaseException], None],
        set_attempt: Callable[[int], None],
        cancelled: Callable[[], bool],
        sleep: Callable[[float], bool],
    ) -> None:
        self._policy = policy
        self._call = call
        self._report = report
        self._set_attempt = set_attempt
        self._cancelled = cancelled
        self._sleep = sleep
        self._non_retryable: tuple[type[BaseException], ...] = tuple(
            getattr(policy, "non_retryable_error_types", ())
        )
        self.failures = 0
        self.last_error: BaseException | None = None
        self._delay = 0.0
        self._give_up = ""

    def run(self) -> StepResult:
        """Run the step until it succeeds, the policy gives up, or the run is cancelled."""
        # Fast path: most steps succeed at the first attempt, and tenacity costs ~10 µs a call.
        self._set_attempt(1)
        try:
            self._call()
            return StepResult(ok=True)
        except RunCancelled:
            return self._cancelled_result()
        except Exception as exc:  # noqa: BLE001 - every handler error is reported, none escapes
            return self.continue_after(exc)

    def continue_after(self, first_error: Exception) -> StepResult:
        """Carry on after the first attempt failed with ``first_error`` (made by the caller)."""
        if not self._on_failure(first_error):
            return self._failed()
        if self._delay > 0 and self._sleep(self._delay):
            return self._cancelled_result()
        return self._retry_with_tenacity()

    def _retry_with_tenacity(self) -> StepResult:
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, Exception)),
            after=self._after_attempt,
            wait=lambda _state: self._delay,
            stop=lambda _state: bool(self._give_up),
            sleep=self._interruptible_sleep,
            reraise=False,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._set_attempt(self.failures + 1)
                    self._call()
        except _Interrupted:
            return self._cancelled_result()
        except RunCancelled:
            return self._cancelled_result()
        except Exception:  # noqa: BLE001 - tenacity's RetryError once we decided to give up
            return self._failed()
        return StepResult(ok=True, attempts=self.failures + 1)

    def _after_attempt(self, state: RetryCallState) -> None:
        assert state.outcome is not None
        exc = state.outcome.exception()
        if exc is not None and not self._on_failure(exc):
            self._give_up = self._give_up or "retry policy gave up"

    def _interruptible_sleep(self, seconds: float) -> None:
        if (seconds > 0 and self._sleep(seconds)) or self._cancelled():
            raise _Interrupted

    def _on_failure(self, exc: BaseException) -> bool:
        """Record one failed attempt; return whether to try again (and set the delay)."""
        if isinstance(exc, TryAgain):
            self._delay = 0.0
            if self._cancelled():
                self._give_up = "cancelled"
                return False
            return True
        self.failures += 1
        self.last_error = exc
        self._report(exc)
        if self._cancelled():
            self._give_up = "cancelled"
            return False
        if self._non_retryable and isinstance(exc, self._non_retryable):
            self._give_up = "non-retryable error"
            return False
        try:
            delay = self._policy.compute_next_delay(self.failures)
            give_up = delay is None or delay < 0
            if not give_up:
                self._delay = float(delay)
        except Exception as exc:  # noqa: BLE001 - a broken policy ends the step, not the thread
            self._give_up = f"retry policy raised {exc!r}"
            return False
        if give_up:
            self._give_up = "retry policy gave up"
            return False
        return True

    def _failed(self) -> StepResult:
        if self._give_up == "cancelled":
            return self._cancelled_result()
        return StepResult(
            ok=False,
            attempts=max(self.failures, 1),
            error=self.last_error,
            reason=self._give_up or "retry policy gave up",
        )

    def _cancelled_result(self) -> StepResult:
        return StepResult(
            ok=False, attempts=max(self.failures, 1), error=self.last_error, reason="cancelled"
        )
