"""The ``goworker-py`` command line without ZooKeeper: settings, cluster-mode rules, errors that
name the flag, logging defaults, handler modules that fail to import, fail-fast ``status``."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, loguru_restored

from goworker_py import DiscoveryConfig, LoggerConfig, Model, WorkerConfig, __version__
from goworker_py.cli import build_parser, build_worker, config_from_args, main
from goworker_py.cli_options import CLUSTER_OPTIONS, flag_advice
from goworker_py.config import load_config

pytestmark = pytest.mark.timeout(30)

JOB = """
from goworker_py import Handler

class Job(Handler):
    def do(self, ctx):
        ctx.logger.debug("debug-line")
        ctx.logger.info("info-line")
        ctx.logger.warning("warning-line")
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on ``sys.path`` for handler modules; loguru and sys.modules restored."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GOWORKER_"):
            monkeypatch.delenv(name)
    before = set(sys.modules)
    with loguru_restored():
        yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def module(directory: Path, name: str, code: str = JOB) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(code))
    return name


def args_of(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_process(
    cwd: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GOWORKER_")}
    environ.update(env or {})
    environ["PYTHONPATH"] = f"{cwd}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-m", "goworker_py.cli", *argv],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )


# -- cluster mode: on with --cluster or with any cluster-only option -------------------------------

