"""ScriptHandler in cluster mode: the script gets the shard claim's fencing token."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from goworker_py import ScriptHandler

from .conftest import Cluster, Observer, wait_until

pytestmark = pytest.mark.timeout(60)


def test_a_cluster_run_passes_its_fencing_token_to_the_script(
    cluster: Cluster, observer: Observer, tmp_path: Path
) -> None:
    program = tmp_path / "job.sh"
    program.write_text(
        "#!/bin/sh\n"
        'echo "$GOWORKER_FENCING_TOKEN $GOWORKER_SHARD_PARAM" '
        f'> "{tmp_path}/$GOWORKER_SHARD_INDEX"\n'
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    worker = cluster.make(
        ScriptHandler([str(program)]), total=2, cron="@every 1h", params="0=x,1=y"
    )
    observer.wait_settled(2, 1, workers=[worker])
    assert worker.trigger() == 2
    wait_until(lambda: all((tmp_path / str(s)).exists() for s in (0, 1)), 10)
    claims = observer.claims()
    for shard, param in ((0, "x"), (1, "y")):
        wait_until(lambda shard=shard: (tmp_path / str(shard)).read_text().endswith("\n"), 5)
        token, seen_param = (tmp_path / str(shard)).read_text().split()
        assert int(token) == claims[shard].token
        assert seen_param == param
