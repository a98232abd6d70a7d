"""Leases through the real command line, on SQLite, against the simulator over HTTPS.

A SQLite store has one writer process: a second `dvmirror run`, `backfill` or `sync --once` is
refused with one line and exit 2 while the daemon runs. The daemon holds every environment's
lease, `status` names it as the owner, every checkpoint carries the lease's token, and a
daemon started after a SIGKILL takes the leases over at once (a higher token), without waiting
for the old ones to expire.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, EnvSpec, sync_states, wait_until, write_config
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "daemon.toml"
ENVS = {"churn_env": EnvSpec(("account",)), "fabrikam_env": EnvSpec(("account",))}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-leases")) as ready:
        yield ready


def lease_rows(database: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(database, timeout=10) as conn:
        rows = conn.execute("SELECT resource, holder, token FROM dv_leases").fetchall()
    return {resource: (holder, token) for resource, holder, token in rows}


def members(database: Path) -> list[str]:
    with sqlite3.connect(database, timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT holder FROM dv_daemons")]


def synced(database: Path) -> bool:
    states = sync_states(database)
    return all(states.get((env, "account"), {}).get("last_success") for env in ENVS)


def test_a_second_writer_is_refused_while_the_daemon_runs(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path, ENVS)
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: synced(database), timeout=90, what="the first sync")
        pid = daemon.process.pid
        for command in (["run"], ["backfill"], ["sync", "--once"]):
            result = run_cli("--config", config, *command, timeout=60)
            assert result.returncode == 2, (command, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert lines == [
                f"dvmirror: error: store {database} is in use by another dvmirror process "
                f"(pid {pid}: run); stop it first, or use PostgreSQL to run several daemons"
            ], command
        assert daemon.process.poll() is None

        leases = lease_rows(database)
        holder = leases["churn_env"][0]
        assert holder.split(":")[1] == str(pid)
        assert {h for h, _ in leases.values()} == {holder}
        assert members(database) == [holder]
        states = sync_states(database)
        for env in ENVS:
            assert states[(env, "account")]["lease_token"] == leases[env][1] >= 1

        status = run_cli("--config", config, "status", "--json")
        assert status.returncode == 0, status.stderr
        import json

        owners = {e["name"]: e["owner"] for e in json.loads(status.stdout)["environments"]}
        assert owners == dict.fromkeys(ENVS, holder)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert {h for h, _ in lease_rows(database).values()} == {""}, "released on SIGTERM"
    assert members(database) == []
    # The writer is gone: a one-off command may write now, and its checkpoints carry its token.
    result = run_cli("--config", config, "sync", "--once", timeout=120)
    assert result.returncode == 0, result.stderr
    after = lease_rows(database)
    assert after["churn_env"][0] == ""
    assert sync_states(database)[("churn_env", "account")]["lease_token"] == after["churn_env"][1]


def test_after_a_sigkill_the_next_daemon_takes_the_leases_at_once(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path, ENVS)
    database = tmp_path / "mirror.db"
    first = DaemonProcess.start(config, tmp_path / "first.log", env=_long_lease())
    try:
        wait_until(lambda: synced(database), timeout=90, what="the first sync")
        before = lease_rows(database)
        first.kill()
    finally:
        first.kill()
    second = DaemonProcess.start(config, tmp_path / "second.log", env=_long_lease())
    try:
        # Far sooner than the 10-minute lease the killed daemon left behind.
        acquired = second.wait_event("lease_acquired", count=len(ENVS), timeout=30)
        tokens = {e["environment"]: e["fence"] for e in acquired}
        assert tokens == {env: before[env][1] + 1 for env in ENVS}
        second.wait_event("ready", timeout=60)
        assert second.stop() == 0
    finally:
        second.kill()


def _long_lease() -> dict[str, str]:
    return {"DVMIRROR_DAEMON__LEASE_SECONDS": '"10m"'}


def steal_lease(database: Path, environment: str) -> None:
    """What a takeover by another daemon does to the row (a higher token, another holder)."""
    with sqlite3.connect(database, timeout=30) as conn:
        conn.execute(
            "UPDATE dv_leases SET holder = 'elsewhere:1:abc', token = token + 1 WHERE resource = ?",
            (environment,),
        )


def test_a_daemon_whose_lease_was_taken_writes_nothing_more_and_parks_nothing(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """The lease moves to another holder long before this daemon would renew it: its next
    write fails the fence, the environment stops at once without a park, nothing is written
    under the old token, and SIGTERM leaves the new holder's lease alone."""
    config = write_config(sim, tmp_path, {"churn_env": EnvSpec(("account",), interval="1s")})
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env=_long_lease())
    try:
        wait_until(lambda: synced_one(database), timeout=90, what="the first sync")
        _, token = lease_rows(database)["churn_env"]
        steal_lease(database, "churn_env")
        daemon.wait_event("environment_lease_lost", timeout=30)
        state = sync_states(database)[("churn_env", "account")]
        time.sleep(2.5)  # two more intervals: nothing more is written
        assert sync_states(database)[("churn_env", "account")] == state
        assert state["lease_token"] == token and state["last_error"] is None
        assert not daemon.named("table_parked")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert lease_rows(database)["churn_env"] == ("elsewhere:1:abc", token + 1)


def test_the_keeper_sees_the_lost_lease_and_on_sqlite_takes_it_back(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """With a short lease the renewal finds the loss: the environment stops, and the only
    writer of a SQLite store takes the lease back with a new token and syncs on."""
    config = write_config(sim, tmp_path, {"churn_env": EnvSpec(("account",), interval="1s")})
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(
        config, tmp_path / "daemon.log", env={"DVMIRROR_DAEMON__LEASE_SECONDS": '"3s"'}
    )
    try:
        wait_until(lambda: synced_one(database), timeout=90, what="the first sync")
        holder, token = lease_rows(database)["churn_env"]
        steal_lease(database, "churn_env")
        daemon.wait_event("lease_lost", timeout=30)
        retaken = daemon.wait_event("lease_acquired", count=2, timeout=30)[-1]
        assert retaken["fence"] == token + 2
        wait_until(
            lambda: sync_states(database)[("churn_env", "account")]["lease_token"] == token + 2,
            timeout=30,
            what="a checkpoint under the new lease",
        )
        assert not daemon.named("table_parked")
        assert not daemon.named("shutdown_grace_exceeded")
        assert lease_rows(database)["churn_env"] == (holder, token + 2)
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def synced_one(database: Path) -> bool:
    return bool(sync_states(database).get(("churn_env", "account"), {}).get("last_success"))