CLUSTER_ARGS = {
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
    modules: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --cluster it would have run in local mode: every machine running every shard."""
    name = module(modules, f"job_{option}")
    flag = CLUSTER_OPTIONS[option]
    assert main(["run", f"{name}:Job", *CLUSTER_ARGS[option]]) == 2
    err = capsys.readouterr().err
    assert f"cluster mode (implied by {flag}) needs" in err
    assert ("--service NAME" if option == "zk" else "--zk HOST:PORT") in err


@pytest.mark.parametrize("option", sorted(CLUSTER_ARGS))
def test_with_hosts_and_service_every_cluster_option_builds_a_cluster_worker(
    modules: Path, option: str
) -> None:
    name = module(modules, f"job_c_{option}")
    base = ["--zk", "zk1:2181", "--service", "reports"]
    worker = build_worker(args_of("run", f"{name}:Job", *base, *CLUSTER_ARGS[option]))
    assert worker.model is Model.CLUSTER
    assert worker.service_name == "reports"


def test_hosts_in_the_config_turn_cluster_mode_on(
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module(modules, "job_cfg")
    config = modules / "worker.toml"
    config.write_text('[discovery]\nhosts = "zk1:2181"\n')
    assert main(["run", f"{name}:Job", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "cluster mode (implied by ZooKeeper hosts in the config) needs --service NAME" in err
    worker = build_worker(args_of("run", f"{name}:Job", "--config", str(config), "--service", "x"))
    assert worker.model is Model.CLUSTER


def test_without_cluster_options_run_is_local(modules: Path) -> None:
    name = module(modules, "job_local")
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
    modules: Path, flags: list[str], path: tuple[str, ...], value: object
) -> None:
    config_path, from_file = file_config(modules)
    expected = replaced(from_file, path, value) if path else from_file
    name = module(modules, "job_paths")
    args = args_of("run", f"{name}:Job", "--config", str(config_path), "--service", "s", *flags)
    assert config_from_args(args) == expected
    assert build_worker(args).config == expected  # what the worker is given


@pytest.mark.parametrize(("flags", "path", "value"), FLAG_PATHS, ids=lambda p: None)
def test_flags_override_the_environment_without_a_config_file(
    modules: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    path: tuple[str, ...],
    value: object,
) -> None:
    _, from_file = file_config(modules)
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


# -- logging defaults ---------------------------------------------------------------------------

LEAKY = """
from goworker_py import Handler

def connect(secret):
    raise RuntimeError("login refused")

class Job(Handler):
    def do(self, ctx):
        ctx.logger.debug("debug-line")
        ctx.logger.info("info-line")
        if ctx.attempt == 1:
            password = "hunter2-" + "topsecret"
            connect(password)
"""


def test_run_logs_at_info_and_never_prints_local_variables(tmp_path: Path) -> None:
    """loguru's default sink is DEBUG with diagnose=True: a password in a failing handler's
    local variable would be printed with the traceback."""
    module(tmp_path, "leaky", LEAKY)
    result = cli_process(tmp_path, "run", "leaky:Job")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "login refused" in err and "Traceback" in err  # the failure is logged, in full
    assert "hunter2-topsecret" not in err
    assert "info-line" in err
    assert "debug-line" not in err and "| DEBUG" not in err


@pytest.mark.parametrize(
    ("argv", "env", "shown", "hidden"),
    [
        ([], {"GOWORKER_LOGGER_LEVEL": "WARNING"}, ["warning-line"], ["info-line"]),
        (["--log-level", "debug"], {}, ["debug-line", "info-line"], []),
        (["--log-level", "error"], {"GOWORKER_LOGGER_LEVEL": "DEBUG"}, [], ["warning-line"]),
        ([], {"GOWORKER_LOGGER_SERIALIZE": "true"}, ['"message": "info-line"'], ["debug-line"]),
    ],
    ids=["environment", "flag", "flag-over-environment", "environment-json"],
)
def test_log_level_from_the_environment_and_the_flag(
    tmp_path: Path, argv: list[str], env: dict[str, str], shown: list[str], hidden: list[str]
) -> None:
    module(tmp_path, "job")
    result = cli_process(tmp_path, "run", "job:Job", *argv, env=env)
    assert result.returncode == 0, result.stderr
    for text in shown:
        assert text in result.stderr
    for text in hidden:
        assert text not in result.stderr


# -- errors name the flag -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cron", "* * *"], "goworker-py: --cron: invalid cron expression"),
        (["--params", "oops"], "goworker-py: --params: params item 1 'oops' has no '='"),
        (["--params", "5=a", "--shards", "2"], "--params names shard(s) 5 but --shards is 2"),
        (["--cluster"], "cluster mode needs ZooKeeper hosts: pass --zk HOST:PORT"),
        (["--cluster", "--zk", "h:1"], "cluster mode needs --service NAME"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
    ],
)
def test_run_errors_name_the_flag(
    modules: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    name = module(modules, "job_errors")
    assert main(["run", f"{name}:Job", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "=True" not in err and "WorkerConfig(" not in err and "sharding_total_count" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "0"], "argument --shards: must be an integer >= 1, got '0'"),
        (["--timeout", "0"], "argument --timeout: must be a number of seconds > 0"),
        (["--session-timeout", "x"], "argument --session-timeout: must be a number of seconds"),
        (["--shutdown-timeout", "-1"], "argument --shutdown-timeout: must be a number of sec"),
        (["--misfire-policy", "never"], "argument --misfire-policy: invalid choice: 'never'"),
        (["--tz", "Mars/Base"], "argument --tz: unknown time zone 'Mars/Base'"),
        (["--log-level", "loud"], "argument --log-level: unknown log level 'loud'"),
        (["--metrics-port", "70000"], "argument --metrics-port: must be a port number"),
    ],
)
def test_bad_flag_values_are_usage_errors_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "m:Job", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_library_advice_is_said_as_flags() -> None:
    conflict = (
        "service 'reports' in ZooKeeper has sharding_total_count=4, schedule='@every 1h' but "
        "this instance has sharding_total_count=2, schedule='@every 2h': start it with the same "
        "settings, or pass overwrite=True to replace them"
    )
    assert flag_advice(conflict) == (
        "service 'reports' in ZooKeeper has --shards 4, --cron '@every 1h' but this instance "
        "has --shards 2, --cron '@every 2h': start it with the same settings, or pass "
        "--overwrite to replace them"
    )
    timeout = "cannot reach ZooKeeper at 'h:1' within 2.0 s (connect_timeout): is it up?"
    assert "(--connect-timeout)" in flag_advice(timeout)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"goworker-py {__version__}"


def test_help_documents_cluster_mode_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "cluster mode: on with --cluster, and also whenever a cluster-only option" in out
    assert "exit codes: 0 ok; 1 a run-once worker's run failed; 2 bad input" in out
    assert "default 127.0.0.1" in out


# -- the new flags do what they say ---------------------------------------------------------------


def test_worker_flags_reach_the_worker(modules: Path) -> None:
    name = module(modules, "job_flags")
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


def test_timeout_stops_the_worker(modules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module(modules, "job_timeout")
    began = time.monotonic()
    assert main(["run", f"{name}:Job", "--cron", "@every 1h", "--timeout", "0.3"]) == 0
    assert 0.3 <= time.monotonic() - began < 5
    assert "worker ended (timed_out)" in capsys.readouterr().err


def test_metrics_listen_on_this_machine_only_by_default() -> None:
    assert args_of("run", "m:Job", "--metrics-port", "9100").metrics_host == "127.0.0.1"


# -- handler modules that cannot be imported -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "first_line", "in_traceback"),
    [
        (
            "import os\nraise RuntimeError('no DATABASE_URL')\n",
            "handler module 'broken' raised RuntimeError while being imported: no DATABASE_URL",
            ['broken.py", line 2, in <module>', "RuntimeError: no DATABASE_URL"],
        ),
        (
            "class Job:\n    def do(self, ctx)\n        pass\n",
            "handler module 'broken' raised SyntaxError while being imported",
            ['broken.py", line 2', "SyntaxError"],
        ),
        (
            "import not_installed_dependency_xyz\n",
            "handler module 'broken' raised ModuleNotFoundError while being imported",
            ['broken.py", line 1', "No module named 'not_installed_dependency_xyz'"],
        ),
    ],
    ids=["exception", "syntax-error", "missing-dependency"],
)
def test_a_module_that_raises_on_import_is_named_with_its_traceback(
    modules: Path,
    capsys: pytest.CaptureFixture[str],
    code: str,
    first_line: str,
    in_traceback: list[str],
) -> None:
    module(modules, "broken", code)
    assert main(["run", "broken:Job"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"goworker-py: {first_line}" or lines[0].startswith(
        f"goworker-py: {first_line}"
    )
    rest = "\n".join(lines[1:])
    assert lines[1] == "Traceback (most recent call last):" or "SyntaxError" in first_line
    for text in in_traceback:
        assert text in rest
    assert "goworker_py/cli" not in rest, "the traceback starts in the user's module"
    assert "importlib" not in rest


def test_a_missing_module_or_attribute_is_one_line(
    modules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "no_such_module_xyz:Job"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("goworker-py: cannot import handler module 'no_such_module_xyz'")
    assert "PYTHONPATH" in err and "Traceback" not in err
    name = module(modules, "job_attr")
    assert main(["run", f"{name}:Nope"]) == 2
    assert capsys.readouterr().err == (
        f"goworker-py: handler module '{name}' has no attribute 'Nope'\n"
    )
    assert main(["run", "just_a_module"]) == 2
    assert "module:Handler" in capsys.readouterr().err


def test_import_error_exit_code_from_the_shell(tmp_path: Path) -> None:
    module(tmp_path, "broken_cli", "raise ValueError('bad setting')\n")
    result = cli_process(tmp_path, "run", "broken_cli:Job")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "goworker-py: handler module 'broken_cli' raised ValueError while being imported: "
        "bad setting"
    )
    assert lines[1:] == [
        "Traceback (most recent call last):",
        f'  File "{tmp_path / "broken_cli.py"}", line 1, in <module>',
        "    raise ValueError('bad setting')",
        "ValueError: bad setting",
    ]


# -- service commands without a reachable ZooKeeper ------------------------------------------------


@pytest.mark.parametrize("command", ["status", "pause", "trigger"])
def test_a_refused_connection_fails_fast_with_one_line(
    capfd: pytest.CaptureFixture[str], command: str
) -> None:
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    began = time.monotonic()
    assert main([command, "--zk", hosts, "--service", "reports"]) == 2  # connect timeout 10 s
    took = time.monotonic() - began
    out, err = capfd.readouterr()
    assert took < 2.0, f"took {took:.1f} s"
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"goworker-py: cannot reach ZooKeeper at '{hosts}'")
    assert "refused the connection" in err


def test_service_commands_name_missing_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--service", "reports"]) == 2
    assert "pass --zk HOST:PORT" in capsys.readouterr().err
    assert main(["pause", "--zk", "h:1", "--service", ""]) == 2
    assert "--service must name the service" in capsys.readouterr().err


def test_validate_cron_prints_the_next_fire_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-cron", "0 9 * * 1-5", "-n", "3", "--tz", "UTC"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "'0 9 * * 1-5' is valid; next 3 fire time(s):"
    assert len(lines) == 4 and all(line.endswith("09:00:00+00:00") for line in lines[1:])
