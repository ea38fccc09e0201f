"""Fixtures of the reliability suite: a :class:`~.harness.Scenario` per test.

``scenario`` runs on a private ZooKeeper server (``zookeeper_private``: tick 100 ms, a server
the test may kill, restart or pause). A test that builds a :class:`Scenario` itself (on an
ensemble, say) passes ``request=request`` so that it is reported the same way. When a test
fails, the stderr tail of each instance and the end of the history are added to its report
(the ZooKeeper fixture adds the server log).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from goworker_py.testing import ZooKeeperServer

from .harness import Scenario


@pytest.fixture
def scenario(
    zookeeper_private: ZooKeeperServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Scenario]:
    """A scenario on the test's own ZooKeeper server; everything it started is cleaned up."""
    built = Scenario(zookeeper_private, tmp_path / "scenario", request=request)
    try:
        yield built
    finally:
        built.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, add each scenario's instance logs and history to the report."""
    report = yield
    if report.failed:
        for index, built in enumerate(getattr(item, "reliability_scenarios", [])):
            report.sections.append((f"reliability scenario {index}", built.report()))
    return report
