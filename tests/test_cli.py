"""The ``goworker-py`` command line without ZooKeeper: logging defaults, errors that name the
flag, handler modules that fail to import, fail-fast service commands. (Settings and cluster
mode: test_cli_settings.py; against ZooKeeper: cluster/test_cli_cluster.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cli_support import args_of, cli_process, free_port, module

from goworker_py import __version__
from goworker_py.cli import main
from goworker_py.cli_options import flag_advice

pytestmark = pytest.mark.timeout(30)


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
        (
            ["--cluster"],
            "cluster mode needs discovery hosts: pass --discovery URL or --zk HOST:PORT",
        ),
        (["--cluster", "--zk", "h:1"], "cluster mode needs --service NAME"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
    ],
)
def test_run_errors_name_the_flag(
    handler_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    name = module(handler_dir, "job_errors")
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


def test_timeout_stops_the_worker(handler_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module(handler_dir, "job_timeout")
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
    handler_dir: Path,
    capsys: pytest.CaptureFixture[str],
    code: str,
    first_line: str,
    in_traceback: list[str],
) -> None:
    module(handler_dir, "broken", code)
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
    handler_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "no_such_module_xyz:Job"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("goworker-py: cannot import handler module 'no_such_module_xyz'")
    assert "PYTHONPATH" in err and "Traceback" not in err
    name = module(handler_dir, "job_attr")
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
    assert "pass --discovery URL (e.g. zookeeper://zk1:2181" in capsys.readouterr().err
    assert main(["pause", "--zk", "h:1", "--service", ""]) == 2
    assert "--service must name the service" in capsys.readouterr().err


def test_validate_cron_prints_the_next_fire_times(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-cron", "0 9 * * 1-5", "-n", "3", "--tz", "UTC"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "'0 9 * * 1-5' is valid; next 3 fire time(s):"
    assert len(lines) == 4 and all(line.endswith("09:00:00+00:00") for line in lines[1:])
