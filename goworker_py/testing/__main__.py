"""``python -m goworker_py.testing``: make ZooKeeper available for the tests, or run one by hand.

``ensure-zookeeper`` (what ``make zookeeper`` runs) starts and stops a real test server to prove
ZooKeeper works here. With ``ZK_HOSTS`` set it only checks that server answers. When ZooKeeper
is missing and we are root on Debian/Ubuntu, it installs the ``zookeeper`` package with apt-get;
otherwise it exits non-zero saying exactly what to install.

``serve`` runs a test server in the foreground until interrupted and prints its hosts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from goworker_py.testing.errors import ZooKeeperError, ZooKeeperNotFound
from goworker_py.testing.external import ExternalZooKeeper
from goworker_py.testing.install import (
    INSTALL_HINT,
    apt_install_zookeeper,
    can_apt_install,
    find_zookeeper,
)
from goworker_py.testing.zookeeper import ZooKeeperServer


def ensure_zookeeper(
    *, install: bool = True, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Check (and, as root on Debian, install) ZooKeeper; return a process exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if hosts := os.environ.get("ZK_HOSTS", "").strip():
        if ExternalZooKeeper(hosts).is_running:
            print(f"ZooKeeper OK: ZK_HOSTS={hosts} answers.", file=out)
            return 0
        print(
            f"ZK_HOSTS={hosts} does not answer. Start that server, or unset ZK_HOSTS to use a "
            f"local ZooKeeper.\n{INSTALL_HINT}",
            file=err,
        )
        return 1
    try:
        return _check_local(out)
    except ZooKeeperNotFound as missing:
        # A ZooKeeper the user pointed at explicitly is reported, not papered over with apt.
        explicit = any(os.environ.get(k) for k in ("ZOOKEEPER_PATH", "ZOOKEEPER_CLASSPATH"))
        if not install or explicit or not can_apt_install():
            why = "\n(Not installing it: that needs root on Debian/Ubuntu.)" if install else ""
            print(f"{missing}{why if not explicit else ''}", file=err)
            return 1
    except ZooKeeperError as broken:
        print(f"ZooKeeper is installed but a test server did not start:\n{broken}", file=err)
        return 1
    print("ZooKeeper not found: installing the Debian package `zookeeper` with apt-get.", file=out)
    try:
        apt_install_zookeeper()
        return _check_local(out)
    except ZooKeeperError as failed:  # its message already says what to install
        print(f"ZooKeeper is still not usable after apt-get: {failed}", file=err)
        return 1
    except (OSError, subprocess.CalledProcessError) as failed:
        print(f"Installing ZooKeeper failed: {failed}\n{INSTALL_HINT}", file=err)
        return 1


def _check_local(out: TextIO) -> int:
    install = find_zookeeper()
    with ZooKeeperServer(install=install) as server:
        seconds, mode = server.last_start_seconds or 0.0, server.mode()
    print(
        f"ZooKeeper OK: {install.source} with {install.java}; "
        f"a test server ({mode}) started in {seconds:.2f}s.",
        file=out,
    )
    return 0


def serve(tick_time: int, port: int | None) -> int:
    """Run one test server until Ctrl-C; return a process exit code."""
    try:
        server = ZooKeeperServer(tick_time=tick_time, port=port).start()
    except ZooKeeperError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ZooKeeper serving on {server.hosts} (dir {server.data_dir}); Ctrl-C stops it.")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up too, like Ctrl-C
    try:
        while server.is_running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m goworker_py.testing``."""
    parser = argparse.ArgumentParser(
        prog="python -m goworker_py.testing", description="ZooKeeper for goworker-py's tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser(
        "ensure-zookeeper", help="check ZooKeeper works here; install it on Debian as root"
    )
    ensure.add_argument("--no-install", action="store_true", help="only check, never apt-get")
    serve_cmd = commands.add_parser("serve", help="run a test server until Ctrl-C")
    serve_cmd.add_argument("--tick-time", type=int, default=100, help="ms (default 100)")
    serve_cmd.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    if args.command == "ensure-zookeeper":
        return ensure_zookeeper(install=not args.no_install)
    return serve(args.tick_time, args.port)


if __name__ == "__main__":
    sys.exit(main())
