"""SIGHUP reloads `dvmirror run`'s configuration: a table added, an environment removed, and an
invalid file rejected while the daemon goes on with the configuration it has."""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import (
    DaemonProcess,
    EnvSpec,
    as_utc,
    churn,
    mirror_count,
    sync_states,
    wait_until,
    write_config,
)
from tests.mirror_compare import differences
from tests.simfixtures import _no_ca_env, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "daemon.toml"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-reload")) as ready:
        yield ready


def synced_after(
    sim: dict[str, Any], db: Path, tables: list[tuple[str, str]], after: dt.datetime
) -> bool:
    """Every table succeeded after `after` and equals its source."""
    states = sync_states(db)
    for env, table in tables:
        success = as_utc(states.get((env, table), {}).get("last_success"))
        if success is None or success <= after or differences(sim, db, env, table):
            return False
    return True


def wait_synced(sim: dict[str, Any], db: Path, tables: list[tuple[str, str]]) -> None:
    since = dt.datetime.now(dt.UTC)
    wait_until(
        lambda: synced_after(sim, db, tables, since), timeout=90, every=0.5, what=str(tables)
    )


def test_sighup_adds_a_table_and_removes_an_environment(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """After SIGHUP the added table is mirrored and the removed environment is no longer synced."""
    db = tmp_path / "mirror.db"
    config = write_config(
        sim,
        tmp_path,
        {"churn_env": EnvSpec(("account",)), "fabrikam_env": EnvSpec(("account",))},
    )
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_synced(sim, db, [("churn_env", "account"), ("fabrikam_env", "account")])
        assert ("churn_env", "contact") not in sync_states(db)
        _, metrics = daemon.get("/metrics")
        assert 'dvmirror_table_lag_seconds{environment="fabrikam_env"' in metrics

        write_config(sim, tmp_path, {"churn_env": EnvSpec(("account", "contact"))})
        daemon.send(signal.SIGHUP)
        reloaded = daemon.wait_event("reloaded")[0]
        assert reloaded["removed"] == ["fabrikam_env"]
        assert reloaded["restarted"] == ["churn_env"]
        _, metrics = daemon.get("/metrics")
        assert 'dvmirror_table_lag_seconds{environment="fabrikam_env"' not in metrics
        wait_synced(sim, db, [("churn_env", "contact"), ("churn_env", "account")])

        # fabrikam_env's group stopped before `reloaded` was logged: it sends nothing more.
        requests_after_reload = user_stats(sim, "fabrikam_env")["requests"]
        rows_before = mirror_count(db, "fabrikam_env", "account")
        churn(sim, "fabrikam_env", "account", seed=501, creates=5, deletes=0)
        churn(sim, "churn_env", "account", seed=502)
        wait_synced(sim, db, [("churn_env", "account")])
        wait_synced(sim, db, [("churn_env", "account")])  # one more full cycle
        assert user_stats(sim, "fabrikam_env")["requests"] == requests_after_reload
        assert mirror_count(db, "fabrikam_env", "account") == rows_before
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.parametrize(
    "broken",
    ["[[tenants]\nname = ", '[store]\nurl = "mysql://nope"\n'],
    ids=["not-toml", "invalid-value"],
)
def test_sighup_with_an_invalid_file_keeps_the_old_configuration(
    sim: dict[str, Any], tmp_path: Path, broken: str
) -> None:
    """A SIGHUP with a broken file is logged and rejected; the daemon keeps syncing as before."""
    db = tmp_path / "mirror.db"
    config = write_config(sim, tmp_path, {"adatum_env": EnvSpec(("account",))})
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_synced(sim, db, [("adatum_env", "account")])
        config.write_text(broken)
        daemon.send(signal.SIGHUP)
        rejected = daemon.wait_event("reload_rejected")[0]
        assert str(config) in rejected["error"]
        assert daemon.process.poll() is None
        assert not daemon.named("reloaded")

        churn(sim, "adatum_env", "account", seed=600 + len(broken))
        wait_synced(sim, db, [("adatum_env", "account")])
        status, _ = daemon.get("/healthz")
        assert status == 200
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_wrong_secret_parks_its_tenant_until_a_reload_brings_the_right_one(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """A tenant whose [tenants.app] secret is wrong is parked (status, metrics) while the other
    syncs; after the secret file is fixed, SIGHUP makes the daemon use the new secret."""
    db = tmp_path / "mirror.db"
    secret = tmp_path / "fabrikam.secret"
    secret.write_text("not-the-right-secret")
    secret.chmod(0o600)
    config = write_config(
        sim,
        tmp_path,
        {"churn_env": EnvSpec(("account",)), "fabrikam_env": EnvSpec(("account",))},
        secret_files={"fabrikam": secret},
    )
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_synced(sim, db, [("churn_env", "account")])
        parked = daemon.wait_event("environment_parked")[0]
        assert parked["environment"] == "fabrikam_env"
        result = run_cli("--config", config, "status", "--json")
        assert result.returncode == 0, result.stderr
        entry = next(
            t
            for env in json.loads(result.stdout)["environments"]
            if env["name"] == "fabrikam_env"
            for t in env["tables"]
        )
        assert "secret" in entry["last_error"].lower()
        assert "not-the-right-secret" not in result.stdout + daemon.log_path.read_text()
        _, metrics = daemon.get("/metrics")
        assert 'dvmirror_token_failures_total{reason="credential",tenant="fabrikam"}' in metrics

        secret.write_text(Path(sim["secret_file"]).read_text())
        daemon.send(signal.SIGHUP)
        reloaded = daemon.wait_event("reloaded")[0]
        assert reloaded["restarted"] == ["fabrikam_env"]
        wait_synced(sim, db, [("fabrikam_env", "account"), ("churn_env", "account")])
        assert daemon.process.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.kill()
