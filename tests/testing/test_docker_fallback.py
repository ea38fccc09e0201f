"""``ensure-zookeeper``'s Docker fallback, against a fake ``docker`` first on the PATH.

The fake answers ``info``, ``run``, ``port``, ``stop`` and ``logs`` like Docker would; its
"containers" are local processes: a tiny TCP server answering ``ruok``/``srvr`` (the default),
or a real ZooKeeper test server (``python -m goworker_py.testing serve``). No network, no engine.
The local-install and apt paths are patched to report "not available".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import goworker_py
import goworker_py.testing.__main__ as cli
from goworker_py.testing import (
    INSTALL_HINT,
    ZooKeeperInstall,
    ZooKeeperNotFound,
    find_zookeeper,
    four_letter_word,
)
from goworker_py.testing.docker import (
    CONTAINER_PREFIX,
    HOSTS_FILE_ENV,
    HOSTS_FILE_NAME,
    DockerError,
    read_hosts_file,
    start_zookeeper_container,
    write_hosts_file,
)
from goworker_py.testing.network import split_hosts
from goworker_py.testing.pytest_plugin import _external_source

REPO_ROOT = Path(goworker_py.__file__).resolve().parent.parent

FAKE_DOCKER = r'''
"""A fake `docker`: "containers" are local processes; state lives in $FAKE_DOCKER_STATE."""
import json, os, signal, socket, subprocess, sys, time, uuid
from pathlib import Path

STATE = Path(os.environ["FAKE_DOCKER_STATE"])
NO_SUCH = "Error response from daemon: No such container: {}"


def main(argv):
    if argv[:1] == ["_serve"]:
        return serve(Path(argv[1]), float(os.environ.get("FAKE_ZK_READY_AFTER", "0.3")))
    with open(STATE / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(argv) + "\n")
    if (STATE / "engine-down").exists():
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
              "Is the docker daemon running?", file=sys.stderr)
        return 1
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "info":
        print("Server Version: 0.0.0-fake")
        return 0
    if command == "run":
        return run(args)
    if command == "port":
        container = load(args[0])
        if container is None:
            print(NO_SUCH.format(args[0]), file=sys.stderr)
            return 1
        print(f"127.0.0.1:{container['port']}")
        return 0
    if command == "stop":
        return stop([a for a in args if not a.startswith("-")])
    if command == "logs":
        print("fake zookeeper log line")
        return 0
    print(f"docker: '{command}' is not a docker command.", file=sys.stderr)
    return 1


def load(name):
    try:
        return json.loads((STATE / f"{name}.json").read_text())
    except FileNotFoundError:
        return None


def run(args):
    assert args[:2] == ["-d", "--rm"], args
    name = args[args.index("--name") + 1]
    assert args[args.index("-p") + 1] == "127.0.0.1::2181", args
    if load(name) is not None:
        print(f"docker: Error response from daemon: Conflict. {name} is in use.", file=sys.stderr)
        return 125
    log = open(STATE / f"{name}.log", "w")
    if os.environ.get("FAKE_DOCKER_BACKEND") == "zookeeper":
        from goworker_py.testing import free_ports
        port = free_ports(1)[0]
        cmd = [sys.executable, "-m", "goworker_py.testing", "serve", "--port", str(port)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    else:
        port_file = STATE / f"{name}.port"
        cmd = [sys.executable, __file__, "_serve", str(port_file)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while not port_file.exists():
            if time.monotonic() > deadline:
                return 1
            time.sleep(0.01)
        port = int(port_file.read_text())
    (STATE / f"{name}.json").write_text(json.dumps({"pid": proc.pid, "port": port, "args": args}))
    print(uuid.uuid4().hex + uuid.uuid4().hex)
    return 0


def gone(pid):
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def stop(names):
    status = 0
    for name in names:
        container = load(name)
        if container is None:
            print(NO_SUCH.format(name), file=sys.stderr)
            status = 1
            continue
        os.kill(container["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not gone(container["pid"]):
            if time.monotonic() > deadline:
                os.kill(container["pid"], signal.SIGKILL)
            time.sleep(0.02)
        (STATE / f"{name}.json").unlink()
        print(name)
    return status


def serve(port_file, ready_after):
    # Like a ZooKeeper behind Docker's proxy: connections are accepted at once, but closed
    # without an answer until the server is "up".
    listener = socket.create_server(("127.0.0.1", 0))
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(listener.getsockname()[1]))
    tmp.rename(port_file)
    up_at = time.monotonic() + ready_after
    replies = {b"ruok": b"imok", b"srvr": b"Zookeeper version: 3.8.4-fake\nMode: standalone\n"}
    while True:
        conn, _ = listener.accept()
        with conn:
            if time.monotonic() < up_at:
                continue
            conn.settimeout(2)
            word = b""
            try:
                while len(word) < 4 and (chunk := conn.recv(4 - len(word))):
                    word += chunk
            except OSError:
                continue
            conn.sendall(replies.get(word, b""))


sys.exit(main(sys.argv[1:]))
'''


class FakeDocker:
    """The fake ``docker`` on the PATH, and what it was asked and holds."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "docker-state"
        self.bin.mkdir()
        self.state.mkdir()
        script = self.bin / "docker"
        script.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
        script.chmod(0o755)

    def calls(self) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def commands(self) -> list[str]:
        return [call[0] for call in self.calls()]

    def containers(self) -> dict[str, dict[str, object]]:
        return {p.stem: json.loads(p.read_text()) for p in self.state.glob("*.json")}

    def engine_down(self) -> None:
        (self.state / "engine-down").touch()

    def kill_all(self) -> None:
        for container in self.containers().values():
            pid = container["pid"]
            assert isinstance(pid, int)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDocker]:
    """A fake ``docker`` first on the PATH; no local ZooKeeper, no apt; cwd is ``tmp_path``."""
    docker = FakeDocker(tmp_path)
    monkeypatch.setenv("PATH", f"{docker.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(docker.state))
    for name in ("ZK_HOSTS", HOSTS_FILE_ENV, "CI", "ZOOKEEPER_PATH", "ZOOKEEPER_CLASSPATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the hosts file goes to ./.zk_hosts

    def not_installed() -> ZooKeeperInstall:
        raise ZooKeeperNotFound(f"No ZooKeeper installation found.\n{INSTALL_HINT}")

    monkeypatch.setattr(cli, "find_zookeeper", not_installed)
    monkeypatch.setattr(cli, "can_apt_install", lambda: False)
    try:
        yield docker
    finally:
        docker.kill_all()


def ensure(**kwargs: bool) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.ensure_zookeeper(out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def stop() -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.stop_docker_zookeeper(out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "ZK_HOSTS", HOSTS_FILE_ENV)}
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")])
    )
    environ.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


def run_pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_source))
    plugin = ["-p", "goworker_py.testing.pytest_plugin", "-p", "no:cacheprovider"]
    return run_python(["-m", "pytest", *plugin, "-rs", "test_inner.py"], tmp_path)


