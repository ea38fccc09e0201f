"""Shared pytest configuration: real-ZooKeeper fixtures, and workers cancelled after each test."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import WorkerTracker, loguru_restored

pytest_plugins = ["goworker_py.testing.pytest_plugin"]


@pytest.fixture
def workers() -> Iterator[WorkerTracker]:
    """Makes workers (``handle_signals=False``) and cancels every one of them after the test."""
    tracker = WorkerTracker()
    yield tracker
    tracker.close()


@pytest.fixture
def handler_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory, on ``sys.path``, for handler modules named as ``module:Handler``.

    For ``goworker-py`` called in-process: no ``GOWORKER_*`` variable leaks in, and loguru and
    ``sys.modules`` are put back afterwards.
    """
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
