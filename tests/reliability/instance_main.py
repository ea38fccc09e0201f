"""One worker instance of a reliability scenario, as an OS process of its own.

    python tests/reliability/instance_main.py (--hosts H | --discovery URL) --service S \\
        --shards N --cron EXPR --session-timeout T --history FILE [--run-seconds D] \\
        [--shard-run-seconds 0=D0,1=D1] [--ignore-cancel] \\
        [--misfire-policy skip|run_once] [--shutdown-timeout S] [--name NAME] \\
        [--gil-hog SECONDS] [--fork-child] [--fence-dir DIR] [--tick SECONDS] [--tick-busy] \
        [--slow-watch SECONDS] [--handover-timeout SECONDS]

A cluster-mode ``Worker`` whose handler appends what it does to the shared history file as JSON
lines (``O_APPEND``, one ``os.write`` per line, so lines of several processes never mix).
``--hosts`` is a ZooKeeper connection string; ``--discovery`` a discovery URL of any backend
(``etcd://h:p``, ``redis://h:p/0``, ``zookeeper://h:p``). An instance's ``session`` is its lease:
on ZooKeeper the session id in hex (``0x...``), elsewhere the backend's ``lease_id``.

- ``start`` / ``end`` of every run (``end`` has ``outcome`` ``ok`` or ``cancelled``), with shard,
  instance name, pid, session, fencing token, fire time, time and failover flag;
- ``health`` whenever ``worker.health`` changes (polled every 10 ms), with the session the
  client held then (``session``, or None without one);
- on ZooKeeper, ``zk_state`` for every kazoo state change (``t`` is when kazoo reported it);
  on the other backends, ``conn_state`` for every connection-state change the backend reports
  through the seam (``Change.CONNECTION``; ``state`` is the ``ConnectionState``'s name,
  ``LOST``, ``SUSPENDED``, ``CONNECTED``, read when the change was delivered, and ``lease`` the
  lease it concerns: for ``LOST`` the one lost). A lease replaced without a ``LOST`` delivered
  for it is written as a ``LOST`` of the old lease with ``inferred`` true, at the moment the
  new lease was seen (never earlier than the fact; see ``state_tap.StateTap``);
- ``registered`` for every new member entry (session, ``node``: the member key, ``member``:
  the instance id; on ZooKeeper also ``session_id`` and ``session_passwd`` in hex, so a test can
  expire the session from outside), ``exit`` with the exit code;
- with ``--fence-dir``, ``fenced_write`` for every write to a small token-checking store (one at
  the start of ``do``, one when its work is done - also after a cancellation, except with
  ``--tick``), accepted or rejected;
- with ``--gil-hog``, ``gil_hog`` before and after the first run's long C call;
- with ``--fork-child``, ``fork_child`` with the exit code of each run's forked child;
- with ``--tick S``, ``do`` is a loop that checks ``ctx.cancelled`` first, then does one tick of
  work - a ``tick`` event (``checked``: when it found ``ctx.cancelled`` false) and, with
  ``--fence-dir``, a fenced write (``phase`` ``tick``) - and sleeps ``ctx.wait(S)``, until its run
  length is over; the check that finds ``ctx.cancelled`` true writes ``cancel_seen`` (``t``: just
  after that check) and ends the run without a last write (a frozen owner resumed may still
  hold the store's lock, and the new owner's first write waits behind it). With
  ``--tick-busy`` the pause between ticks is CPU work (a loop holding the GIL) instead of
  ``ctx.wait``: a CPU-bound handler, which a freeze most
  likely stops holding the GIL, so that once thawed it checks ``ctx.cancelled`` before any
  other thread of the process runs;
- with ``--slow-watch S``, the handler has a ``watch`` that blocks ``S`` seconds (``time.sleep``,
  as blocking I/O would) the first time it is called for a set of members it has not seen (the
  very first set excepted: start-up stays quick), and ``watch`` events (``phase`` ``begin`` and
  ``end``, ``slow``, the calling thread, the member count) for every call.

``--handover-timeout S`` is passed to ``WorkerConfig(handover_timeout=S)``, and only when given.

SIGTERM/SIGINT stop the worker gracefully; the process then exits 0. SIGUSR1 writes the stack of
every thread to stderr, SIGUSR2 the coordination backend's attributes (the harness asks for both
when a test failed: where is it stuck, and why?). The log
level is INFO, or ``RELIABILITY_LOG_LEVEL`` (``DEBUG`` to chase a failure); modules named in
``RELIABILITY_DEBUG`` (comma-separated, e.g. ``goworker_py.cluster.backends.redis``) log at DEBUG.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import fcntl
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

# This script's folder is on sys.path when it runs (``python tests/reliability/instance_main.py``).
from state_tap import tapped_discovery

from goworker_py import (
    Context,
    DiscoveryConfig,
    ExitReason,
    Handler,
    Model,
    WatchInfo,
    Worker,
    WorkerConfig,
)


class History:
    """The append-only history file shared by every process of a scenario."""

    def __init__(self, path: str, name: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.name = name

    def write(self, event: str, *, at: float | None = None, **fields: Any) -> None:
        """Append one event; ``t`` is now, or ``at`` when the fact happened a moment before."""
        now = time.time() if at is None else at
        record = {"event": event, "instance": self.name, "pid": os.getpid(), "t": now}
        record.update(fields)
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


class FencedStore:
    """A tiny store in a directory that rejects writes carrying a stale fencing token.

    Per shard it keeps the highest token it accepted; a write with a lower token is refused.
    An ``flock`` serialises the processes.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, shard: int, token: int, payload: str) -> tuple[bool, int, float]:
        """Write ``payload`` for ``shard`` under ``token``.

        Returns ``(accepted, highest token seen, when it was decided)``: the time is taken under
        the lock, so a process frozen right after still reports when its write happened.
        """
        lock = os.open(self.directory / f"shard-{shard}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            decided = time.time()
            high_path = self.directory / f"shard-{shard}.token"
            highest = int(high_path.read_text()) if high_path.exists() else -1
            if token < highest:
                return False, highest, decided
            high_path.write_text(str(token))
            with open(self.directory / f"shard-{shard}.data", "a") as data:
                data.write(f"{token} {payload}\n")
            return True, token, decided
        finally:
            os.close(lock)


class GilHog:
    """Holds the GIL for about ``seconds`` in one C call: ``pow`` with a long exponent.

    ``pow(b, e, m)`` on big ints never releases the GIL and its time grows linearly with the
    exponent's bit length, so it is calibrated once at start-up. (``hashlib.pbkdf2_hmac``
    releases the GIL: it would not do.)
    """

    MODULUS = (1 << 4096) - 159

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        probe_bits = 4096
        began = time.perf_counter()
        pow(3, (1 << probe_bits) - 1, self.MODULUS)
        per_bit = (time.perf_counter() - began) / probe_bits
        self.bits = max(int(seconds / per_bit), 1)

    def run(self) -> None:
        pow(3, (1 << self.bits) - 1, self.MODULUS)


def _child_work(history_path: str, name: str, shard: int) -> None:
    # A forked child: a little work, one line of history, no ZooKeeper client.
    total = sum(i * i for i in range(10_000))
    History(history_path, name).write("child", shard=shard, result=total)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--hosts", help="a ZooKeeper connection string")
    target.add_argument("--discovery", help="a discovery URL (etcd://h:p, redis://h:p/0, ...)")
    parser.add_argument("--service", default="svc")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--cron", default="* * * * * *")
    parser.add_argument("--session-timeout", type=float, default=2.0)
    parser.add_argument("--history", required=True)
    parser.add_argument("--run-seconds", type=float, default=0.0)
    parser.add_argument(
        "--shard-run-seconds",
        default="",
        help="per-shard run lengths overriding --run-seconds, e.g. '0=0.25,1=0.5'",
    )
    parser.add_argument("--ignore-cancel", action="store_true")
    parser.add_argument("--misfire-policy", default="skip", choices=("skip", "run_once"))
    parser.add_argument("--shutdown-timeout", type=float, default=5.0)
    parser.add_argument("--name", default="")
    parser.add_argument("--gil-hog", type=float, default=0.0)
    parser.add_argument("--fork-child", action="store_true")
    parser.add_argument("--fence-dir", default="")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument(
        "--tick", type=float, default=0.0, help="a ticking do(): seconds between ticks"
    )
    parser.add_argument(
        "--tick-busy", action="store_true", help="CPU work between ticks, not ctx.wait()"
    )
    parser.add_argument(
        "--slow-watch", type=float, default=0.0, help="seconds watch() blocks on a new membership"
    )
    parser.add_argument(
        "--handover-timeout",
        type=float,
        default=None,
        help="WorkerConfig.handover_timeout (left to its default when not given)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.name or f"inst-{os.getpid()}"
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logger.remove()
    level = os.environ.get("RELIABILITY_LOG_LEVEL", "INFO")
    # Modules logged at DEBUG whatever the level: less noise (and less delay) than DEBUG for all.
    verbose = [m for m in os.environ.get("RELIABILITY_DEBUG", "").split(",") if m]
    logger.add(
        sys.stderr,
        level="DEBUG" if verbose else level,
        filter={"": level, **dict.fromkeys(verbose, "DEBUG")},
        format="{time:HH:mm:ss.SSS} {level: <7} [{thread.name}] {message}",
        enqueue=False,
    )
    history = History(args.history, name)
    run_seconds = {
        int(shard): float(seconds)
        for shard, _, seconds in (
            item.partition("=") for item in args.shard_run_seconds.split(",") if item
        )
    }
    store = FencedStore(args.fence_dir) if args.fence_dir else None
    hog = GilHog(args.gil_hog) if args.gil_hog > 0 else None
    hogged = threading.Event()
    #: Set once the first ``registered`` event is written: the GIL hog waits for it, or it
    #: would starve the thread that writes it and the test would never learn the first session.
    first_registered = threading.Event()
    worker: Worker | None = None

    zookeeper = args.hosts is not None

    def dump_backend(signum: int, frame: Any) -> None:
        """SIGUSR2 (the harness sends it after SIGUSR1 when a test failed): the backend's own
        attributes, as they are now - what its threads will do next."""
        host = worker.host if worker is not None else None
        if host is None:
            return
        backend = getattr(host.backend, "_backend", host.backend)
        fields = {k: v for k, v in vars(backend).items() if not callable(v)}
        fields["monotonic_now"] = time.monotonic()
        lines = [f"  {k} = {v!r:.200}" for k, v in sorted(fields.items())]
        print(f"backend {type(backend).__name__}:", *lines, sep="\n", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR2, dump_backend)

    def session_hex() -> str:
        """The lease the instance holds now (its ``session`` in the history)."""
        assert worker is not None
        if zookeeper:
            return format(worker.host.backend.session_id, "#x")
        return str(worker.host.backend.lease_id)

    class Recording(Handler):
        def do(self, ctx: Context) -> None:
            shard, token = ctx.shard.index, ctx.fencing_token
            common: dict[str, Any] = {
                "shard": shard,
                "session": session_hex(),
                "member": ctx.instance.id,
                "token": token,
                "fire": ctx.scheduled_time.timestamp(),
                "failover": ctx.is_failover,
                "run_id": ctx.run_id,
            }
            history.write("start", **common)
            if store is not None:
                self.fenced_write(common, "start")
            if hog is not None and not hogged.is_set():
                hogged.set()
                first_registered.wait(10.0)
                history.write("gil_hog", phase="begin", seconds=hog.seconds, **common)
                hog.run()
                history.write("gil_hog", phase="end", **common)
            if args.fork_child:
                context = multiprocessing.get_context("fork")
                child = context.Process(target=_child_work, args=(args.history, name, shard))
                child.start()
                child.join(10.0)
                history.write("fork_child", exitcode=child.exitcode, **common)
            duration = run_seconds.get(shard, args.run_seconds)
            gave_up = False
            if args.ignore_cancel:
                time.sleep(duration)
            elif args.tick > 0:
                gave_up = self.tick(ctx, common, duration)
            elif duration > 0:
                ctx.wait(duration)
            # A ticking handler is the cooperative kind: once it saw ``ctx.cancelled`` it
            # writes nothing more. (The others make their last write regardless, so that the
            # store's token check is what stops a stale one.)
            if store is not None and not gave_up:
                self.fenced_write(common, "end")
            outcome = "cancelled" if ctx.cancelled else "ok"
            history.write("end", outcome=outcome, **common)

        def tick(self, ctx: Context, common: dict[str, Any], duration: float) -> bool:
            """Tick every ``--tick`` s for ``duration`` s, checking ``ctx.cancelled`` first;
            True when it stopped because the run was cancelled."""
            deadline = time.monotonic() + duration
            ticks = 0
            while True:
                checked = time.time()
                if ctx.cancelled:
                    history.write("cancel_seen", ticks=ticks, **common)
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ticks += 1
                history.write("tick", n=ticks, checked=checked, **common)
                if store is not None:
                    self.fenced_write(common, "tick")
                if args.tick_busy:
                    until = time.monotonic() + min(args.tick, left)
                    while time.monotonic() < until:
                        pass  # CPU work: the GIL is held but for the interpreter's switches
                else:
                    ctx.wait(min(args.tick, left))

        @staticmethod
        def fenced_write(common: dict[str, Any], phase: str) -> None:
            assert store is not None
            token = int(common["token"] or 0)
            accepted, highest, decided = store.write(common["shard"], token, f"{name} {phase}")
            history.write(
                "fenced_write",
                at=decided,
                phase=phase,
                accepted=accepted,
                highest=highest,
                **common,
            )

    seen_members: list[frozenset[str]] = []
    seen_lock = threading.Lock()

    class SlowWatching(Recording):
        def watch(self, info: WatchInfo) -> None:
            members = frozenset(member.id for member in info.cluster_instances)
            with seen_lock:
                slow = bool(seen_members) and members != seen_members[-1]
                if not seen_members or members != seen_members[-1]:
                    seen_members.append(members)
            fields: dict[str, Any] = {
                "slow": slow,
                "members": len(members),
                "thread": threading.current_thread().name,
                "shard": info.current_instance.shard_index,
            }
            history.write("watch", phase="begin", **fields)
            if slow:
                time.sleep(args.slow_watch)
            history.write("watch", phase="end", **fields)

    extra: dict[str, Any] = {}
    if args.handover_timeout is not None:
        extra["handover_timeout"] = args.handover_timeout
    states: collections.deque[tuple[float, str]] = collections.deque()
    tapped: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque()
    timeouts = {"session_timeout": args.session_timeout, "connect_timeout": args.connect_timeout}
    if zookeeper:
        discovery = DiscoveryConfig(hosts=args.hosts, **timeouts)
    else:

        def on_tapped(event: str, **fields: Any) -> None:
            # The backend's thread: record only, the watcher thread writes it out.
            tapped.append((time.time(), event, fields))

        discovery = tapped_discovery(args.discovery, on_tapped, **timeouts)
    worker = Worker(
        SlowWatching if args.slow_watch > 0 else Recording,
        config=WorkerConfig(
            discovery=discovery,
            shutdown_timeout=args.shutdown_timeout,
            misfire_policy=args.misfire_policy,
            **extra,
        ),
        cron=args.cron,
        model=Model.CLUSTER,
        service_name=args.service,
        sharding_total_count=args.shards,
        handle_signals=True,
        name=name,
    )
    try:
        worker.run()
    except Exception as exc:  # noqa: BLE001 - reported in the history, then a failing exit
        logger.opt(exception=exc).error("worker did not start: {!r}", exc)
        history.write("exit", code=2, error=repr(exc))
        return 2

    if zookeeper:

        def on_state(state: str) -> None:
            # kazoo's connection thread: record only, the watcher thread writes it out.
            states.append((time.time(), str(state)))

        worker.host.backend.client.add_listener(on_state)
    stop_watching = threading.Event()

    def watch() -> None:
        """Write health changes, kazoo state changes and new sessions to the history."""
        host = worker.host
        health, registered = None, None
        while True:
            while states:
                at, state = states.popleft()
                history.write("zk_state", state=state, at=at)
            if host.health != health:
                health = host.health
                # The session read after the health: a GREEN of an expired session shows it.
                current = host.backend.client.client_id
                history.write(
                    "health",
                    health=health.name,
                    session=format(current[0], "#x") if current and current[0] else None,
                )
            client_id = host.backend.client.client_id
            node = host.backend.node
            if client_id and node and (client_id[0], node) != registered:
                registered = (client_id[0], node)
                history.write(
                    "registered",
                    session=format(client_id[0], "#x"),
                    session_id=format(client_id[0], "x"),
                    session_passwd=bytes(client_id[1]).hex(),
                    node=node,
                    member=host.instance.id,
                    timeout=host.backend.negotiated_timeout,
                )
                first_registered.set()
            if stop_watching.wait(0.01):
                return

    def watch_lease() -> None:
        """Write health changes, and the connection-state changes and member entries the
        :class:`StateTap` saw, to the history (the backends other than ZooKeeper)."""
        host = worker.host
        health = None
        while True:
            while tapped:
                at, event, fields = tapped.popleft()
                history.write(event, at=at, **fields)
            if host.health != health:
                health = host.health
                # The lease read after the health: a GREEN of an expired lease shows it.
                history.write("health", health=health.name, session=host.backend.lease_id or None)
            if stop_watching.wait(0.01):
                return

    watcher = threading.Thread(
        target=watch if zookeeper else watch_lease, name="history-watcher", daemon=True
    )
    watcher.start()
    reason = worker.wait()
    stop_watching.set()
    watcher.join(1.0)
    code = 0 if reason in (ExitReason.SIGNALLED, ExitReason.CANCELLED) else 1
    history.write("exit", code=code, reason=reason.value)
    with contextlib.suppress(OSError):
        os.close(history.fd)
    return code


if __name__ == "__main__":
    sys.exit(main())
