"""A cron worker: runs every minute (or every N seconds with --every) until Ctrl-C / SIGTERM.

State set in before() is visible in do() and after() of the same run; a fresh handler
instance is made for every run, so nothing leaks into the next one (the seed's cron example).

    python samples/cron.py                 # "* * * * *": at the start of every minute
    python samples/cron.py "*/5 * * * * *" # every 5 seconds (6 fields: leading seconds)
"""

from __future__ import annotations

import random
import sys

from goworker_py import Context, Handler, Worker


class RandomNumber(Handler):
    def before(self, ctx: Context) -> None:
        self.num = random.randint(0, 99)
        print("before", flush=True)

    def do(self, ctx: Context) -> None:
        print(f"helloWorld {self.num} (fire time {ctx.scheduled_time:%H:%M:%S})", flush=True)

    def after(self, ctx: Context) -> None:
        print("after", flush=True)


def main() -> int:
    cron = sys.argv[1] if len(sys.argv) > 1 else "* * * * *"
    worker = Worker(RandomNumber, cron=cron)
    worker.run()
    print(f"worker ended: {worker.wait().value}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
