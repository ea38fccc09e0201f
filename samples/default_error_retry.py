"""The default retry policy at work: do() always fails and is retried forever, waiting
1, 2, 4, 8, 10, 10, ... seconds between attempts, until Ctrl-C / SIGTERM stops it
(the seed's default-error-retry example). The retry wait is interrupted at once by a signal.

    python samples/default_error_retry.py
"""

from __future__ import annotations

import time

from goworker_py import Context, Handler, Worker


class AlwaysFails(Handler):
    def before(self, ctx: Context) -> None:
        print("Before", flush=True)

    def do(self, ctx: Context) -> None:
        raise RuntimeError("unknown error")

    def after(self, ctx: Context) -> None:
        print("After", flush=True)

    def error_message(self, ctx: Context, err: BaseException) -> None:
        print(f"err: {err} (attempt {ctx.attempt}) [{time.strftime('%H:%M:%S')}]", flush=True)


def main() -> int:
    worker = Worker(AlwaysFails)
    worker.run()
    print(f"end = {worker.wait().value}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
