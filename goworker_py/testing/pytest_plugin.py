"""pytest fixtures for tests against real ZooKeeper servers.

Enable with ``pytest_plugins = ["goworker_py.testing.pytest_plugin"]`` in a ``conftest.py``.

- ``zookeeper``: one server for the whole session (tick 100 ms, so sessions may be as short as
  0.2 s). With ``ZK_HOSTS`` set, that existing server instead (an :class:`ExternalZooKeeper`);
  likewise, while ``ZK_HOSTS`` is unset, the Docker container whose hosts ``python -m
  goworker_py.testing ensure-zookeeper`` recorded in ``.zk_hosts`` (see ``testing.docker``).
- ``zk_chroot`` / ``zk_hosts`` / ``zk_client``: a fresh chroot per test on that server, the
  connection string with the chroot appended, and a connected kazoo client on it. Tests never
  see each other's nodes; the chroot is deleted afterwards.
- ``zookeeper_admin``: a kazoo client on the shared server's root, for looking across chroots.
- ``zookeeper_private``: a server of the test's own, to stop, restart or pause freely.
- ``zookeeper_ensemble``: a 3-server quorum shared by the tests of one module.
- ``etcd_server``: one etcd for the whole session (never stop or pause it); ``etcd_namespace``:
  a fresh namespace (key prefix) on it per test, deleted afterwards; ``etcd_private``: an etcd
  of the test's own, to stop, restart or pause; ``etcd_cluster``: a 3-member etcd cluster shared
  by the tests of one module (see :mod:`goworker_py.testing.etcd`).
- ``redis_server``: one ``redis-server`` for the whole session (no persistence);
  ``redis_private``: one of the test's own, to stop, restart (every key gone) or pause freely;
  ``redis_namespace``: a fresh key namespace per test (``DiscoveryConfig.namespace``).

When a test fails, the tail of each server log it used is added to its report. When ZooKeeper,
etcd or redis-server is missing, tests that need it are skipped with what to install, except in
CI (``CI`` set), where they fail: a CI run that silently skips its cluster tests proves nothing.
"""

from __future__ import annotations

import base64
import os
import re
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError, NotEmptyError
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.testing.clients import observer_client
from goworker_py.testing.docker import read_hosts_file
from goworker_py.testing.ensemble import ZooKeeperEnsemble
from goworker_py.testing.errors import (
    EtcdNotFound,
    RedisNotFound,
    ZooKeeperError,
    ZooKeeperNotFound,
)
from goworker_py.testing.etcd import EtcdCluster, EtcdServer
from goworker_py.testing.external import ExternalZooKeeper
from goworker_py.testing.network import with_chroot
from goworker_py.testing.process import ServerCluster, ServerProcess
from goworker_py.testing.redis import RedisServer
from goworker_py.testing.zookeeper import ZooKeeperServer

LOG_TAIL_LINES = 200
TICK_TIME_MS = 100
_EXTERNAL_REASON = (
    "needs a ZooKeeper process of its own to stop, pause or restart; "
    "{source} points at an external server"
)

_STALE_HOSTS_FILE = (
    ": start it again with `python -m goworker_py.testing ensure-zookeeper` (make zookeeper), "
    "or delete that file to use a local ZooKeeper"
)

_S = TypeVar("_S", bound="ServerProcess | ServerCluster[Any]")


def running_in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """``True`` when the ``CI`` variable is set to something other than empty/0/false/no."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def zookeeper_missing(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the current test because ZooKeeper is missing, or fail it when running in CI."""
    server_missing("ZooKeeper", reason, environ)


def server_missing(what: str, reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the current test because the server ``what`` is missing, or fail it in CI."""
    if running_in_ci(environ):
        pytest.fail(f"{what} is required when CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


def etcd_missing(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the current test because etcd is missing, or fail it when running in CI."""
    server_missing("etcd", reason, environ)


def _serve(start: Callable[[], _S], missing: type[ZooKeeperError], what: str) -> Iterator[_S]:
    """Yield the server(s) ``start`` returns, and close them after the test(s).

    When ``start`` raises ``missing`` (the program ``what`` is not installed), the test is
    skipped, or failed in CI (:func:`server_missing`).
    """
    try:
        server = start()
    except missing as exc:
        server_missing(what, str(exc))
    try:
        yield server
    finally:
        server.close()


def _external_hosts() -> str | None:
    found = _external_source()
    return found[0] if found else None


def _external_source() -> tuple[str, str] | None:
    """``(hosts, where they come from)`` of the external server the tests use, if any.

    ``ZK_HOSTS``, else the hosts file ``ensure-zookeeper`` wrote for its Docker container.
    """
    if hosts := os.environ.get("ZK_HOSTS", "").strip():
        return hosts, f"ZK_HOSTS={hosts}"
    if recorded := read_hosts_file():
        return recorded.hosts, f"the Docker ZooKeeper in {recorded.path} ({recorded.hosts})"
    return None


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeperServer | ExternalZooKeeper]:
    """The session's shared ZooKeeper server. Never stop or pause it: see ``zookeeper_private``."""
    if found := _external_source():
        hosts, source = found
        external = ExternalZooKeeper(hosts)
        if not external.is_running:
            stale = "" if source.startswith("ZK_HOSTS") else _STALE_HOSTS_FILE
            zookeeper_missing(f"{source} does not answer{stale}")
        yield external
        return
    yield from _serve_zookeeper()


@pytest.fixture(scope="session")
def zookeeper_admin(zookeeper: ZooKeeperServer | ExternalZooKeeper) -> Iterator[KazooClient]:
    """A kazoo client on the shared server's root (no chroot), for setting up and cleaning up."""
    hosts = zookeeper.bare_hosts if isinstance(zookeeper, ExternalZooKeeper) else zookeeper.hosts
    yield from _started_client(hosts)


