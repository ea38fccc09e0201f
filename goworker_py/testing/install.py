"""Finding ZooKeeper and Redis on this machine, and installing them from Debian when we may.

ZooKeeper's lookup order: ``ZOOKEEPER_CLASSPATH`` (a full Java classpath, used as is),
``ZOOKEEPER_PATH`` (an unpacked ZooKeeper release: ``lib/*.jar``), then the Debian package
``zookeeper`` (``/usr/share/java/zookeeper.jar``). Java comes from ``JAVA_HOME`` or the ``PATH``.
Redis: ``REDIS_SERVER`` (a ``redis-server`` binary), then ``redis-server`` on the ``PATH`` or in
``/usr/bin`` (the Debian package ``redis-server``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from goworker_py.testing.errors import RedisNotFound, ZooKeeperNotFound

INSTALL_HINT = (
    "ZooKeeper is needed to run the cluster tests. Provide one of:\n"
    "  1. Debian/Ubuntu, as root: apt-get install -y zookeeper\n"
    "     (or: python -m goworker_py.testing ensure-zookeeper)\n"
    "  2. Java 17 plus a ZooKeeper 3.8 release tarball "
    "(https://zookeeper.apache.org/releases.html), unpacked,\n"
    "     with ZOOKEEPER_PATH=/path/to/apache-zookeeper-3.8.x-bin "
    "(or ZOOKEEPER_CLASSPATH=<full classpath>)\n"
    "  3. an existing server or container: ZK_HOSTS=host:2181 "
    "(e.g. docker run -p 2181:2181 zookeeper:3.8)\n"
    "  4. Docker with a running engine (`docker info` works): then ensure-zookeeper "
    "(make zookeeper / make test)\n"
    "     starts a zookeeper:3.8 container itself"
)

DEBIAN_JAVA_DIR = Path("/usr/share/java")
DEBIAN_ENVIRONMENT = Path("/etc/zookeeper/conf/environment")


@dataclass(frozen=True)
class ZooKeeperInstall:
    """How to run ZooKeeper here: the ``java`` binary, the classpath, and where it came from."""

    java: str
    classpath: str
    source: str


def find_zookeeper(
    environ: Mapping[str, str] | None = None,
    *,
    debian_java_dir: Path = DEBIAN_JAVA_DIR,
    debian_environment: Path = DEBIAN_ENVIRONMENT,
) -> ZooKeeperInstall:
    """Locate Java and a ZooKeeper classpath, or raise :class:`ZooKeeperNotFound`."""
    env = os.environ if environ is None else environ
    if classpath := env.get("ZOOKEEPER_CLASSPATH", "").strip():
        source = "ZOOKEEPER_CLASSPATH"
    elif zk_path := env.get("ZOOKEEPER_PATH", "").strip():
        root = Path(zk_path).expanduser()
        jars = sorted(root.glob("lib/*.jar")) + sorted(root.glob("*.jar"))
        if not any(jar.name.startswith("zookeeper") for jar in jars):
            raise ZooKeeperNotFound(
                f"ZOOKEEPER_PATH={zk_path} holds no zookeeper-*.jar in lib/ "
                f"(expected an unpacked apache-zookeeper-3.8.x-bin tarball).\n{INSTALL_HINT}"
            )
        classpath = os.pathsep.join(str(jar) for jar in jars)
        source = f"ZOOKEEPER_PATH={zk_path}"
    elif (debian_java_dir / "zookeeper.jar").is_file():
        classpath = _debian_classpath(debian_java_dir, debian_environment)
        source = f"Debian package zookeeper ({debian_java_dir})"
    else:
        raise ZooKeeperNotFound(f"No ZooKeeper installation found.\n{INSTALL_HINT}")
    java = find_java(env)
    if java is None:
        raise ZooKeeperNotFound(f"ZooKeeper found ({source}) but no `java`.\n{INSTALL_HINT}")
    return ZooKeeperInstall(java=java, classpath=classpath, source=source)


def find_java(environ: Mapping[str, str] | None = None) -> str | None:
    """``$JAVA_HOME/bin/java`` if it exists, else ``java`` on the ``PATH``, else ``None``."""
    env = os.environ if environ is None else environ
    if home := env.get("JAVA_HOME"):
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java", path=env.get("PATH"))


def _debian_classpath(java_dir: Path, environment: Path) -> str:
    # The package's own CLASSPATH (conf dir + zookeeper.jar) first; zookeeper.jar's manifest
    # Class-Path then pulls in jute, netty, slf4j-api and the rest. It names no slf4j binding,
    # so add one, or the server would log nothing at all.
    entries = _environment_classpath(environment)
    names = ["zookeeper.jar", "zookeeper-jute.jar"]
    if (java_dir / "slf4j-simple.jar").is_file():
        names.append("slf4j-simple.jar")
    elif (java_dir / "slf4j-log4j12.jar").is_file():
        names += ["slf4j-log4j12.jar", "log4j-1.2.jar"]
    entries += [str(java_dir / n) for n in names if (java_dir / n).is_file()]
    return os.pathsep.join(dict.fromkeys(entries))  # de-duplicated, in order


def _environment_classpath(environment: Path) -> list[str]:
    try:
        text = environment.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "CLASSPATH":
            value = value.strip().strip("\"'")
            return [entry for entry in value.split(os.pathsep) if entry and "$" not in entry]
    return []


def can_apt_install() -> bool:
    """``True`` when we are root on a Debian-like system with ``apt-get``."""
    return (
        hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and Path("/etc/debian_version").exists()
    )


def apt_install(package: str) -> None:
    """Run ``apt-get update`` then ``apt-get install -y <package>`` (raises on failure)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", package], check=True, env=env)


def apt_install_zookeeper() -> None:
    """Run ``apt-get update`` then ``apt-get install -y zookeeper`` (raises on failure)."""
    apt_install("zookeeper")


REDIS_INSTALL_HINT = (
    "redis-server is needed to run the Redis backend's tests. Provide one of:\n"
    "  1. Debian/Ubuntu, as root: apt-get install -y redis-server\n"
    "     (or: python -m goworker_py.testing ensure-redis)\n"
    "  2. another Linux or macOS: your package manager's redis (brew install redis, "
    "dnf install redis)\n"
    "  3. a redis-server binary anywhere: REDIS_SERVER=/path/to/redis-server"
)
DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")


def find_redis_server(
    environ: Mapping[str, str] | None = None, *, debian_binary: Path = DEBIAN_REDIS_SERVER
) -> str:
    """The ``redis-server`` binary to run, or raise :class:`RedisNotFound`."""
    env = os.environ if environ is None else environ
    if explicit := env.get("REDIS_SERVER", "").strip():
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise RedisNotFound(f"REDIS_SERVER={explicit} is not an executable.\n{REDIS_INSTALL_HINT}")
    found = shutil.which("redis-server", path=env.get("PATH"))
    if found is None and debian_binary.is_file():
        found = str(debian_binary)
    if found is None:
        raise RedisNotFound(f"No redis-server found.\n{REDIS_INSTALL_HINT}")
    return found
