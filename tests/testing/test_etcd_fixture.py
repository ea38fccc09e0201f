"""The etcd test servers (``goworker_py.testing.etcd``) and their pytest fixtures."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from goworker_py.testing.__main__ import ensure_etcd
from goworker_py.testing.errors import EtcdNotFound
from goworker_py.testing.etcd import EtcdServer, find_etcd
from goworker_py.testing.pytest_plugin import etcd_missing

REPO_ROOT = Path(__file__).resolve().parents[2]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put(server: EtcdServer, key: str, value: str) -> None:
    server.request("kv/put", {"key": _b64(key), "value": _b64(value)})


def get(server: EtcdServer, key: str) -> str | None:
    kvs = server.request("kv/range", {"key": _b64(key)}).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def test_the_shared_server_serves_and_namespaces_are_fresh(
    etcd_server: EtcdServer, etcd_namespace: str
) -> None:
    assert etcd_server.healthy()
    assert etcd_namespace.startswith("t-test_the_shared_server")
    assert get(etcd_server, f"/{etcd_namespace}/x") is None


@pytest.mark.timeout(60)
def test_restart_keeps_the_data_and_the_ports(etcd_private: EtcdServer) -> None:
    put(etcd_private, "/k", "v")
    hosts = etcd_private.hosts
    etcd_private.restart(kill=True)
    assert etcd_private.hosts == hosts and get(etcd_private, "/k") == "v"
    etcd_private.stop()
    assert not etcd_private.is_running and not etcd_private.healthy()
    etcd_private.start()
    assert get(etcd_private, "/k") == "v"


def test_a_paused_server_answers_nothing_until_resumed(etcd_private: EtcdServer) -> None:
    with etcd_private.paused():
        assert etcd_private.is_paused and not etcd_private.healthy()
    assert etcd_private.healthy()


def test_find_etcd_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EtcdNotFound, match="apt-get install -y etcd-server"):
        find_etcd({"ETCD_BINARY": str(tmp_path / "no-etcd")})


def test_ensure_etcd_reports_a_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_BINARY", "/nonexistent/etcd")
    out, err = io.StringIO(), io.StringIO()
    assert ensure_etcd(out=out, err=err) == 1
    assert "apt-get install -y etcd-server" in err.getvalue()


def test_ensure_etcd_starts_a_server() -> None:
    try:
        find_etcd()
    except EtcdNotFound as exc:
        etcd_missing(str(exc))
    out = io.StringIO()
    assert ensure_etcd(install=False, out=out, err=io.StringIO()) == 0
    assert re.search(r"etcd OK: .*a test server started in", out.getvalue())


@pytest.mark.parametrize("value", ["true", "1"])
def test_missing_etcd_fails_in_ci(value: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="etcd is required when CI is set"):
        etcd_missing("install it", environ={"CI": value})


def test_missing_etcd_skips_locally() -> None:
    with pytest.raises(pytest.skip.Exception, match="install it"):
        etcd_missing("install it", environ={})


@pytest.mark.timeout(60)
def test_a_failing_test_reports_the_etcd_log_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            def test_fails(etcd_private):
                print("DATA_DIR=" + str(etcd_private.data_dir))
                assert False, "boom"
            """
        )
    )
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")])
    )
    plugin = ["-p", "goworker_py.testing.pytest_plugin", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin, "test_inner.py"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "etcd log (etcd_private: 127.0.0.1:" in out
    assert "starting an etcd server" in out  # a line of etcd's own log
    printed = re.search(r"DATA_DIR=(/\S+)", out)
    assert printed is not None, out
    data_dir = Path(printed.group(1))
    assert data_dir.name.startswith("goworker-etcd-") and not data_dir.exists()
