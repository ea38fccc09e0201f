"""Helpers of the command-line tests: handler modules, parsed arguments, CLI subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from helpers import REPO

from goworker_py.cli import build_parser

JOB = """
from goworker_py import Handler

class Job(Handler):
    def do(self, ctx):
        ctx.logger.debug("debug-line")
        ctx.logger.info("info-line")
        ctx.logger.warning("warning-line")
"""


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
