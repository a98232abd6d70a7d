"""`dvmirror verify` on a table without change tracking: a row deleted in Dataverse stays in the
mirror until the table's reconcile (a key scan every `reconcile_interval`). Verify reports it
as a ghost, as it is, and says why: it is a deletion not learned yet, not damage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env, run_cli
from tests.daemonproc import churn
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401
from tests.test_mirror_e2e import SCENARIO, backfill, write_config

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
ENV = "hard_env"  # account and contact tracked, new_project not (tests/scenarios/mirror.toml)


@pytest.fixture(scope="module")
def own_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A simulator of this module's own: the test deletes rows at the source."""
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-untracked")) as ready:
        yield ready


def test_ghosts_of_a_table_without_change_tracking_are_explained(
    own_sim: dict[str, Any], tmp_path: Path
) -> None:
    config = write_config(own_sim, tmp_path, (ENV,), f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    assert backfill(config)[0] == 0
    churn(own_sim, ENV, "new_project", 7, creates=0, updates=0, deletes=2)
    churn(own_sim, ENV, "account", 7, creates=0, updates=0, deletes=1)

    args = ("--config", config.path, "verify", "--exact", "--env", ENV)
    result = run_cli(*args, "--table", "new_project", env=clean_env(), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    line = " ".join(result.stdout.split())  # the console may wrap
    assert f"{ENV}/new_project: MISMATCH 2 rows (0 missing, 2 ghost, 0 stale)" in line, line
    assert (
        "the 2 ghost row(s) were deleted in Dataverse: new_project has no change tracking, so "
        "the mirror learns of deletions at its reconcile (a key scan every 1d, "
        "`reconcile_interval`)"
    ) in line, line

    # A tracked table learns of its deletion in the delta cycle verify runs before it reports:
    # nothing to explain there. The JSON says which tables are tracked.
    result = run_cli(*args, "--json", env=clean_env(), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    start = result.stdout.index('{\n  "tables"')
    tables = {t["table"]: t for t in json.loads(result.stdout[start:])["tables"]}
    assert tables["new_project"]["change_tracking"] is False
    assert len(tables["new_project"]["ghost"]) == 2
    assert tables["account"]["change_tracking"] is True
    assert tables["account"]["outcome"] == "match", tables["account"]
