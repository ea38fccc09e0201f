"""ZooKeeper in a Docker container, for machines with a Docker engine but no ZooKeeper.

``python -m goworker_py.testing ensure-zookeeper`` falls back to this when ZooKeeper is neither
installed nor installable with apt here: it starts ``zookeeper:3.8`` on a loopback port, waits
until it answers ``ruok``, and records its hosts in a hosts file (``.zk_hosts`` in the current
directory, or ``$GOWORKER_ZK_HOSTS_FILE``). While ``ZK_HOSTS`` is unset, the pytest plugin reads
that file and then behaves exactly as with ``ZK_HOSTS``. ``stop-docker-zookeeper`` stops the
container and deletes the file; ``make test`` runs it after the tests.

A Docker *engine* is needed, not only the ``docker`` command: ``docker info`` must succeed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from goworker_py.testing.errors import ZooKeeperError
from goworker_py.testing.network import four_letter_word

DOCKER_IMAGE = "zookeeper:3.8"
CONTAINER_PREFIX = "goworker-test-zk-"
HOSTS_FILE_NAME = ".zk_hosts"
HOSTS_FILE_ENV = "GOWORKER_ZK_HOSTS_FILE"
# Like the local test servers (goworker_py.testing.zookeeper): tick 100 ms, sessions from 0.2 s
# to 60 s, no per-IP connection limit (behind Docker's proxy every client has the same IP).
CONTAINER_ENV = (
    "ZOO_4LW_COMMANDS_WHITELIST=*",
    "ZOO_TICK_TIME=100",
    "ZOO_MAX_CLIENT_CNXNS=0",
    "ZOO_CFG_EXTRA=minSessionTimeout=200 maxSessionTimeout=60000",
)
ENGINE_TIMEOUT = 5.0  # seconds `docker info` may take
RUN_TIMEOUT = 600.0  # `docker run`, which pulls the image the first time
READY_TIMEOUT = 60.0  # from `docker run` returning to `ruok` answering `imok`
STOP_TIMEOUT = 60.0
STOP_HINT = "python -m goworker_py.testing stop-docker-zookeeper"

_CONTAINER_LINE = re.compile(r"^#\s*container:\s*(\S+)\s*$")


class DockerError(ZooKeeperError):
    """Docker could not start (or stop) the ZooKeeper container."""


@dataclass(frozen=True)
class DockerZooKeeper:
    """A ZooKeeper container recorded in a hosts file: its hosts, its name, and that file."""

    hosts: str
    container: str | None
    path: Path


def hosts_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the hosts of the container go: ``$GOWORKER_ZK_HOSTS_FILE``, else ``./.zk_hosts``."""
    env = os.environ if environ is None else environ
    if override := env.get(HOSTS_FILE_ENV, "").strip():
        return Path(override).expanduser().absolute()
    return Path.cwd() / HOSTS_FILE_NAME


def read_hosts_file(path: Path | None = None) -> DockerZooKeeper | None:
    """The recorded container, or ``None`` when the file is missing, unreadable or empty."""
    path = hosts_file() if path is None else path
    try:
        text = path.read_text()
    except OSError:
        return None
    hosts, container = "", None
    for line in text.splitlines():
        line = line.strip()
        if match := _CONTAINER_LINE.match(line):
            container = match.group(1)
        elif line and not line.startswith("#") and not hosts:
            hosts = line
    return DockerZooKeeper(hosts, container, path) if hosts else None


def write_hosts_file(hosts: str, container: str, path: Path | None = None) -> DockerZooKeeper:
    """Record ``hosts`` (served by ``container``) for the pytest plugin."""
    path = hosts_file() if path is None else path
    path.write_text(
        f"{hosts}\n"
        f"# container: {container}\n"
        f"# ZooKeeper in Docker, started by `python -m goworker_py.testing ensure-zookeeper`.\n"
        f"# The tests use it while ZK_HOSTS is unset. Stop it (and delete this file): "
        f"{STOP_HINT}\n"
    )
    return DockerZooKeeper(hosts, container, path)


