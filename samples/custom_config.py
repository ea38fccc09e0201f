"""Custom configuration: JSON log lines at DEBUG level on stdout (the seed's custom-config).

The seed handed a zap logger to the worker; here a LoggerConfig does the same for loguru.
The same settings can come from a TOML file with load_config("worker.toml").

    python samples/custom_config.py
"""

from __future__ import annotations

from goworker_py import Context, Handler, LoggerConfig, Worker, WorkerConfig


class HelloWorld(Handler):
    def before(self, ctx: Context) -> None:
        ctx.logger.debug("before")

    def do(self, ctx: Context) -> None:
        ctx.logger.info("helloWorld")

    def after(self, ctx: Context) -> None:
        ctx.logger.debug("after")


def main() -> int:
    config = WorkerConfig(
        logger=LoggerConfig(level="DEBUG", sink="stdout", serialize=True),
        shutdown_timeout=5,
    )
    worker = Worker(HelloWorld, config=config)
    worker.run()
    worker.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
