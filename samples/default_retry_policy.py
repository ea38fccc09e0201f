"""The default retry policy with its setters: first retry after 2 s, delays doubling up to
20 s, at most 3 retries (the seed's default-retry-policy example). before() always fails, so
it runs 4 times (waits 2, 4, 8 s), then AttemptsExhausted and wait() raises RunFailed.

    python samples/default_retry_policy.py
"""

from __future__ import annotations

import time

from goworker_py import Context, Handler, RunFailed, Worker, get_default_retry_policy


class FailingBefore(Handler):
    def before(self, ctx: Context) -> None:
        raise RuntimeError("before err")

    def do(self, ctx: Context) -> None:
        print("helloWorld", flush=True)

    def after(self, ctx: Context) -> None:
        print("After", flush=True)

    def error_message(self, ctx: Context, err: BaseException) -> None:
        print(f"err: {err} [{time.strftime('%H:%M:%S')}]", flush=True)


def main() -> int:
    policy = (
        get_default_retry_policy()
        .set_initial_interval(2)
        .set_maximum_interval(20)
        .set_maximum_attempts(3)
    )
    worker = Worker(FailingBefore, retry_policy=policy)
    worker.run()
    try:
        worker.wait()
    except RunFailed as exc:
        print(f"end = {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