def process_gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# -- engine present: a container, its hosts recorded ----------------------------------------------


@pytest.mark.timeout(60)
def test_engine_present_starts_a_container_and_records_its_hosts(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    code, out, err = ensure()
    assert code == 0, out + err
    [(name, container)] = fake_docker.containers().items()
    assert name.startswith(CONTAINER_PREFIX)
    assert fake_docker.commands()[:3] == ["info", "run", "port"]  # the engine was asked first
    args = container["args"]
    assert isinstance(args, list)
    for expected in ("--rm", "127.0.0.1::2181", "ZOO_4LW_COMMANDS_WHITELIST=*", "zookeeper:3.8"):
        assert expected in args
    assert args[-1] == "zookeeper:3.8"

    recorded = read_hosts_file()
    assert recorded is not None
    assert recorded.path == tmp_path / HOSTS_FILE_NAME
    assert recorded.container == name
    assert recorded.hosts == f"127.0.0.1:{container['port']}"
    [address], _ = split_hosts(recorded.hosts)
    assert four_letter_word(address, "ruok") == "imok"
    # How to stop it is printed.
    assert "stop-docker-zookeeper" in out and f"docker stop {name}" in out


@pytest.mark.timeout(60)
def test_the_plugin_uses_the_recorded_container(fake_docker: FakeDocker, tmp_path: Path) -> None:
    assert ensure()[0] == 0
    recorded = read_hosts_file()
    assert recorded is not None
    assert _external_source() == (
        recorded.hosts,
        f"the Docker ZooKeeper in {recorded.path} ({recorded.hosts})",
    )
    result = run_pytest(
        tmp_path,
        f"""
        from goworker_py.testing import ExternalZooKeeper

        def test_shared(zookeeper):
            assert isinstance(zookeeper, ExternalZooKeeper)
            assert zookeeper.hosts == "{recorded.hosts}"

        def test_private(zookeeper_private):
            pass

        def test_ensemble(zookeeper_ensemble):
            pass
        """,
    )
    out = result.stdout
    assert result.returncode == 0 and "1 passed, 2 skipped" in out, out + result.stderr
    assert "points at an external server" in out and HOSTS_FILE_NAME in out


@pytest.mark.timeout(30)
def test_zk_hosts_wins_over_the_recorded_container(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_hosts_file("127.0.0.1:1", CONTAINER_PREFIX + "x")
    monkeypatch.setenv("ZK_HOSTS", "127.0.0.1:2")
    assert _external_source() == ("127.0.0.1:2", "ZK_HOSTS=127.0.0.1:2")


@pytest.mark.timeout(60)
def test_an_earlier_container_is_replaced(fake_docker: FakeDocker) -> None:
    assert ensure()[0] == 0
    [first] = fake_docker.containers()
    code, out, err = ensure()
    assert code == 0, out + err
    [second] = fake_docker.containers()
    assert second != first and f"earlier run: {first}" in out
    recorded = read_hosts_file()
    assert recorded is not None and recorded.container == second


@pytest.mark.timeout(60)
def test_a_container_that_never_answers_is_stopped(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ZK_READY_AFTER", "3600")
    with pytest.raises(DockerError, match=r"did not answer `ruok`[\s\S]*fake zookeeper log line"):
        start_zookeeper_container(ready_timeout=1.0)
    assert fake_docker.containers() == {}
    assert "stop" in fake_docker.commands()
    assert read_hosts_file() is None


# -- no engine: the message naming what to install ------------------------------------------------


@pytest.mark.timeout(30)
def test_engine_absent_names_what_to_install(fake_docker: FakeDocker) -> None:
    fake_docker.engine_down()
    code, _, err = ensure()
    assert code == 1
    assert fake_docker.commands() == ["info"]  # only asked; nothing started
    for needed in ("apt-get install -y zookeeper", "ZOOKEEPER_PATH", "ZK_HOSTS", "docker info"):
        assert needed in err
    assert "needs root" in err
    assert read_hosts_file() is None


@pytest.mark.timeout(30)
def test_no_docker_command_names_what_to_install(
    fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = ensure()
    assert code == 1
    assert "no `docker` command" in err and "apt-get install -y zookeeper" in err
    assert fake_docker.calls() == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flag", ["--no-docker", "--no-install"])
def test_opting_out_never_asks_docker(fake_docker: FakeDocker, flag: str) -> None:
    code, _, err = ensure(docker=False) if flag == "--no-docker" else ensure(install=False)
    assert code == 1 and "apt-get install -y zookeeper" in err
    assert fake_docker.calls() == []


# -- stopping -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_removes_the_container_and_the_hosts_file(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    assert ensure()[0] == 0
    [(name, container)] = fake_docker.containers().items()
    pid = container["pid"]
    assert isinstance(pid, int)
    # As `make test` runs it: the command line, in the repo's cwd, with the fake docker on PATH.
    result = run_python(["-m", "goworker_py.testing", "stop-docker-zookeeper"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Stopped ZooKeeper container {name}" in result.stdout
    assert fake_docker.containers() == {}
    assert not (tmp_path / HOSTS_FILE_NAME).exists()
    deadline = time.monotonic() + 10
    while not process_gone(pid):
        assert time.monotonic() < deadline, "the container's process outlived `docker stop`"
        time.sleep(0.02)
    # Idempotent: nothing left to stop is no error.
    code, out, _ = stop()
    assert code == 0 and "No ZooKeeper container to stop" in out
    assert fake_docker.commands().count("stop") == 1


@pytest.mark.timeout(30)
def test_stop_when_the_container_is_already_gone(fake_docker: FakeDocker, tmp_path: Path) -> None:
    write_hosts_file("127.0.0.1:1", CONTAINER_PREFIX + "gone")
    code, out, err = stop()
    assert code == 0, out + err
    assert "Found no running ZooKeeper container" in out
    assert not (tmp_path / HOSTS_FILE_NAME).exists()


@pytest.mark.timeout(30)
def test_stop_leaves_a_hosts_file_that_names_no_container_of_ours(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    (tmp_path / HOSTS_FILE_NAME).write_text("127.0.0.1:2181\n# container: somebody-elses\n")
    code, out, _ = stop()
    assert code == 0 and "left alone" in out
    assert (tmp_path / HOSTS_FILE_NAME).exists()
    assert fake_docker.calls() == []


# -- the real thing behind the fake: a ZooKeeper server, and `make test` --------------------------


@pytest.fixture
def local_zookeeper() -> None:
    try:
        find_zookeeper()
    except ZooKeeperNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("local_zookeeper")
def test_a_real_server_in_the_container_serves_the_tests(
    fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_BACKEND", "zookeeper")
    code, out, err = ensure()
    assert code == 0, out + err
    result = run_pytest(
        tmp_path,
        """
        def test_writes(zk_client, zookeeper):
            zk_client.create("/node", b"hello")
            assert zk_client.get("/node")[0] == b"hello"
            assert zookeeper.mode() == "standalone"
        """,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
    assert stop()[0] == 0
    assert fake_docker.containers() == {}


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("pytest_status", [0, 3])
def test_make_test_stops_the_container_after_pytest(tmp_path: Path, pytest_status: int) -> None:
    """``make test`` runs ensure-zookeeper, ensure-etcd, ensure-redis, pytest, then
    stop-docker-zookeeper even on failure."""
    log = tmp_path / "python.log"
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        f'if [ "$1 $2" = "-m pytest" ]; then exit {pytest_status}; fi\n'
        "exit 0\n"
    )
    fake_python.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()  # newer than setup.cfg & co: nothing to install
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "test", f"PY={fake_python}", f"STAMP={stamp}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert log.read_text().splitlines() == [
        "-m goworker_py.testing ensure-zookeeper",
        "-m goworker_py.testing ensure-etcd",
        "-m goworker_py.testing ensure-redis",
        "-m pytest",
        "-m goworker_py.testing stop-docker-zookeeper",
    ]
    if pytest_status:
        assert result.returncode != 0 and "Error 3" in result.stderr, result.stderr
    else:
        assert result.returncode == 0, result.stderr
