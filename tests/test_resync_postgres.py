"""Resync requests with two `dvmirror run` processes sharing one PostgreSQL store: each request
is run by the daemon that holds its environment's lease, and only by it (real cluster, real
subprocesses, the simulator over HTTPS)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, wait_until
from tests.simfixtures import _no_ca_env  # noqa: F401
from tests.test_leases_postgres import _sim, configure, leases, owner_counts, sql  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]
ENVS = ("lease_1", "lease_2")
TABLES = ("account", "contact")


@pytest.mark.usefixtures("no_ca_env")
def test_each_request_runs_on_the_lease_holder_of_its_environment(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    """Two daemons hold one environment each; ghost rows are added to both mirrors and a
    `--all` resync is queued for each: every request is handled by its environment's lease
    holder (and no other daemon logs a claim of it), the ghosts are swept, mirror = source."""
    config = configure(sim, tmp_path, pg_url, ENVS)
    daemons = [DaemonProcess.start(config, tmp_path / f"daemon-{n}.log") for n in range(2)]
    try:
        wait_until(
            lambda: sorted(owner_counts(pg_url).values()) == [1, 1],
            timeout=120,
            what="one environment per daemon",
        )
        wait_until(
            lambda: (
                not any(
                    compare.differences(sim, pg_url, env, t, limit=1)
                    for env in ENVS
                    for t in TABLES
                )
            ),
            timeout=120,
            what="first convergence",
        )
        ghosts = {env: str(uuid.uuid4()) for env in ENVS}
        for env, ghost in ghosts.items():
            sql(
                pg_url,
                f'INSERT INTO "{env}"."account" (accountid, "_dv_synced_at") '
                "VALUES ($1, '2000-01-01T00:00:00Z')",
                uuid.UUID(ghost),
            )
        for env in ENVS:
            result = run_cli("--config", config, "resync", "--env", env, "--all")
            assert result.returncode == 0, result.stderr
        holders = {env: row["holder"] for env, row in leases(pg_url).items()}

        def ended() -> list[Any]:
            rows = sql(pg_url, "SELECT * FROM dvmirror.dv_resync_requests ORDER BY id")
            return rows if rows and all(r["state"] in ("done", "failed") for r in rows) else []

        rows = wait_until(ended, timeout=120, what="both requests to end")
        assert [r["state"] for r in rows] == ["done", "done"]
        assert {r["environment"]: r["handled_by"] for r in rows} == holders
        for daemon in daemons:
            mine = {e["environment"] for e in daemon.named("resync_claimed")}
            pid = f":{daemon.process.pid}:"
            assert mine == {env for env, holder in holders.items() if pid in holder}
        for env in ENVS:
            for table in TABLES:
                assert not compare.differences(sim, pg_url, env, table), (env, table)
        for daemon in daemons:
            assert daemon.stop(timeout=90) == 0
    finally:
        for daemon in daemons:
            daemon.kill()
