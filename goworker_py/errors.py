"""The exception tree of goworker-py.

Everything the library raises derives from :class:`GoWorkerError`, so ``except GoWorkerError``
catches all of it. Bad input is a :class:`ConfigError` (raised at construction or at
``Worker.run()``, before any thread starts); a run-once worker whose run gave up makes
``Worker.wait()`` raise :class:`RunFailed`; each step that exhausts its retries reports one
:class:`AttemptsExhausted` to the handler's ``error_message``.
"""

from __future__ import annotations


class GoWorkerError(Exception):
    """Root of every exception goworker-py raises."""


# -- bad input ------------------------------------------------------------------------------------


class ConfigError(GoWorkerError, ValueError):
    """Invalid configuration or argument; the message says what to fix."""


class InvalidScheduleError(ConfigError):
    """A schedule expression that cannot be parsed, or that can never fire."""


class InvalidHandlerError(ConfigError):
    """Something passed as a handler that is not one (no callable ``do``)."""


class HandlerImportError(InvalidHandlerError):
    """The module named as ``module:Handler`` raised while being imported.

    A syntax error or any exception at the handler module's import time: the message names the
    module and the error; ``__cause__`` carries the original exception and its traceback.
    """


class InvalidParamsError(ConfigError):
    """A malformed ``params`` string (the format is ``"0=a,1=b"``)."""


class ConfigFileError(ConfigError):
    """A configuration file that cannot be read or holds a bad key or value."""


class DiscoveryError(ConfigError):
    """Discovery is misconfigured: unknown protocol, missing hosts, bad credentials."""


# -- cluster --------------------------------------------------------------------------------------


class ClusterError(GoWorkerError):
    """Cluster mode could not start or keep going."""


class BackendError(ClusterError):
    """The coordination backend (ZooKeeper, etcd, Redis) failed a request.

    Every backend translates its client's errors into this tree; nothing above the seam
    (:mod:`goworker_py.cluster.backend`) sees a client library's exceptions.
    """


class BackendUnavailable(BackendError):
    """The coordination server could not be reached, or did not answer in time."""


class ZooKeeperUnavailable(BackendUnavailable):
    """ZooKeeper could not be reached within the connect timeout."""


class LeaseLost(BackendError):
    """The request needed this instance's lease (session), and the server expired it."""


class MemberGone(BackendError):
    """This instance's member entry vanished while its lease lives (deleted from outside):
    the instance gives its shards up and registers again."""


class AccessDenied(BackendError, DiscoveryError):
    """The coordination server refused the credentials (or their rights on the service)."""


class BackendMissing(DiscoveryError):
    """The discovery protocol's client library is not installed (``pip install`` its extra)."""


class ServiceConfigConflict(ClusterError, ConfigError):
    """This instance's service settings disagree with the ones stored in ZooKeeper."""


class ServicePaused(ClusterError):
    """A request the service's state refuses: ``trigger`` on a paused service starts no run,
    so it is refused (and not counted) rather than silently dropped."""


# -- runs -----------------------------------------------------------------------------------------


class TryAgain(GoWorkerError):
    """Raise from a step to run it again at once without counting an attempt.

    The seed's ``ErrTryAgain``. The step is re-run immediately (unless the worker is
    stopping); ``error_message`` is not called and the retry policy is not consulted.
    """


class AttemptsExhausted(GoWorkerError):
    """A step failed and the retry policy gave up (or the error is non-retryable).

    Reported once per failed step to ``error_message``, after the error of each attempt.
    """

    def __init__(self, step: str, attempts: int, last_error: BaseException, reason: str) -> None:
        self.step = step
        self.attempts = attempts
        self.last_error = last_error
        self.reason = reason
        super().__init__(
            f"{step}: gave up after {attempts} attempt{'s' if attempts != 1 else ''} "
            f"({reason}); last error: {last_error!r}"
        )


class RunFailed(GoWorkerError):
    """Raised by ``Worker.wait()`` when a run-once worker's run gave up.

    ``last_error`` is the exception of the last failed attempt; ``errors`` maps each failed
    shard index to its last error (local mode with several shards can fail on more than one).
    """

    def __init__(self, last_error: BaseException, errors: dict[int, BaseException]) -> None:
        self.last_error = last_error
        self.errors = dict(errors)
        shards = ", ".join(str(s) for s in sorted(self.errors))
        super().__init__(f"run failed on shard(s) {shards}: {last_error!r}")


class ScriptFailed(GoWorkerError):
    """A :class:`~goworker_py.script.ScriptHandler` process exited non-zero (or was killed).

    ``returncode`` is the exit status (negative: the signal that killed it); ``stderr_tail``
    the last lines the script wrote to stderr.
    """

    def __init__(self, command: str, returncode: int, stderr_tail: tuple[str, ...] = ()) -> None:
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
        tail = f"; stderr ends: {' | '.join(stderr_tail)}" if stderr_tail else ""
        super().__init__(f"script {command} {how}{tail}")


class ScriptTimeout(ScriptFailed):
    """A script ran longer than its ``timeout`` and was stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, command: str, timeout: float, returncode: int) -> None:
        GoWorkerError.__init__(self, f"script {command} ran over its timeout of {timeout:g} s")
        self.command = command
        self.returncode = returncode
        self.stderr_tail = ()
        self.timeout = timeout


class RunCancelled(BaseException):
    """Raised by ``Context.raise_if_cancelled()`` to leave a step because the run was cancelled.

    Derives from ``BaseException`` so that ``except Exception`` in handler code cannot swallow it.
    """