@pytest.fixture
def zk_chroot(
    request: pytest.FixtureRequest,
    zookeeper: ZooKeeperServer | ExternalZooKeeper,
    zookeeper_admin: KazooClient,
) -> Iterator[str]:
    """A fresh, empty path (``/t-<test name>-<uuid8>``) for this test; deleted afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    chroot = f"/t-{name}-{uuid.uuid4().hex[:8]}"
    base = zookeeper.chroot if isinstance(zookeeper, ExternalZooKeeper) else ""
    zookeeper_admin.ensure_path(base + chroot)
    yield chroot
    delete_tree(zookeeper_admin, base + chroot)


@pytest.fixture
def zk_hosts(zookeeper: ZooKeeperServer | ExternalZooKeeper, zk_chroot: str) -> str:
    """The shared server's connection string with this test's chroot appended."""
    return with_chroot(zookeeper.hosts, zk_chroot)


@pytest.fixture
def zk_client(zk_hosts: str) -> Iterator[KazooClient]:
    """A started kazoo client inside this test's chroot; stopped after the test."""
    yield from _started_client(zk_hosts)


def _started_client(hosts: str) -> Iterator[KazooClient]:
    """Yield a started kazoo client on ``hosts``; stop and close it afterwards."""
    client = observer_client(hosts)
    client.start(timeout=15.0)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture
def zookeeper_private() -> Iterator[ZooKeeperServer]:
    """A server for this test alone (tick 100 ms): stop, kill, restart or pause it at will."""
    if found := _external_source():
        pytest.skip(_EXTERNAL_REASON.format(source=found[1]))
    yield from _serve_zookeeper()


def _serve_zookeeper() -> Iterator[ZooKeeperServer]:
    yield from _serve(
        lambda: ZooKeeperServer(tick_time=TICK_TIME_MS).start(), ZooKeeperNotFound, "ZooKeeper"
    )


@pytest.fixture(scope="module")
def zookeeper_ensemble() -> Iterator[ZooKeeperEnsemble]:
    """A 3-server quorum for this module's tests. Restart members a test stopped, for the next."""
    if found := _external_source():
        pytest.skip(_EXTERNAL_REASON.format(source=found[1]))
    yield from _serve(
        lambda: ZooKeeperEnsemble(size=3, tick_time=TICK_TIME_MS).start(),
        ZooKeeperNotFound,
        "ZooKeeper",
    )


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's shared etcd. Never stop or pause it: see ``etcd_private``."""
    yield from _serve(lambda: EtcdServer().start(), EtcdNotFound, "etcd")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's shared Redis server (no persistence). Never stop or pause it: see
    ``redis_private``; keep tests apart with ``redis_namespace``."""
    yield from _serve(lambda: RedisServer().start(), RedisNotFound, "redis-server")


@pytest.fixture
def etcd_namespace(request: pytest.FixtureRequest, etcd_server: EtcdServer) -> Iterator[str]:
    """A fresh namespace (``t-<test name>-<uuid8>``) on the shared etcd; its keys are deleted
    afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    namespace = f"t-{name}-{uuid.uuid4().hex[:8]}"
    yield namespace
    prefix = f"/{namespace}/".encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    try:
        etcd_server.request(
            "kv/deleterange",
            {"key": base64.b64encode(prefix).decode(), "range_end": base64.b64encode(end).decode()},
        )
    except OSError as exc:  # cleanup must not fail a test
        warnings.warn(f"could not delete etcd namespace {namespace}: {exc!r}", stacklevel=2)


@pytest.fixture
def etcd_private() -> Iterator[EtcdServer]:
    """An etcd for this test alone: stop, kill, restart or pause it at will."""
    yield from _serve(lambda: EtcdServer().start(), EtcdNotFound, "etcd")


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster for this module's tests. Restart members a test stopped."""
    yield from _serve(lambda: EtcdCluster(size=3).start(), EtcdNotFound, "etcd")


@pytest.fixture
def redis_private() -> Iterator[RedisServer]:
    """A Redis server for this test alone: stop, kill, restart or pause it at will."""
    yield from _serve(lambda: RedisServer().start(), RedisNotFound, "redis-server")


@pytest.fixture
def redis_namespace(request: pytest.FixtureRequest) -> str:
    """A fresh key namespace (``t-<test name>-<uuid8>``) for this test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


def delete_tree(client: KazooClient, path: str, attempts: int = 5) -> None:
    """Delete ``path`` and everything under it; tolerate clients still writing there."""
    for _ in range(attempts):
        try:
            client.delete(path, recursive=True)
            return
        except NoNodeError:
            return
        except NotEmptyError:  # a client still creates nodes there: try again
            continue
        except (KazooException, KazooTimeoutError) as exc:  # cleanup must not fail a test
            warnings.warn(f"could not delete ZooKeeper path {path}: {exc!r}", stacklevel=2)
            return
    warnings.warn(f"could not delete ZooKeeper path {path}: still written to", stacklevel=2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, add the log tail of every test server (or cluster member) the test used.

    Also keeps each phase's report on the item (``item.rep_setup``, ``rep_call``,
    ``rep_teardown``), so a fixture finalizer can tell whether its test failed.
    """
    report = yield
    setattr(item, f"rep_{report.when}", report)
    if report.failed:
        funcargs: dict[str, object] = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            servers: list[ServerProcess] = []
            if isinstance(value, ServerProcess):
                servers = [value]
            elif isinstance(value, ServerCluster):
                servers = list(value.servers)
            for server in servers:
                title = f"{server.kind} log ({name}: {server.hosts}), last {LOG_TAIL_LINES} lines"
                report.sections.append((title, server.log_tail(LOG_TAIL_LINES)))
    return report
