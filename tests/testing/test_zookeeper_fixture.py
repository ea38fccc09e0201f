"""The ZooKeeper test fixture itself, against real servers: lifecycle, faults, isolation, plugin."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient, KazooState

import goworker_py
from goworker_py.cluster.backends.zookeeper.clock import ReplyClock
from goworker_py.testing import (
    ExternalZooKeeper,
    FaultInjectionUnsupported,
    ZooKeeperEnsemble,
    ZooKeeperError,
    ZooKeeperNotFound,
    ZooKeeperServer,
    expire_session,
    find_zookeeper,
    parse_mntr,
    with_chroot,
)
from goworker_py.testing.network import split_hosts
from goworker_py.testing.pytest_plugin import running_in_ci, zookeeper_missing

REPO_ROOT = Path(goworker_py.__file__).resolve().parent.parent


class Recorder:
    """A kazoo client plus the states it went through (appended on kazoo's thread)."""

    def __init__(self, hosts: str, session_timeout: float) -> None:
        self.states: list[str] = []
        self.lost = threading.Event()
        # Retry connecting often: the tests time how soon a client notices the server is back.
        retry = {"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 0.25}
        self.client = KazooClient(hosts=hosts, timeout=session_timeout, connection_retry=retry)
        # As goworker-py's backend does, give up a connect attempt not answered within T/3: a
        # restarting ZooKeeper accepts connections before it can serve them and leaves some
        # unanswered, which would hold kazoo's attempt until the restored session expired.
        ReplyClock(self.client, session_timeout)
        self.client.add_listener(self._on_state)
        self.client.start(timeout=10.0)

    def _on_state(self, state: str) -> None:
        self.states.append(state)
        if state == KazooState.LOST:
            self.lost.set()

    @property
    def session_id(self) -> int:
        client_id = self.client.client_id
        assert client_id is not None, "client is not connected"
        return int(client_id[0])

    def close(self) -> None:
        self.client.stop()
        self.client.close()


@pytest.fixture
def recorders() -> Iterator[Callable[[str, float], Recorder]]:
    """Makes recording clients; closes them all after the test."""
    made: list[Recorder] = []

    def make(hosts: str, session_timeout: float) -> Recorder:
        made.append(Recorder(hosts, session_timeout))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def root_path(zookeeper: ZooKeeperServer | ExternalZooKeeper, path: str) -> str:
    """``path`` as the admin client (connected without chroot) sees it."""
    return (zookeeper.chroot if isinstance(zookeeper, ExternalZooKeeper) else "") + path


# -- the shared server ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_shared_server_serves(zookeeper: ZooKeeperServer | ExternalZooKeeper) -> None:
    assert zookeeper.mode() in ("standalone", "leader", "follower")
    if isinstance(zookeeper, ZooKeeperServer):
        assert zookeeper.hosts == f"127.0.0.1:{zookeeper.port}"
        assert zookeeper.ruok()
        assert zookeeper.is_running and not zookeeper.is_paused
        assert zookeeper.last_start_seconds is not None and zookeeper.last_start_seconds < 20
        assert "ZooKeeperServer" in zookeeper.log_text()


@pytest.mark.timeout(30)
def test_mntr_returns_numbers(
    zookeeper: ZooKeeperServer | ExternalZooKeeper, zk_client: KazooClient
) -> None:
    before = zookeeper.mntr()["zk_packets_received"]
    for i in range(5):
        zk_client.create(f"/n{i}")
    after = zookeeper.mntr()
    assert isinstance(before, int) and isinstance(after["zk_packets_received"], int)
    assert after["zk_packets_received"] >= before + 5
    assert isinstance(after["zk_num_alive_connections"], int)
    assert parse_mntr("zk_version\t3.8.0\nzk_avg_latency\t0.5\nzk_znode_count\t4\n") == {
        "zk_version": "3.8.0",
        "zk_avg_latency": 0.5,
        "zk_znode_count": 4,
    }


_seen_chroots: list[str] = []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_gets_a_private_chroot(
    turn: str,
    zookeeper: ZooKeeperServer | ExternalZooKeeper,
    zookeeper_admin: KazooClient,
    zk_chroot: str,
    zk_hosts: str,
    zk_client: KazooClient,
) -> None:
    assert zk_hosts == with_chroot(zookeeper.hosts, zk_chroot)
    assert zk_chroot.startswith("/t-test_each_test_gets_a_private_chroot")
    assert zk_client.get_children("/") == []
    zk_client.create("/same-name", turn.encode())  # would raise NodeExistsError if shared
    assert zookeeper_admin.get(root_path(zookeeper, zk_chroot + "/same-name"))[0] == turn.encode()
    for earlier in _seen_chroots:  # the earlier test's chroot was deleted after it
        assert zookeeper_admin.exists(root_path(zookeeper, earlier)) is None
    _seen_chroots.append(zk_chroot)


@pytest.mark.timeout(30)
def test_expire_session_expires_on_the_server(
    zk_hosts: str, zk_client: KazooClient, recorders: Callable[[str, float], Recorder]
) -> None:
    victim = recorders(zk_hosts, 10.0)
    old_session = victim.session_id
    victim.client.create("/mine", ephemeral=True)
    started = time.monotonic()
    expire_session(victim.client, timeout=10.0)
    assert time.monotonic() - started < 10.0
    assert victim.lost.is_set() and KazooState.LOST in victim.states
    assert zk_client.exists("/mine") is None  # gone for everyone, not just for the victim
    wait_for(lambda: victim.client.connected, 10.0, "the victim to reconnect")
    assert victim.session_id != old_session


@pytest.mark.timeout(30)
def test_expire_session_needs_a_connected_client(zk_hosts: str) -> None:
    with pytest.raises(ZooKeeperError, match="not connected"):
        expire_session(KazooClient(hosts=zk_hosts))


@pytest.mark.timeout(30)
def test_external_server_refuses_faults(zookeeper: ZooKeeperServer | ExternalZooKeeper) -> None:
    bare_hosts = zookeeper.hosts.partition("/")[0]
    external = ExternalZooKeeper(bare_hosts + "/base")
    assert external.is_running
    assert external.chroot == "/base" and external.bare_hosts == bare_hosts
    assert isinstance(external.mntr()["zk_packets_received"], int)
    for fault in (external.stop, external.kill, external.pause, external.restart, external.start):
        with pytest.raises(FaultInjectionUnsupported, match="ZK_HOSTS"):
            fault()
    assert external.log_tail() == ""


# -- private servers: stop, restart, pause --------------------------------------------------------


@pytest.mark.timeout(30)
def test_stop_kill_and_start_again(zookeeper_private: ZooKeeperServer) -> None:
    server = zookeeper_private
    port, first_pid = server.port, server.pid
    server.stop()
    assert not server.is_running and server.mode() is None and server.pid is None
    server.start()
    assert server.port == port and server.pid != first_pid and server.mode() == "standalone"
    server.kill()
    assert not server.is_running and not server.ruok()
    server.start()
    assert server.ruok()
    assert server.log_text().count("---- goworker_py.testing: starting") == 3


@pytest.mark.timeout(30)
def test_restart_keeps_sessions_shorter_than_the_outage(
    zookeeper_private: ZooKeeperServer, recorders: Callable[[str, float], Recorder]
) -> None:
    client = recorders(zookeeper_private.hosts, 4.0)
    session = client.session_id
    client.client.create("/ephemeral", ephemeral=True)
    zookeeper_private.restart(down_for=0.5, kill=True)
    wait_for(lambda: client.client.connected, 10.0, "the client to reconnect")
    assert client.session_id == session
    assert client.client.exists("/ephemeral") is not None
    assert KazooState.SUSPENDED in client.states and KazooState.LOST not in client.states


@pytest.mark.timeout(30)
def test_short_pause_changes_nothing(
    zookeeper_private: ZooKeeperServer, recorders: Callable[[str, float], Recorder]
) -> None:
    client = recorders(zookeeper_private.hosts, 4.0)
    session = client.session_id
    with zookeeper_private.paused():
        while_paused = (zookeeper_private.is_paused, zookeeper_private.ruok(timeout=0.2))
        time.sleep(0.3)
    assert while_paused == (True, False) and not zookeeper_private.is_paused
    client.client.create("/after-pause")
    assert client.session_id == session and KazooState.LOST not in client.states


@pytest.mark.timeout(30)
def test_pause_longer_than_the_session_timeout_expires_it(
    zookeeper_private: ZooKeeperServer, recorders: Callable[[str, float], Recorder]
) -> None:
    observer = recorders(zookeeper_private.hosts, 10.0)
    victim = recorders(zookeeper_private.hosts, 0.6)
    victim.client.create("/victim", ephemeral=True)
    zookeeper_private.pause()
    # A stopped server's kernel still queues the victim's reconnects, and ZooKeeper may serve
    # one before it expires the session (see pause()); partition the victim too, as it would
    # be behind a real network partition, so the outcome is certain.
    victim.client.set_hosts("127.0.0.1:1")
    time.sleep(2.0)
    zookeeper_private.resume()
    wait_for(lambda: observer.client.exists("/victim") is None, 5.0, "the ephemeral to vanish")
    victim.client.set_hosts(zookeeper_private.hosts)
    assert victim.lost.wait(5.0), f"victim never saw LOST: {victim.states}"
    assert KazooState.LOST not in observer.states


# -- an ensemble ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ensemble_serves_and_survives_losing_its_leader(
    zookeeper_ensemble: ZooKeeperEnsemble, recorders: Callable[[str, float], Recorder]
) -> None:
    ensemble = zookeeper_ensemble
    assert len(ensemble.hosts.split(",")) == 3
    assert sorted(m or "" for m in ensemble.modes()) == ["follower", "follower", "leader"]
    client = recorders(ensemble.hosts, 6.0)
    client.client.create("/data", b"1")
    leader = ensemble.leader()
    killed = ensemble.stop_leader()
    assert killed == leader and not ensemble.servers[killed].is_running
    assert ensemble.leader() != killed
    client.client.retry(client.client.set, "/data", b"2")
    assert client.client.retry(client.client.get, "/data")[0] == b"2"
    ensemble.start(killed)  # it rejoins as a follower; the module's next test sees 3 servers
    assert ensemble.modes().count("leader") == 1 and all(ensemble.modes())
    assert KazooState.LOST not in client.states


# -- locating ZooKeeper, and skip-or-fail ---------------------------------------------------------


def test_find_zookeeper_prefers_an_explicit_classpath() -> None:
    env = {"ZOOKEEPER_CLASSPATH": "/x/zk.jar:/x/lib.jar", "PATH": os.environ.get("PATH", "")}
    found = find_zookeeper(env)
    assert found.classpath == "/x/zk.jar:/x/lib.jar" and found.source == "ZOOKEEPER_CLASSPATH"


def test_find_zookeeper_reads_an_unpacked_tarball(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    for name in ("zookeeper-3.8.4.jar", "zookeeper-jute-3.8.4.jar", "logback-classic.jar"):
        (tmp_path / "lib" / name).touch()
    found = find_zookeeper({"ZOOKEEPER_PATH": str(tmp_path), "PATH": os.environ["PATH"]})
    assert found.classpath.split(":") == sorted(str(p) for p in (tmp_path / "lib").iterdir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooKeeperNotFound, match="no zookeeper-"):
        find_zookeeper({"ZOOKEEPER_PATH": str(tmp_path / "empty")})


def test_find_zookeeper_builds_the_debian_classpath(tmp_path: Path) -> None:
    for name in ("zookeeper.jar", "zookeeper-jute.jar", "slf4j-simple.jar"):
        (tmp_path / name).touch()
    environment = tmp_path / "environment"
    environment.write_text(f'CLASSPATH="/etc/zk/conf:{tmp_path}/zookeeper.jar"\n')
    found = find_zookeeper(
        {"PATH": os.environ["PATH"]}, debian_java_dir=tmp_path, debian_environment=environment
    )
    assert found.classpath.split(":") == [
        "/etc/zk/conf",
        f"{tmp_path}/zookeeper.jar",
        f"{tmp_path}/zookeeper-jute.jar",
        f"{tmp_path}/slf4j-simple.jar",
    ]


def test_find_zookeeper_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ZooKeeperNotFound) as missing:
        find_zookeeper({}, debian_java_dir=tmp_path)
    message = str(missing.value)
    for needed in ("apt-get install -y zookeeper", "ZOOKEEPER_PATH", "ZK_HOSTS", "Java 17"):
        assert needed in message
    with pytest.raises(ZooKeeperNotFound, match="no `java`"):
        find_zookeeper({"ZOOKEEPER_CLASSPATH": "/x.jar", "PATH": str(tmp_path)})


def test_split_hosts_and_chroots() -> None:
    assert split_hosts("a:1,[::1]:2,b/base/") == ([("a", 1), ("::1", 2), ("b", 2181)], "/base")
    assert with_chroot("a:1,b:2", "/t-x") == "a:1,b:2/t-x"
    assert with_chroot("a:1/base", "/t-x") == "a:1/base/t-x"


@pytest.mark.parametrize("value", ["true", "1", "yes", "GitHub"])
def test_missing_zookeeper_fails_in_ci(value: str) -> None:
    assert running_in_ci({"CI": value})
    with pytest.raises(pytest.fail.Exception, match="required when CI is set: install"):
        zookeeper_missing("install it", environ={"CI": value})


@pytest.mark.parametrize("env", [{}, {"CI": ""}, {"CI": "0"}, {"CI": "false"}])
def test_missing_zookeeper_skips_locally(env: dict[str, str]) -> None:
    assert not running_in_ci(env)
    with pytest.raises(pytest.skip.Exception, match="install it"):
        zookeeper_missing("install it", environ=env)


# -- the plugin and cleanup, seen from another process ---------------------------------------------


def run_python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "ZK_HOSTS")}
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")])
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def run_pytest(tmp_path: Path, test_source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_source))
    plugin = ["-p", "goworker_py.testing.pytest_plugin", "-p", "no:cacheprovider"]
    return run_python(["-m", "pytest", *plugin, "-rs", "test_inner.py"], tmp_path, **env)


