"""``python -m goworker_py.testing``: make ZooKeeper available for the tests, or run one by hand.

``ensure-zookeeper`` (what ``make zookeeper`` runs) starts and stops a real test server to prove
ZooKeeper works here. With ``ZK_HOSTS`` set it only checks that server answers. When ZooKeeper
is missing and we are root on Debian/Ubuntu, it installs the ``zookeeper`` package with apt-get.
Otherwise, when a Docker engine answers (``docker info``), it starts a ``zookeeper:3.8``
container and records its hosts in ``.zk_hosts`` for the pytest plugin (see
:mod:`goworker_py.testing.docker`). Failing all that, it exits non-zero saying what to install.

``ensure-redis`` (what ``make redis`` runs) starts and stops a test ``redis-server`` to prove it
works here; when it is missing and we are root on Debian/Ubuntu, it installs the ``redis-server``
package with apt-get, else it exits non-zero saying what to install.

``stop-docker-zookeeper`` (what ``make test`` runs after pytest) stops that container and deletes
``.zk_hosts``; it does nothing when no container was started.

``serve`` runs a test server in the foreground until interrupted and prints its hosts.

``ensure-etcd`` (what ``make etcd`` runs) does the same for etcd: it starts and stops a real
test server, and installs Debian's ``etcd-server`` with apt-get when etcd is missing and we are
root on Debian/Ubuntu; otherwise it exits non-zero saying what to install.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from goworker_py.testing.docker import (
    CONTAINER_PREFIX,
    DOCKER_IMAGE,
    STOP_HINT,
    DockerError,
    DockerZooKeeper,
    docker_engine_running,
    hosts_file,
    read_hosts_file,
    start_zookeeper_container,
    stop_zookeeper_container,
)
from goworker_py.testing.errors import (
    EtcdNotFound,
    RedisNotFound,
    ZooKeeperError,
    ZooKeeperNotFound,
)
from goworker_py.testing.etcd import ETCD_INSTALL_HINT, EtcdServer, find_etcd
from goworker_py.testing.external import ExternalZooKeeper
from goworker_py.testing.install import (
    INSTALL_HINT,
    REDIS_INSTALL_HINT,
    apt_install,
    can_apt_install,
    find_redis_server,
    find_zookeeper,
)
from goworker_py.testing.redis import RedisServer
from goworker_py.testing.zookeeper import ZooKeeperServer


def _check_zookeeper(out: TextIO) -> int:
    install = find_zookeeper()
    with ZooKeeperServer(install=install) as server:
        seconds, mode = server.last_start_seconds or 0.0, server.mode()
    print(
        f"ZooKeeper OK: {install.source} with {install.java}; "
        f"a test server ({mode}) started in {seconds:.2f}s.",
        file=out,
    )
    return 0


def _check_etcd(out: TextIO) -> int:
    binary = find_etcd()
    with EtcdServer(binary=binary) as server:
        seconds = server.last_start_seconds or 0.0
    print(f"etcd OK: {binary}; a test server started in {seconds:.2f}s.", file=out)
    return 0


def _check_redis(out: TextIO) -> int:
    executable = find_redis_server()
    began = time.monotonic()
    with RedisServer(executable=executable) as server:
        hosts = server.hosts
    seconds = time.monotonic() - began
    print(f"Redis OK: {executable}; a test server on {hosts} ran in {seconds:.2f}s.", file=out)
    return 0


@dataclass(frozen=True)
class _Program:
    """What an ``ensure-*`` command needs to know of its server program."""

    name: str  # as messages name it
    package: str  # the Debian package that installs it
    not_found: type[ZooKeeperError]  # what its lookup raises when it is missing
    explicit: tuple[str, ...]  # variables that point at it: reported, never papered over
    hint: str  # what to install, after a failed apt-get
    check: Callable[[TextIO], int]  # start and close a test server, say how it went


_ZOOKEEPER = _Program(
    "ZooKeeper",
    "zookeeper",
    ZooKeeperNotFound,
    ("ZOOKEEPER_PATH", "ZOOKEEPER_CLASSPATH"),
    INSTALL_HINT,
    _check_zookeeper,
)
_ETCD = _Program(
    "etcd", "etcd-server", EtcdNotFound, ("ETCD_BINARY",), ETCD_INSTALL_HINT, _check_etcd
)
_REDIS = _Program(
    "redis-server",
    "redis-server",
    RedisNotFound,
    ("REDIS_SERVER",),
    REDIS_INSTALL_HINT,
    _check_redis,
)
_NOT_ROOT = "\n(Not installing it: that needs root on Debian/Ubuntu.)"


def _ensure(
    program: _Program,
    *,
    install: bool,
    out: TextIO | None,
    err: TextIO | None,
    without_apt: Callable[[ZooKeeperError, TextIO, TextIO], int] | None = None,
) -> int:
    """Check ``program`` works here; when it is missing and we are root on Debian, install its
    package with apt-get and check again. Returns a process exit code.

    ``without_apt`` handles a missing program that apt-get cannot install (by default: say so).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        return program.check(out)
    except program.not_found as missing:
        if not install or any(os.environ.get(name) for name in program.explicit):
            print(missing, file=err)
            return 1
        if not can_apt_install():
            if without_apt is not None:
                return without_apt(missing, out, err)
            print(f"{missing}{_NOT_ROOT}", file=err)
            return 1
    except ZooKeeperError as broken:
        print(f"{program.name} is installed but a test server did not start:\n{broken}", file=err)
        return 1
    print(
        f"{program.name} not found: installing the Debian package `{program.package}` with "
        f"apt-get.",
        file=out,
    )
    try:
        apt_install(program.package)
        return program.check(out)
    except ZooKeeperError as failed:  # its message already says what to install
        print(f"{program.name} is still not usable after apt-get: {failed}", file=err)
        return 1
    except (OSError, subprocess.CalledProcessError) as failed:
        print(f"Installing {program.name} failed: {failed}\n{program.hint}", file=err)
        return 1


