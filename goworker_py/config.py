"""Configuration: dataclasses, TOML files and ``GOWORKER_*`` environment overrides.

A TOML file mirrors the dataclasses::

    shutdown_timeout = 20
    timezone = "Europe/Berlin"
    misfire_policy = "skip"

    [logger]
    level = "INFO"
    sink = "/var/log/myworker.log"
    rotation = "100 MB"

    [discovery]
    hosts = "zk1:2181,zk2:2181,zk3:2181"
    session_timeout = 10

Every key can be overridden from the environment: ``GOWORKER_SHUTDOWN_TIMEOUT=5``,
``GOWORKER_LOGGER_LEVEL=DEBUG``, ``GOWORKER_DISCOVERY_HOSTS=...`` — also without a file
(:func:`config_from_environment`). Unknown keys and values of the wrong type are errors that
name the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goworker_py.errors import ConfigError, ConfigFileError, DiscoveryError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

MISFIRE_POLICIES = ("skip", "run_once")
_ENV_PREFIX = "GOWORKER_"
#: How errors name the source of settings that come from the environment alone.
_ENVIRONMENT = "environment"


@dataclass
class LoggerConfig:
    """How goworker-py's (and your handlers') log lines are written, through loguru.

    ``sink`` is ``"stderr"``, ``"stdout"`` or a file path; ``rotation`` and ``retention`` are
    loguru's (``"100 MB"``, ``"1 day"``, ``"7 days"``); ``serialize`` writes JSON lines.
    """

    level: str = "INFO"
    sink: str = "stderr"
    rotation: str | None = None
    retention: str | None = None
    serialize: bool = False
    format: str | None = None
    colorize: bool | None = None
    #: Write from a background thread (safe across processes, never blocks a run on I/O).
    enqueue: bool = False


@dataclass
class DiscoveryConfig:
    """Where the cluster's members find each other (the seed's ``WorkerDiscoveryConfig``).

    ``protocol`` names the coordination backend: ``"zookeeper"`` (the default), ``"etcdv3"``
    (alias ``"etcd"``), ``"redis"`` or ``"memory"``. For every backend ``hosts`` is
    ``"host:port[,host:port...]"`` (ZooKeeper may add a chroot: ``"zk1:2181,zk2:2181/path"``;
    ``memory`` takes any name: instances with the same name share one in-process store).
    Timeouts are seconds; the session timeout is the lease's time to live. ``auth_user`` /
    ``auth_password`` authenticate (ZooKeeper digest with ACL-protected nodes, etcd users,
    Redis ``AUTH``/ACL users); ``use_ssl`` and the certificate paths enable TLS; ``database`` is
    Redis's database number. :meth:`from_url` reads the same from a URL.
    """

    protocol: str = "zookeeper"
    hosts: str = ""
    connect_timeout: float = 10.0
    session_timeout: float = 10.0
    namespace: str = "goworker"
    auth_user: str | None = None
    auth_password: str | None = None
    use_ssl: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    ca: str | None = None
    verify_certs: bool = True
    database: int = 0

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> DiscoveryConfig:
        """A configuration from a discovery URL (``settings`` set the other fields).

        ``zookeeper://[user:password@]h1:2181,h2:2181[/chroot]``,
        ``etcd://[user:password@]h1:2379,h2:2379`` (``etcds://`` for TLS),
        ``redis://[[user]:password@]host:6379[/db]`` (``rediss://`` for TLS),
        ``memory://name``. Raises :class:`~goworker_py.errors.DiscoveryError` naming what is wrong.
        """
        return _parse_discovery_url(url, settings)


#: URL schemes of :meth:`DiscoveryConfig.from_url`: ``scheme: (protocol, TLS)``.
DISCOVERY_SCHEMES = {
    "zookeeper": ("zookeeper", False),
    "zk": ("zookeeper", False),
    "etcd": ("etcdv3", False),
    "etcds": ("etcdv3", True),
    "etcdv3": ("etcdv3", False),
    "redis": ("redis", False),
    "rediss": ("redis", True),
    "memory": ("memory", False),
}


def _parse_discovery_url(url: str, settings: dict[str, Any]) -> DiscoveryConfig:
    from urllib.parse import unquote

    scheme, sep, rest = str(url).partition("://")
    known = ", ".join(f"{name}://" for name in DISCOVERY_SCHEMES)
    if not sep or scheme.lower() not in DISCOVERY_SCHEMES:
        raise DiscoveryError(f"discovery URL {url!r}: unknown scheme (known: {known})")
    protocol, tls = DISCOVERY_SCHEMES[scheme.lower()]
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    hosts, slash, path = location.partition("/")
    fields: dict[str, Any] = {"protocol": protocol, "use_ssl": tls}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        fields["auth_user"] = unquote(user) or None
        fields["auth_password"] = unquote(password) if colon else None
    if not hosts:
        raise DiscoveryError(f"discovery URL {url!r} names no host")
    if protocol != "memory":
        for host in hosts.split(","):
            name, colon, port = host.rpartition(":")
            if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise DiscoveryError(
                    f"discovery URL {url!r}: {host!r} is not host:port (e.g. 127.0.0.1:2181)"
                )
    if protocol == "zookeeper" and slash and path:
        hosts = f"{hosts}/{path}"  # kazoo's chroot
    elif protocol == "redis" and slash and path:
        if not path.isdigit():
            raise DiscoveryError(f"discovery URL {url!r}: the Redis database must be a number")
        fields["database"] = int(path)
    elif slash and path:
        raise DiscoveryError(f"discovery URL {url!r}: a {protocol} URL takes no path ({path!r})")
    fields["hosts"] = hosts
    fields.update(settings)
    return DiscoveryConfig(**fields)


@dataclass
class WorkerConfig:
    """Settings of a worker that are not about its handler (the seed's ``WorkerConfig``).

    ``logger=None`` leaves logging alone (the application configures loguru); give a
    :class:`LoggerConfig` and the worker calls :func:`~goworker_py.configure_logging` with it.
    """

    logger: LoggerConfig | None = None
    discovery: DiscoveryConfig | None = None
    #: Seconds an in-flight step gets to return after cancellation before it is abandoned.
    shutdown_timeout: float = 30.0
    #: IANA zone for schedules without a ``TZ=`` prefix; ``None`` is the machine's local zone.
    timezone: str | None = None
    #: What to do with fire times that passed while a run was still going: "skip" or "run_once".
    misfire_policy: str = "skip"
    #: Seconds a fire time missed while a shard changed owner, or while ZooKeeper was out of
    #: reach, may be late and still run (later ones are misfires, handled by the policy).
    misfire_grace_time: float = 1.0
    #: Cluster mode: seconds a shard that must move to another instance lets its in-flight run
    #: go on before cancelling it (``None``: the ``shutdown_timeout``). A cancelled run's fire
    #: time is re-run at once by the shard's next owner.
    handover_timeout: float | None = None

    def __post_init__(self) -> None:
        check_worker_config(self)


def check_worker_config(config: WorkerConfig) -> None:
    """Raise :class:`ConfigError` if a value of ``config`` is out of range."""
    for name in ("shutdown_timeout", "misfire_grace_time", "handover_timeout"):
        value = getattr(config, name)
        if value is None and name == "handover_timeout":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
    check_misfire_policy(config.misfire_policy)


def check_misfire_policy(policy: object) -> None:
    """Raise :class:`ConfigError` unless ``policy`` is one of :data:`MISFIRE_POLICIES`."""
    if policy not in MISFIRE_POLICIES:
        raise ConfigError(
            f"misfire_policy must be one of {', '.join(MISFIRE_POLICIES)}, got {policy!r}"
        )


def default_worker_config() -> WorkerConfig:
    """The defaults (the seed's ``DefaultWorkerConfig``): logging untouched, local mode."""
    return WorkerConfig()


# -- loading ------------------------------------------------------------------------------------

_SECTIONS: dict[str, type[Any]] = {"logger": LoggerConfig, "discovery": DiscoveryConfig}


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Read a :class:`WorkerConfig` from a TOML file, then apply ``GOWORKER_*`` overrides.

    Raises :class:`ConfigFileError` naming the file and the key for anything wrong.
    """
    source = Path(path)
    try:
        with source.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigFileError(f"config file {source} does not exist") from exc
    except OSError as exc:
        raise ConfigFileError(f"config file {source} cannot be read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"config file {source} is not valid TOML: {exc}") from exc
    _apply_environment(raw, os.environ if environ is None else environ, str(source))
    return config_from_mapping(raw, str(source))


def config_from_environment(environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """The defaults with ``GOWORKER_*`` overrides applied: :func:`load_config` without a file.

    The command line uses it when no ``--config`` is given, so ``GOWORKER_LOGGER_LEVEL=DEBUG``
    or ``GOWORKER_DISCOVERY_HOSTS=zk1:2181`` work on their own. Raises
    :class:`ConfigFileError` naming the variable for anything wrong.
    """
    raw: dict[str, Any] = {}
    _apply_environment(raw, os.environ if environ is None else environ, _ENVIRONMENT)
    return config_from_mapping(raw, _ENVIRONMENT)


def config_from_mapping(raw: Mapping[str, Any], origin: str = "<mapping>") -> WorkerConfig:
    """Build a :class:`WorkerConfig` from a dict shaped like the TOML file."""
    top = _fields(WorkerConfig)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top:
            raise ConfigFileError(
                f"{origin}: unknown key {key!r} (known: {', '.join(sorted(top))})"
            )
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigFileError(f"{origin}: {key!r} must be a table ([{key}])")
            values[key] = _build(_SECTIONS[key], value, f"{origin}: [{key}]")
        else:
            values[key] = _coerce(value, top[key], f"{origin}: key {key!r}")
    try:
        return WorkerConfig(**values)
    except ConfigError as exc:
        raise ConfigFileError(f"{origin}: {exc}") from exc


def _build(kind: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    known = _fields(kind)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigFileError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})"
            )
        values[key] = _coerce(value, known[key], f"{where} key {key!r}")
    return kind(**values)


def _fields(kind: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the field's type (ints are accepted where floats are expected)."""
    allowed = _allowed_types(hint)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and (int in allowed or float in allowed):
        return value if int in allowed else float(value)
    elif isinstance(value, (float, str)) and type(value) in allowed:
        return value
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigFileError(f"{where} must be {names}, got {type(value).__name__} {value!r}")


def _allowed_types(hint: Any) -> tuple[type[Any], ...]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(arg for arg in typing.get_args(hint) if isinstance(arg, type))
    if dataclasses.is_dataclass(hint):
        return (dict,)
    return (hint,) if isinstance(hint, type) else (object,)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    """Fold ``GOWORKER_<KEY>`` and ``GOWORKER_<SECTION>_<KEY>`` variables into ``raw``."""
    for name, text in environ.items():
        if not name.startswith(_ENV_PREFIX):
            continue
        key = name[len(_ENV_PREFIX) :].lower()
        target, field_name, hint = _env_target(raw, key)
        if target is None:
            raise ConfigFileError(f"{source}: environment variable {name} matches no config key")
        if not isinstance(target, dict):
            section = key.partition("_")[0]
            raise ConfigFileError(f"{source}: {section!r} must be a table ([{section}])")
        try:
            target[field_name] = _parse_env(text, hint, name)
        except ConfigFileError as exc:
            raise ConfigFileError(f"{source}: {exc}") from None


def _env_target(raw: dict[str, Any], key: str) -> tuple[Any, str, Any]:
    """Where an override goes: ``(table, field, type hint)``, or ``(None, key, None)``.

    The table is whatever the file holds for the section, so the caller checks it is a table.
    """
    top = _fields(WorkerConfig)
    for section, kind in _SECTIONS.items():
        if key.startswith(section + "_"):
            field_name = key[len(section) + 1 :]
            fields = _fields(kind)
            if field_name in fields:
                table = raw.setdefault(section, {})
                return table, field_name, fields[field_name]
    if key in top and key not in _SECTIONS:
        return raw, key, top[key]
    return None, key, None


def _parse_env(text: str, hint: Any, name: str) -> Any:
    allowed = _allowed_types(hint)
    if type(None) in allowed and text.strip().lower() in ("", "none", "null"):
        return None
    if bool in allowed:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigFileError(f"environment variable {name} must be true or false, got {text!r}")
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                raise ConfigFileError(
                    f"environment variable {name} must be a number, got {text!r}"
                ) from None
    return text
