"""Shared pytest configuration: real-ZooKeeper fixtures, and workers cancelled after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import WorkerTracker

pytest_plugins = ["goworker_py.testing.pytest_plugin"]


@pytest.fixture
def workers() -> Iterator[WorkerTracker]:
    """Makes workers (``handle_signals=False``) and cancels every one of them after the test."""
    tracker = WorkerTracker()
    yield tracker
    tracker.close()