def ensure_zookeeper(
    *,
    install: bool = True,
    docker: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Check (and, as root on Debian, install) ZooKeeper; return a process exit code.

    When it is missing and apt-get is not possible, start it in Docker if an engine runs
    (unless ``docker`` is false). ``install=False`` only checks: no apt-get, no container.
    """
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
    if install:
        _discard_earlier_container(out, err)  # so the tests use what this run chooses
    in_docker = _in_docker if docker else None
    return _ensure(_ZOOKEEPER, install=install, out=out, err=err, without_apt=in_docker)


def ensure_etcd(
    *, install: bool = True, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Check (and, as root on Debian, install) etcd; return a process exit code."""
    return _ensure(_ETCD, install=install, out=out, err=err)


def ensure_redis(
    *, install: bool = True, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Check (and, as root on Debian, install) ``redis-server``; return a process exit code."""
    return _ensure(_REDIS, install=install, out=out, err=err)


def _in_docker(missing: ZooKeeperError, out: TextIO, err: TextIO) -> int:
    """ZooKeeper is missing and apt-get not possible: start a container if Docker runs here."""
    if docker_engine_running():
        return _start_in_docker(out, err)
    print(f"{missing}{_NOT_ROOT}{_why_not_docker()}", file=err)
    return 1


def _why_not_docker() -> str:
    if shutil.which("docker") is None:
        return "\n(Not using Docker: no `docker` command.)"
    return (
        "\n(Not using Docker: `docker info` failed, so no Docker engine answers here; "
        "start one, e.g. `systemctl start docker`, or install ZooKeeper as above.)"
    )


def _start_in_docker(out: TextIO, err: TextIO) -> int:
    print(
        f"ZooKeeper not found and apt-get not possible here, but a Docker engine runs: starting "
        f"a {DOCKER_IMAGE} container (the first time, Docker pulls the image).",
        file=out,
    )
    out.flush()
    try:
        started = start_zookeeper_container()
    except DockerError as failed:
        print(f"Starting ZooKeeper in Docker failed: {failed}\n{INSTALL_HINT}", file=err)
        return 1
    print(
        f"ZooKeeper OK: Docker container {started.container} ({DOCKER_IMAGE}) answers at "
        f"{started.hosts}.\n"
        f"While ZK_HOSTS is unset the tests use it (its hosts are in {started.path}), as an "
        f"external server: tests that stop, pause or restart a server of their own skip.\n"
        f"Stop it with: {STOP_HINT}  (or: docker stop {started.container}). "
        f"`make test` stops it after the tests.",
        file=out,
    )
    return 0


def _discard_earlier_container(out: TextIO, err: TextIO) -> None:
    earlier = read_hosts_file()
    if earlier is None:
        return
    if _ours(earlier):
        print(f"Stopping the ZooKeeper container of an earlier run: {earlier.container}", file=out)
        _stop_recorded(earlier, out, err)
    else:
        print(
            f"Note: {earlier.path} names {earlier.hosts}; while ZK_HOSTS is unset the tests use "
            f"that server. Delete the file to use a local ZooKeeper.",
            file=out,
        )


def _ours(recorded: DockerZooKeeper) -> bool:
    return recorded.container is not None and recorded.container.startswith(CONTAINER_PREFIX)


def _stop_recorded(recorded: DockerZooKeeper, out: TextIO, err: TextIO) -> int:
    name = recorded.container or ""
    try:
        was_running = stop_zookeeper_container(name)
    except (DockerError, ValueError) as failed:
        # Delete the file anyway: the tests must not wait on a server that may be gone.
        recorded.path.unlink(missing_ok=True)
        print(
            f"Could not stop the ZooKeeper container {name}: {failed}\n"
            f"(Deleted {recorded.path}. If the container still runs: docker stop {name})",
            file=err,
        )
        return 1
    recorded.path.unlink(missing_ok=True)
    done = "Stopped" if was_running else "Found no running"
    print(f"{done} ZooKeeper container {name}; deleted {recorded.path}.", file=out)
    return 0


def stop_docker_zookeeper(*, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Stop the container ``ensure-zookeeper`` started and delete its hosts file.

    Does nothing (exit code 0) when there is none; a hosts file naming no container of ours is
    left alone.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    recorded = read_hosts_file()
    if recorded is None:
        print(f"No ZooKeeper container to stop (no {hosts_file()}).", file=out)
        return 0
    if not _ours(recorded):
        print(
            f"{recorded.path} names no container started by ensure-zookeeper; left alone.",
            file=out,
        )
        return 0
    return _stop_recorded(recorded, out, err)


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
        prog="python -m goworker_py.testing",
        description="ZooKeeper, etcd and Redis for goworker-py's tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ensure = commands.add_parser(
        "ensure-zookeeper",
        help="check ZooKeeper works here; install it on Debian as root, or start it in Docker",
    )
    ensure.add_argument(
        "--no-install", action="store_true", help="only check: never apt-get, start no container"
    )
    ensure.add_argument(
        "--no-docker", action="store_true", help="never start a ZooKeeper container"
    )
    ensure_etcd_cmd = commands.add_parser(
        "ensure-etcd", help="check etcd works here; install etcd-server on Debian as root"
    )
    ensure_etcd_cmd.add_argument("--no-install", action="store_true", help="only check")
    ensure_redis_cmd = commands.add_parser(
        "ensure-redis", help="check redis-server works here; install it on Debian as root"
    )
    ensure_redis_cmd.add_argument(
        "--no-install", action="store_true", help="only check: never apt-get"
    )
    commands.add_parser(
        "stop-docker-zookeeper",
        help="stop the container ensure-zookeeper started, if any, and delete its hosts file",
    )
    serve_cmd = commands.add_parser("serve", help="run a test server until Ctrl-C")
    serve_cmd.add_argument("--tick-time", type=int, default=100, help="ms (default 100)")
    serve_cmd.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    if args.command == "ensure-zookeeper":
        return ensure_zookeeper(install=not args.no_install, docker=not args.no_docker)
    if args.command == "ensure-etcd":
        return ensure_etcd(install=not args.no_install)
    if args.command == "ensure-redis":
        return ensure_redis(install=not args.no_install)
    if args.command == "stop-docker-zookeeper":
        return stop_docker_zookeeper()
    return serve(args.tick_time, args.port)


if __name__ == "__main__":
    sys.exit(main())
