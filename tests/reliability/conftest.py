"""Fixtures of the reliability suite: a :class:`~.harness.Scenario` per test.

``scenario`` runs on a private ZooKeeper server (``zookeeper_private``: tick 100 ms, a server
the test may kill, restart or pause). A test opts in to other backends by parametrising it
indirectly - ``@on_backends("zookeeper", "etcd", "redis")`` (:func:`.harness.on_backends`) -
and then runs once per backend, each on a private server of its own (``etcd_private``,
``redis_private``); ``scenario.backend`` names the one in use. A test that builds a
:class:`Scenario` itself (on an ensemble, say) passes ``request=request`` so that it is reported
the same way. When a test fails, the stderr tail of each instance and the end of the history are
added to its report (the server fixtures add the server log).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .harness import SERVER_FIXTURES, Scenario


@pytest.fixture
def scenario(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """A scenario on the test's own server (ZooKeeper unless the test is parametrised with
    :func:`.harness.on_backends`); everything it started is cleaned up."""
    backend = str(getattr(request, "param", "zookeeper"))
    fixture = SERVER_FIXTURES[backend]
    server = request.getfixturevalue(fixture)
    # A fixture requested by name is not among the test's arguments: list it there, so that
    # the server fixtures' report hook adds its log when the test fails.
    request.node.funcargs.setdefault(fixture, server)
    built = Scenario(server, tmp_path / "scenario", request=request, backend=backend)
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
