"""``goworker-py run``'s settings: when cluster mode is on, and every setting of a config file,
of ``GOWORKER_*`` variables and of the flags reaching the worker (none lost on the way)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import args_of, module

from goworker_py import DiscoveryConfig, LoggerConfig, Model, WorkerConfig
from goworker_py.cli import build_worker, config_from_args, main
from goworker_py.cli_options import CLUSTER_OPTIONS
from goworker_py.config import load_config

pytestmark = pytest.mark.timeout(30)


# -- cluster mode: on with --cluster or with any cluster-only option -------------------------------

CLUSTER_ARGS = {
    "discovery": ["--discovery", "etcd://127.0.0.1:2379"],
    "zk": ["--zk", "zk1:2181"],
    "service": ["--service", "reports"],
    "namespace": ["--namespace", "jobs"],
    "session_timeout": ["--session-timeout", "4"],
    "connect_timeout": ["--connect-timeout", "2"],
    "overwrite": ["--overwrite"],
    "no_failover": ["--no-failover"],
}


def test_every_cluster_only_option_is_covered() -> None:
    assert set(CLUSTER_ARGS) == set(CLUSTER_OPTIONS)


@pytest.mark.parametrize("option", sorted(CLUSTER_ARGS))
def test_a_cluster_only_option_alone_turns_cluster_mode_on(
    handler_dir: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --cluster it would have run in local mode: every machine running every shard."""
    name = module(handler_dir, f"job_{option}")
    flag = CLUSTER_OPTIONS[option]
    assert main(["run", f"{name}:Job", *CLUSTER_ARGS[option]]) == 2
    err = capsys.readouterr().err
    assert f"cluster mode (implied by {flag}) needs" in err
    assert ("--service NAME" if option in ("zk", "discovery") else "--zk HOST:PORT") in err


@pytest.mark.parametrize("option", sorted(CLUSTER_ARGS))
def test_with_hosts_and_service_every_cluster_option_builds_a_cluster_worker(
    handler_dir: Path, option: str
) -> None:
    name = module(handler_dir, f"job_c_{option}")
    hosts = [] if option == "discovery" else ["--zk", "zk1:2181"]
    base = [*hosts, "--service", "reports"]
    worker = build_worker(args_of("run", f"{name}:Job", *base, *CLUSTER_ARGS[option]))
    assert worker.model is Model.CLUSTER
    assert worker.service_name == "reports"


