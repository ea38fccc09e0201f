#!/usr/bin/env python3
"""Async handlers: two shards talk to a TCP echo server through asyncio streams.

The sample starts a local asyncio echo server (on its own thread and loop), then a worker with
2 shards firing every 500 ms. Each run's ``before`` opens a connection, ``do`` sends three
lines and awaits each echo (sleeping between them with ``await ctx.sleep``), ``after`` closes
the connection - all ``async def``, each shard on its own event loop, no third-party client.
Stops after about three seconds, or at Ctrl-C (the step awaiting the server is cancelled).

    python samples/async_handler.py
"""

from __future__ import annotations

import asyncio
import threading

from goworker_py import Context, Handler, Worker

_print_lock = threading.Lock()  # shard threads print at the same time: one line at a time


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


class EchoClient(Handler):
    #: The echo server's address, set by main() once it listens.
    server: tuple[str, int] = ("127.0.0.1", 0)

    async def before(self, ctx: Context) -> None:
        host, port = self.server
        self.reader, self.writer = await asyncio.open_connection(host, port)

    async def do(self, ctx: Context) -> None:
        for n in range(1, 4):
            line = f"shard {ctx.shard.index} {ctx.scheduled_time:%H:%M:%S.%f} line {n}"
            self.writer.write(line.encode() + b"\n")
            await self.writer.drain()
            echo = await asyncio.wait_for(self.reader.readline(), timeout=5)
            say(f"echo: {echo.decode().rstrip()}")
            if await ctx.sleep(0.01):  # True once the run is cancelled
                return

    async def after(self, ctx: Context) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    def error_message(self, ctx: Context, err: BaseException) -> None:
        say(f"err: {ctx.step}: {err!r}")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass  # a client gone mid-line: a run cancelled while it awaited its echo (at the stop)
    finally:
        writer.close()


def start_echo_server() -> tuple[str, int]:
    """Serve the echo protocol on a free local port, on a thread of its own; return its address."""
    listening: list[tuple[str, int]] = []
    ready = threading.Event()

    async def serve() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        listening.append(server.sockets[0].getsockname()[:2])
        ready.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), name="echo-server", daemon=True).start()
    if not ready.wait(10):
        raise RuntimeError("the echo server did not start")
    return listening[0]


def main() -> int:
    EchoClient.server = start_echo_server()
    worker = Worker(EchoClient, cron="@every 500ms", sharding_total_count=2, timeout=3.0)
    worker.run()
    print(f"worker ended: {worker.wait().value}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