@pytest.fixture
def local_zookeeper() -> None:
    try:
        find_zookeeper()
    except ZooKeeperNotFound as exc:
        zookeeper_missing(str(exc))


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("local_zookeeper")
def test_a_failing_test_reports_the_server_log(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        def test_fails(zookeeper_private):
            print("DATA_DIR=" + str(zookeeper_private.data_dir))
            assert False, "boom"
        """,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "ZooKeeper log (zookeeper_private: 127.0.0.1:" in out
    assert "ZooKeeperServer" in out  # a line of the server's own log
    printed = re.search(r"DATA_DIR=(/\S+)", out)
    assert printed is not None, out
    data_dir = Path(printed.group(1))
    assert data_dir.name.startswith("goworker-zk-") and not data_dir.exists()


@pytest.mark.timeout(60)
def test_missing_zookeeper_skips_the_test_locally_and_fails_it_in_ci(tmp_path: Path) -> None:
    source = "def test_needs_zookeeper(zookeeper):\n    pass\n"
    absent = str(tmp_path / "no-such-zookeeper")
    local = run_pytest(tmp_path, source, ZOOKEEPER_PATH=absent)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert "apt-get install -y zookeeper" in local.stdout
    ci = run_pytest(tmp_path, source, ZOOKEEPER_PATH=absent, CI="true")
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout
    assert "ZooKeeper is required when CI is set" in ci.stdout


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status  # a zombie nobody reaps (PID 1 in a container) is dead too


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("local_zookeeper")
@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_servers_do_not_outlive_their_process(tmp_path: Path, ending: str) -> None:
    script = """
        import os, signal, sys
        from goworker_py.testing import ZooKeeperServer
        server = ZooKeeperServer().start()
        print(server.pid, server.data_dir, flush=True)
        if sys.argv[1] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    """
    (tmp_path / "leak.py").write_text(textwrap.dedent(script))
    result = run_python(["leak.py", ending], tmp_path)
    pid_text, data_dir = result.stdout.split()
    wait_for(lambda: process_gone(int(pid_text)), 10.0, "the JVM to die")
    if ending == "exit":  # atexit ran: the temp dir is gone too
        assert not Path(data_dir).exists()
    else:  # nothing ran in the killed process: only the JVM is guaranteed to go
        shutil.rmtree(data_dir, ignore_errors=True)