def test_hosts_in_the_config_turn_cluster_mode_on(
    handler_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(handler_dir, "job_cfg")
    config = handler_dir / "worker.toml"
    config.write_text('[discovery]\nhosts = "zk1:2181"\n')
    assert main(["run", f"{name}:Job", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "cluster mode (implied by ZooKeeper hosts in the config) needs --service NAME" in err
    worker = build_worker(args_of("run", f"{name}:Job", "--config", str(config), "--service", "x"))
    assert worker.model is Model.CLUSTER


def test_without_cluster_options_run_is_local(handler_dir: Path) -> None:
    name = module(handler_dir, "job_local")
    worker = build_worker(args_of("run", f"{name}:Job", "--shards", "3", "--name", "rep"))
    assert worker.model is Model.LOCAL
    assert worker.sharding_total_count == 3
    assert worker.name == "rep"


# -- every setting survives every path -----------------------------------------------------------

FILE = """
shutdown_timeout = 12.5
timezone = "Europe/Berlin"
misfire_policy = "run_once"
misfire_grace_time = 3.5
handover_timeout = 4.5

[logger]
level = "WARNING"
sink = "{log}"
rotation = "10 MB"
retention = "3 days"
serialize = true
format = "{{message}}"
colorize = false
enqueue = true

[discovery]
protocol = "memory"
hosts = "zk1:2181,zk2:2181/chroot"
connect_timeout = 2.5
session_timeout = 6.0
namespace = "jobs"
auth_user = "svc"
auth_password = "secret"
use_ssl = true
certfile = "/etc/goworker/client.pem"
keyfile = "/etc/goworker/client.key"
ca = "/etc/goworker/ca.pem"
verify_certs = false
database = 2
"""

#: (flags, the field they set as a path into WorkerConfig, the value they set)
FLAG_PATHS: list[tuple[list[str], tuple[str, ...], object]] = [
    (["--zk", "zk9:2181"], ("discovery", "hosts"), "zk9:2181"),
    (["--namespace", "other"], ("discovery", "namespace"), "other"),
    (["--session-timeout", "7"], ("discovery", "session_timeout"), 7.0),
    (["--connect-timeout", "1.5"], ("discovery", "connect_timeout"), 1.5),
    (["--log-level", "error"], ("logger", "level"), "ERROR"),
    (["--shutdown-timeout", "4"], ("shutdown_timeout",), 4.0),
    (["--tz", "Asia/Tokyo"], ("timezone",), "Asia/Tokyo"),
    (["--misfire-policy", "skip"], ("misfire_policy",), "skip"),
]
#: Flags that change the worker, not its config.
OTHER_FLAGS = [
    ["--cluster"],
    ["--cron", "@every 1h"],
    ["--shards", "4", "--params", "0=a,3=d"],
    ["--name", "rep"],
    ["--timeout", "60"],
    ["--overwrite"],
    ["--no-failover"],
    ["--metrics-port", "0", "--metrics-host", "0.0.0.0"],
]


def file_config(directory: Path) -> tuple[Path, WorkerConfig]:
    path = directory / "full.toml"
    path.write_text(FILE.format(log=directory / "w.log"))
    return path, load_config(path, environ={})


def test_the_config_file_sets_every_field_to_a_non_default(tmp_path: Path) -> None:
    """Guards the next test: a new field must be added to FILE, or it would go unchecked."""
    _, config = file_config(tmp_path)
    sections = [
        (config, WorkerConfig()),
        (config.logger, LoggerConfig()),
        (config.discovery, DiscoveryConfig()),
    ]
    for value, default in sections:
        for field in dataclasses.fields(default):
            assert getattr(value, field.name) != getattr(default, field.name), (
                f"{type(default).__name__}.{field.name} is not set in FILE"
            )


def replaced(config: WorkerConfig, path: tuple[str, ...], value: object) -> WorkerConfig:
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    section = getattr(config, path[0])
    return dataclasses.replace(
        config, **{path[0]: dataclasses.replace(section, **{path[1]: value})}
    )


@pytest.mark.parametrize(
    ("flags", "path", "value"),
    [([], (), None), *FLAG_PATHS, *(([*f], (), None) for f in OTHER_FLAGS)],
    ids=lambda p: " ".join(p) if isinstance(p, list) else None,
)
def test_every_config_field_survives_every_cli_path(
    handler_dir: Path, flags: list[str], path: tuple[str, ...], value: object
) -> None:
    config_path, from_file = file_config(handler_dir)
    expected = replaced(from_file, path, value) if path else from_file
    name = module(handler_dir, "job_paths")
    args = args_of("run", f"{name}:Job", "--config", str(config_path), "--service", "s", *flags)
    assert config_from_args(args) == expected
    assert build_worker(args).config == expected  # what the worker is given


def test_a_discovery_url_sets_what_it_names_and_keeps_the_rest(handler_dir: Path) -> None:
    config_path, from_file = file_config(handler_dir)
    assert from_file.discovery is not None
    name = module(handler_dir, "job_url")
    url = "rediss://bob:pw@cache:6380/4"
    args = args_of("run", f"{name}:Job", "--config", str(config_path), "--discovery", url)
    expected = dataclasses.replace(
        from_file,
        discovery=dataclasses.replace(
            from_file.discovery,
            protocol="redis",
            hosts="cache:6380",
            use_ssl=True,
            auth_user="bob",
            auth_password="pw",
            database=4,
        ),
    )
    assert config_from_args(args) == expected


def test_a_discovery_url_and_zk_hosts_together_are_refused(
    handler_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(handler_dir, "job_both")
    both = ["--discovery", "etcd://e:2379", "--zk", "z:2181", "--service", "s"]
    assert main(["run", f"{name}:Job", *both]) == 2
    assert "pass --discovery URL or --zk HOSTS, not both" in capsys.readouterr().err
    assert main(["run", f"{name}:Job", "--discovery", "ftp://x:1", "--service", "s"]) == 2
    assert "--discovery: discovery URL 'ftp://x:1': unknown scheme" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "path", "value"), FLAG_PATHS, ids=lambda p: None)
def test_flags_override_the_environment_without_a_config_file(
    handler_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    path: tuple[str, ...],
    value: object,
) -> None:
    _, from_file = file_config(handler_dir)
    for key, field_value in flatten(from_file):
        monkeypatch.setenv("GOWORKER_" + key.upper(), env_text(field_value))
    assert config_from_args(args_of("run", "m:Job")) == from_file
    assert config_from_args(args_of("run", "m:Job", *flags)) == replaced(from_file, path, value)


def flatten(config: WorkerConfig) -> Iterator[tuple[str, object]]:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                yield f"{field.name}_{inner.name}", getattr(value, inner.name)
        else:
            yield field.name, value


def env_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_without_a_config_the_cli_logs_at_info_to_stderr() -> None:
    config = config_from_args(args_of("run", "m:Job"))
    assert config == WorkerConfig(logger=LoggerConfig())
    assert config.logger is not None and config.logger.level == "INFO"


def test_worker_flags_reach_the_worker(handler_dir: Path) -> None:
    name = module(handler_dir, "job_flags")
    worker = build_worker(
        args_of(
            "run",
            f"{name}:Job",
            "--zk",
            "h:1",
            "--service",
            "svc",
            "--name",
            "billing",
            "--timeout",
            "30",
            "--overwrite",
            "--no-failover",
            "--misfire-policy",
            "run_once",
            "--cron",
            "@every 1h",
            "--shards",
            "2",
            "--params",
            "0=a,1=b",
        )
    )
    assert (worker.name, worker.timeout, worker.overwrite, worker.failover) == (
        "billing",
        30.0,
        True,
        False,
    )
    assert worker.config is not None and worker.config.misfire_policy == "run_once"
    assert (worker.cron, worker.sharding_total_count, worker.params) == ("@every 1h", 2, "0=a,1=b")
    default = build_worker(args_of("run", f"{name}:Job", "--zk", "h:1", "--service", "svc"))
    assert (default.overwrite, default.failover, default.timeout) == (False, True, None)
