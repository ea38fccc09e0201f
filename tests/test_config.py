"""WorkerConfig, TOML loading and GOWORKER_* environment overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from goworker_py.config import (
    DiscoveryConfig,
    LoggerConfig,
    WorkerConfig,
    config_from_environment,
    config_from_mapping,
    default_worker_config,
    load_config,
)
from goworker_py.errors import ConfigError, ConfigFileError

pytestmark = pytest.mark.timeout(30)

FULL = """
shutdown_timeout = 20
timezone = "Europe/Berlin"
misfire_policy = "run_once"

[logger]
level = "DEBUG"
sink = "/var/log/myworker.log"
rotation = "100 MB"
retention = "7 days"
serialize = true

[discovery]
hosts = "zk1:2181,zk2:2181,zk3:2181"
session_timeout = 10
connect_timeout = 2.5
auth_user = "svc"
auth_password = "secret"
use_ssl = false
"""


def write(tmp_path: Path, text: str, name: str = "worker.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigFileError) as info:
        load_config(path, environ or {})
    return str(info.value)


# -- dataclasses ----------------------------------------------------------------------------------


def test_defaults() -> None:
    config = default_worker_config()
    assert config == WorkerConfig()
    assert config.logger is None and config.discovery is None
    assert config.shutdown_timeout == 30.0
    assert config.timezone is None
    assert config.misfire_policy == "skip"
    assert LoggerConfig().level == "INFO" and LoggerConfig().sink == "stderr"
    discovery = DiscoveryConfig()
    assert (discovery.protocol, discovery.hosts, discovery.session_timeout) == ("zookeeper", "", 10)


@pytest.mark.parametrize("timeout", [-1, -0.001, "5", None, True, float("nan"), float("inf")])
def test_worker_config_rejects_a_bad_shutdown_timeout(timeout: object) -> None:
    with pytest.raises(ConfigError, match="shutdown_timeout"):
        WorkerConfig(shutdown_timeout=timeout)  # type: ignore[arg-type]


def test_worker_config_rejects_a_bad_misfire_policy() -> None:
    with pytest.raises(ConfigError, match=r"misfire_policy must be one of skip, run_once"):
        WorkerConfig(misfire_policy="sometimes")
    assert WorkerConfig(misfire_policy="run_once").misfire_policy == "run_once"
    assert WorkerConfig(shutdown_timeout=0).shutdown_timeout == 0


# -- loading --------------------------------------------------------------------------------------


def test_load_a_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), environ={})
    assert config.shutdown_timeout == 20.0 and isinstance(config.shutdown_timeout, float)
    assert config.timezone == "Europe/Berlin"
    assert config.misfire_policy == "run_once"
    assert config.logger == LoggerConfig(
        level="DEBUG",
        sink="/var/log/myworker.log",
        rotation="100 MB",
        retention="7 days",
        serialize=True,
    )
    assert config.discovery == DiscoveryConfig(
        hosts="zk1:2181,zk2:2181,zk3:2181",
        session_timeout=10.0,
        connect_timeout=2.5,
        auth_user="svc",
        auth_password="secret",
    )
    assert isinstance(config.discovery.session_timeout, float)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == WorkerConfig()


def test_empty_sections_give_default_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[logger]\n[discovery]\n"), environ={})
    assert config.logger == LoggerConfig() and config.discovery == DiscoveryConfig()


def test_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown_timeout = 3")
    assert load_config(str(path), environ={}).shutdown_timeout == 3.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("foo = 1", "'foo'"),
        ("shutdown_timout = 1", "'shutdown_timout'"),
        ("[logger]\nlevl = 'INFO'", "'levl'"),
        ("[discovery]\nhost = 'zk:2181'", "'host'"),
        ("[metrics]\nport = 1", "'metrics'"),
    ],
)
def test_unknown_keys_are_named_with_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert "unknown key" in message
    assert key in message
    assert str(path) in message


def test_unknown_key_in_a_section_names_the_section(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "[logger]\nlevl = 'INFO'"))
    assert "[logger]" in message
    assert "level" in message  # the known keys are listed


@pytest.mark.parametrize(
    ("text", "key", "wanted"),
    [
        ('shutdown_timeout = "20"', "shutdown_timeout", "float"),
        ("shutdown_timeout = true", "shutdown_timeout", "float"),
        ("timezone = 5", "timezone", "str"),
        ("misfire_policy = 1", "misfire_policy", "str"),
        ("[logger]\nserialize = 1", "serialize", "bool"),
        ('[logger]\nserialize = "yes"', "serialize", "bool"),
        ('[logger]\nlevel = ["INFO"]', "level", "str"),
        ("[discovery]\nuse_ssl = 1", "use_ssl", "bool"),
        ("[discovery]\nsession_timeout = true", "session_timeout", "float"),
        ('[discovery]\nconnect_timeout = "10"', "connect_timeout", "float"),
        ("[discovery]\nhosts = 2181", "hosts", "str"),
    ],
)
def test_wrong_types_name_key_file_and_expected_type(
    tmp_path: Path, text: str, key: str, wanted: str
) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert repr(key) in message
    assert str(path) in message
    assert f"must be {wanted}" in message


@pytest.mark.parametrize("text", ["logger = 5", 'logger = "stderr"', "discovery = [1, 2]"])
def test_a_section_that_is_not_a_table(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert "must be a table" in message
    assert str(path) in message


@pytest.mark.parametrize(
    "text", ["= = =", "shutdown_timeout = ", "[logger\nlevel='x'", "a = 1\na = 2", "[x]\n[x]"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert "not valid TOML" in message
    assert str(path) in message


def test_invalid_utf8_is_a_config_file_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'timezone = "M\xfcnchen"\n')
    message = load_error(path)
    assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = load_error(path)
    assert "does not exist" in message and str(path) in message


def test_a_directory_cannot_be_read(tmp_path: Path) -> None:
    # Fails for root too (unlike chmod 000), so this runs everywhere.
    message = load_error(tmp_path)
    assert "cannot be read" in message and str(tmp_path) in message


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root reads files whatever their mode; the directory case covers unreadable files",
)
def test_an_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown_timeout = 1")
    path.chmod(0)
    try:
        message = load_error(path)
    finally:
        path.chmod(0o600)
    assert "cannot be read" in message and str(path) in message


def test_negative_shutdown_timeout_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown_timeout = -1")
    message = load_error(path)
    assert "shutdown_timeout" in message and str(path) in message


def test_nan_shutdown_timeout_in_a_file(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "shutdown_timeout = nan"))
    assert "shutdown_timeout" in message


def test_bad_misfire_policy_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'misfire_policy = "catch_up"')
    message = load_error(path)
    assert "misfire_policy" in message and "'catch_up'" in message and str(path) in message


# -- environment overrides ------------------------------------------------------------------------


def test_environment_overrides_with_type_conversion(tmp_path: Path) -> None:
    environ = {
        "GOWORKER_SHUTDOWN_TIMEOUT": "5",
        "GOWORKER_TIMEZONE": "UTC",
        "GOWORKER_MISFIRE_POLICY": "skip",
        "GOWORKER_LOGGER_LEVEL": "WARNING",
        "GOWORKER_LOGGER_SERIALIZE": "false",
        "GOWORKER_LOGGER_COLORIZE": "yes",
        "GOWORKER_DISCOVERY_HOSTS": "zk9:2181",
        "GOWORKER_DISCOVERY_USE_SSL": "on",
        "GOWORKER_DISCOVERY_SESSION_TIMEOUT": "2.5",
        "GOWORKER_DISCOVERY_AUTH_USER": "override",
        "PATH": "/usr/bin",  # not ours: ignored
    }
    config = load_config(write(tmp_path, FULL), environ=environ)
    assert config.shutdown_timeout == 5.0 and isinstance(config.shutdown_timeout, float)
    assert config.timezone == "UTC"
    assert config.misfire_policy == "skip"
    assert config.logger is not None and config.discovery is not None
    assert config.logger.level == "WARNING"
    assert config.logger.serialize is False
    assert config.logger.colorize is True
    assert config.logger.sink == "/var/log/myworker.log"  # untouched keys keep the file's value
    assert config.discovery.hosts == "zk9:2181"
    assert config.discovery.use_ssl is True
    assert config.discovery.session_timeout == 2.5
    assert config.discovery.auth_user == "override"
    assert config.discovery.auth_password == "secret"


def test_environment_creates_a_section_absent_from_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={"GOWORKER_DISCOVERY_HOSTS": "zk:1"})
    assert config.discovery == DiscoveryConfig(hosts="zk:1")
    assert config.logger is None


def test_environment_can_clear_an_optional_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'timezone = "Europe/Berlin"\n[logger]\nrotation = "1 MB"\n')
    environ = {"GOWORKER_TIMEZONE": "none", "GOWORKER_LOGGER_ROTATION": ""}
    config = load_config(path, environ=environ)
    assert config.timezone is None
    assert config.logger is not None and config.logger.rotation is None


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOWORKER_SHUTDOWN_TIMEOUT", "7")
    assert load_config(write(tmp_path, "")).shutdown_timeout == 7.0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GOWORKER_SHUTDOWN_TIMEOUT", "abc", "must be a number"),
        ("GOWORKER_DISCOVERY_SESSION_TIMEOUT", "10s", "must be a number"),
        ("GOWORKER_DISCOVERY_USE_SSL", "maybe", "must be true or false"),
        ("GOWORKER_LOGGER_SERIALIZE", "2", "must be true or false"),
    ],
)
def test_bad_environment_values(tmp_path: Path, name: str, value: str, expected: str) -> None:
    path = write(tmp_path, "")
    message = load_error(path, {name: value})
    assert name in message and repr(value) in message and expected in message
    assert str(path) in message


@pytest.mark.parametrize(
    "name",
    ["GOWORKER_NOPE", "GOWORKER_LOGGER_NOPE", "GOWORKER_LOGGER", "GOWORKER_DISCOVERY", "GOWORKER_"],
)
def test_environment_variable_naming_no_key(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "")
    message = load_error(path, {name: "1"})
    assert name in message and "matches no config key" in message
    assert str(path) in message


def test_environment_range_errors_name_the_key(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, ""), {"GOWORKER_SHUTDOWN_TIMEOUT": "-3"})
    assert "shutdown_timeout" in message
    message = load_error(write(tmp_path, ""), {"GOWORKER_MISFIRE_POLICY": "later"})
    assert "misfire_policy" in message and "'later'" in message


def test_environment_section_override_when_the_file_section_is_not_a_table(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "logger = 5\n")
    message = load_error(path, {"GOWORKER_LOGGER_LEVEL": "DEBUG"})
    assert "'logger' must be a table" in message and str(path) in message


def test_environment_alone_without_a_file() -> None:
    environ = {
        "GOWORKER_LOGGER_LEVEL": "WARNING",
        "GOWORKER_DISCOVERY_HOSTS": "zk9:2181",
        "GOWORKER_MISFIRE_GRACE_TIME": "2.5",
        "HOME": "/root",  # not ours: ignored
    }
    config = config_from_environment(environ)
    assert config == WorkerConfig(
        logger=LoggerConfig(level="WARNING"),
        discovery=DiscoveryConfig(hosts="zk9:2181"),
        misfire_grace_time=2.5,
    )
    assert config_from_environment({}) == default_worker_config()


def test_environment_alone_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOWORKER_SHUTDOWN_TIMEOUT", "7")
    assert config_from_environment().shutdown_timeout == 7.0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("GOWORKER_SHUTDOWN_TIMEOUT", "abc", "must be a number"),
        ("GOWORKER_NOPE", "1", "matches no config key"),
        ("GOWORKER_MISFIRE_POLICY", "later", "misfire_policy must be one of"),
    ],
)
def test_environment_alone_errors_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigFileError) as info:
        config_from_environment({name: value})
    message = str(info.value)
    assert message.startswith("environment: ") and expected in message
    assert name in message or name.removeprefix("GOWORKER_").lower() in message


# -- config_from_mapping --------------------------------------------------------------------------


def test_config_from_mapping() -> None:
    config = config_from_mapping(
        {"shutdown_timeout": 3, "logger": {"level": "ERROR"}, "discovery": {"hosts": "h:1"}}
    )
    assert config.shutdown_timeout == 3.0
    assert config.logger == LoggerConfig(level="ERROR")
    assert config.discovery == DiscoveryConfig(hosts="h:1")


def test_config_from_mapping_errors_name_the_origin() -> None:
    with pytest.raises(ConfigFileError, match=r"^settings\.yaml: key 'shutdown_timeout'"):
        config_from_mapping({"shutdown_timeout": "3"}, "settings.yaml")
    with pytest.raises(ConfigFileError, match=r"^<mapping>: unknown key 'bogus'"):
        config_from_mapping({"bogus": 1})
    with pytest.raises(ConfigFileError, match="misfire_policy"):
        config_from_mapping({"misfire_policy": "x"})


def test_config_file_error_is_a_config_error() -> None:
    assert issubclass(ConfigFileError, ConfigError)
    assert issubclass(ConfigFileError, ValueError)