def docker_engine_running(timeout: float = ENGINE_TIMEOUT) -> bool:
    """``True`` when ``docker info`` exits 0 within ``timeout``: a CLI *and* an engine."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def start_zookeeper_container(
    *,
    path: Path | None = None,
    run_timeout: float = RUN_TIMEOUT,
    ready_timeout: float = READY_TIMEOUT,
) -> DockerZooKeeper:
    """Start ``zookeeper:3.8`` on a loopback port, wait for ``imok``, and write the hosts file.

    Raises :class:`DockerError` (the container stopped again) when any step fails.
    """
    name = CONTAINER_PREFIX + secrets.token_hex(4)
    env = [arg for item in CONTAINER_ENV for arg in ("-e", item)]
    command = ["run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::2181", *env, DOCKER_IMAGE]
    try:
        _docker(command, timeout=run_timeout)
    except DockerError:
        _stop_quietly(name)  # `docker run` may have created it before failing or timing out
        raise
    try:
        address = _published_address(name)
        _wait_until_ok(address, ready_timeout, name)
        return write_hosts_file(f"{address[0]}:{address[1]}", name, path)
    except BaseException:  # incl. Ctrl-C: never leave a container nobody knows about
        _stop_quietly(name)
        raise


def stop_zookeeper_container(container: str) -> bool:
    """``docker stop`` the container: ``True`` if it was running, ``False`` if it was gone.

    Raises :class:`DockerError` when Docker fails otherwise, and :class:`ValueError` for a
    name this module would not have chosen (we never stop containers we did not start).
    """
    if not container.startswith(CONTAINER_PREFIX):
        raise ValueError(f"not a container of ours ({CONTAINER_PREFIX}*): {container}")
    try:
        _docker(["stop", container], timeout=STOP_TIMEOUT)
    except DockerError as exc:
        if "no such container" in str(exc).lower():
            return False
        raise
    return True


def _docker(args: list[str], *, timeout: float) -> str:
    docker = shutil.which("docker")
    if docker is None:
        raise DockerError("no `docker` command on the PATH")
    try:
        result = subprocess.run(
            [docker, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"`docker {' '.join(args)}` took longer than {timeout:.0f}s") from exc
    except OSError as exc:
        raise DockerError(f"`docker {' '.join(args)}` could not run: {exc}") from exc
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise DockerError(f"`docker {' '.join(args)}` exited {result.returncode}: {output}")
    return result.stdout


def _stop_quietly(name: str) -> None:
    with contextlib.suppress(DockerError):
        stop_zookeeper_container(name)


def _published_address(name: str) -> tuple[str, int]:
    # `docker port` prints e.g. "127.0.0.1:32768" (one line per published address).
    output = _docker(["port", name, "2181/tcp"], timeout=30.0)
    for line in output.splitlines():
        host, sep, port = line.strip().rpartition(":")
        if sep and port.isdigit():
            host = host.strip("[]")
            if host in ("", "0.0.0.0", "::"):
                host = "127.0.0.1"
            return host, int(port)
    raise DockerError(f"`docker port {name} 2181/tcp` named no port: {output.strip()!r}")


def _wait_until_ok(address: tuple[str, int], timeout: float, name: str) -> None:
    # Docker's proxy accepts connections before ZooKeeper listens (and then closes them empty),
    # so only the reply proves the server is up.
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            reply = four_letter_word(address, "ruok", timeout=2.0).strip()
            if reply == "imok":
                return
            last = f"answered {reply!r}" if reply else "closed the connection"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    logs = ""
    with contextlib.suppress(DockerError):
        logs = _docker(["logs", "--tail", "30", name], timeout=10.0)
    raise DockerError(
        f"the ZooKeeper container {name} did not answer `ruok` with `imok` on "
        f"{address[0]}:{address[1]} within {timeout:.0f}s (last: {last})"
        + (f"\nIts last log lines:\n{logs.rstrip()}" if logs.strip() else "")
    )
