"""A custom retry policy: retry every 2 s while fewer than 5 attempts failed, then give up.

before() always fails, so it is tried 5 times, 2 s apart; error_message() receives each
error and then one AttemptsExhausted; do() and after() never run; wait() raises RunFailed
(the seed's custom-retry-policy example, where Wait() wrongly returned nil).

    python samples/custom_retry_policy.py
"""

from __future__ import annotations

import time

from goworker_py import RETRY_DONE, Context, Handler, RunFailed, Worker


class EveryTwoSeconds:
    """Any object with compute_next_delay(attempt) is a retry policy."""

    def compute_next_delay(self, attempt: int) -> float:
        return 2.0 if attempt < 5 else RETRY_DONE


class FailingBefore(Handler):
    def before(self, ctx: Context) -> None:
        print(f"before (attempt {ctx.attempt})", flush=True)
        raise RuntimeError("unknown error")

    def do(self, ctx: Context) -> None:
        print("Do", flush=True)

    def after(self, ctx: Context) -> None:
        print("After", flush=True)

    def error_message(self, ctx: Context, err: BaseException) -> None:
        print(f"err: {err} [{time.strftime('%H:%M:%S')}]", flush=True)


def main() -> int:
    worker = Worker(FailingBefore, retry_policy=EveryTwoSeconds())
    worker.run()
    try:
        worker.wait()
    except RunFailed as exc:
        print(f"end = {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
