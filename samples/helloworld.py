"""The smallest worker: one run of before -> do -> after, then exit (the seed's helloworld).

python samples/helloworld.py
"""

from __future__ import annotations

from goworker_py import Context, Handler, RunFailed, Worker


class HelloWorld(Handler):
    def before(self, ctx: Context) -> None:
        print("before: setting up")

    def do(self, ctx: Context) -> None:
        print(f"do: hello, world (run {ctx.run_id})")

    def after(self, ctx: Context) -> None:
        print("after: done")

    def error_message(self, ctx: Context, err: BaseException) -> None:
        print(f"err: {err!r}")


def main() -> int:
    worker = Worker(HelloWorld)
    worker.run()
    try:
        print(f"worker ended: {worker.wait().value}")
    except RunFailed as exc:
        print(f"worker failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
