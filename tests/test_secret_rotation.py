"""A client secret is rotated while `dvmirror run` syncs (subprocess, simulator over HTTPS, real
SQLite file); the simulator's admin API adds and revokes the app's secrets as Entra does.

Orderly: secret B is added, written into the daemon's secret file and picked up with SIGHUP, then
A is revoked; the daemon never notices (no table parks, Entra never refuses a token). Disorderly:
A is revoked while the daemon still uses it; the cached token serves until it must be renewed,
then the table parks with AADSTS7000215 (status, /healthz degraded) and the daemon stays up;
writing B into the file and SIGHUP bring it back without a restart. The secrets never appear in
the log, in `status --json` or in the database.

The orderly rotation waits out a cached token's life for nothing to happen: it runs with
`pytest -m long`; the default run keeps the disorderly one (and tests/test_daemon_reload.py's
wrong secret brought right by SIGHUP).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.daemonproc import (
    DaemonProcess,
    EnvSpec,
    as_utc,
    churn,
    sync_states,
    wait_until,
    write_config,
)
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(240)]
# Tokens live 330 s and MSAL renews them 5 minutes before they expire: one serves about 30 s.
SCENARIO = Path(__file__).parent / "scenarios" / "secret_rotation.toml"
APP = "33333333-3333-3333-3333-333333333361"
ENV, TABLE = "rot_env", "account"
ENVS = {ENV: EnvSpec((TABLE,), interval="1s")}


def own_secret_file(sim: dict[str, Any], directory: Path) -> Path:
    """The daemon's own copy of the app's first secret (A), as an operator would deploy it."""
    path = directory / "client.secret"
    write_secret(path, Path(sim["secret_file"]).read_text())
    return path


def write_secret(path: Path, value: str) -> None:
    path.write_text(value.strip() + "\n")
    path.chmod(0o600)


def health(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    code, body = daemon.get("/healthz")
    return code, json.loads(body)


def state(database: Path) -> dict[str, Any]:
    return sync_states(database).get((ENV, TABLE), {})


def parked(current: dict[str, Any]) -> bool:
    """The table's last outcome is an error (last_error stays as history after a success)."""
    error_at, success = as_utc(current.get("last_error_at")), as_utc(current.get("last_success"))
    return error_at is not None and (success is None or error_at > success)


def converged(sim: dict[str, Any], database: Path) -> bool:
    """The table's last cycle succeeded and the mirror equals the source."""
    current = state(database)
    return (
        current.get("last_success") is not None
        and not parked(current)
        and not compare.differences(sim, database, ENV, TABLE)
    )


def tokens_issued(sim: dict[str, Any]) -> int:
    return int(admin(sim, "GET", "/stats")["entra"]["tokens_issued"].get(f"contoso/{APP}", 0))


def add_secret(sim: dict[str, Any]) -> str:
    """Secret B: added to the app by the admin API; its value read from the file it names."""
    added = admin(sim, "POST", f"/apps/{APP}/secrets")
    return Path(added["secret_file"]).read_text().strip()


def revoke_first_secret(sim: dict[str, Any]) -> None:
    admin(sim, "DELETE", f"/apps/{APP}/secrets/{sim['secret_id']}")


def assert_no_secret_leaked(
    daemon: DaemonProcess, database: Path, outputs: str, *secrets: str
) -> None:
    log = daemon.log_path.read_text()
    for secret in secrets:
        assert len(secret) > 20
        assert secret not in log
        assert secret not in outputs
        for path in database.parent.glob("mirror.db*"):
            assert secret.encode() not in path.read_bytes(), path


@contextmanager
def rotation(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path, Path, Path, DaemonProcess]]:
    """Its own simulator and `dvmirror run` on its own copy of secret A, synced once; the daemon
    must stop cleanly at the end."""
    with running_simulator(SCENARIO, tmp_path / "sim") as sim:
        secret = own_secret_file(sim, tmp_path)
        config = write_config(sim, tmp_path, ENVS, secret_files={"contoso": secret})
        database = tmp_path / "mirror.db"
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
        try:
            wait_until(lambda: converged(sim, database), timeout=60, what="the first sync (A)")
            yield sim, secret, config, database, daemon
        finally:
            assert daemon.stop() == 0, daemon.tail()


@pytest.mark.long
def test_an_orderly_rotation_never_interrupts_syncing(tmp_path: Path) -> None:
    """B added, written into the file, SIGHUP, then A revoked: the mirror keeps converging, also
    once the token must be renewed (with B); no table ever parks; Entra never says 7000215."""
    with rotation(tmp_path) as (sim, secret, config, database, daemon):
        old = sim["client_secret"]
        new = add_secret(sim)
        write_secret(secret, new)
        daemon.send(signal.SIGHUP)
        assert daemon.wait_event("reloaded")[0]["restarted"] == [ENV]
        # The restarted environment signed in again (with B, the only secret it now has).
        daemon.wait_event("environment_ready", count=2)
        revoke_first_secret(sim)
        issued = tokens_issued(sim)

        churn(sim, ENV, TABLE, 91, creates=5, updates=7, deletes=3)
        wait_until(lambda: converged(sim, database), timeout=60, what="a sync after revoking A")
        # Past the cached token's ~30 s: the daemon must ask Entra again, with B.
        wait_until(lambda: tokens_issued(sim) > issued, timeout=90, what="a token renewed with B")
        churn(sim, ENV, TABLE, 92, creates=5, updates=7, deletes=3)
        wait_until(lambda: converged(sim, database), timeout=60, what="a sync with the new token")

        assert not state(database).get("last_error")
        for event in ("environment_parked", "table_parked", "table_retry_scheduled"):
            assert not daemon.named(event), daemon.named(event)
        assert "AADSTS7000215" not in admin(sim, "GET", "/stats")["entra"]["errors"]
        assert "dvmirror_token_failures_total{" not in daemon.get("/metrics")[1]
        code, document = health(daemon)
        assert (code, document["status"]) == (200, "ok"), document
        status = run_cli("--config", config, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert_no_secret_leaked(daemon, database, status.stdout + status.stderr, old, new)
        assert daemon.process.poll() is None


def test_a_revoked_secret_parks_the_table_until_sighup_brings_the_new_one(tmp_path: Path) -> None:
    """A revoked under the daemon: the cached token serves, then the table parks with AADSTS7000215
    (status, /healthz degraded) while the process stays up; B in the file + SIGHUP → it recovers
    without a restart. Neither secret appears in the log, `status --json` or the database."""
    with rotation(tmp_path) as (sim, secret, config, database, daemon):
        old = sim["client_secret"]
        revoke_first_secret(sim)
        # The cached token still serves (MSAL uses it until 5 minutes before it expires).
        churn(sim, ENV, TABLE, 93, creates=4, updates=6, deletes=2)
        wait_until(
            lambda: not compare.differences(sim, database, ENV, TABLE),
            timeout=25,
            what="a sync with the cached token after A was revoked",
        )

        def parked_with_code() -> str | None:
            error = str(state(database).get("last_error") or "")
            return error if "AADSTS7000215" in error else None

        error = wait_until(parked_with_code, timeout=120, what="parked with AADSTS7000215")
        assert "secret" in error.lower(), error

        def degraded() -> dict[str, Any] | None:
            code, document = health(daemon)
            assert code == 200, document  # alive: never a failing probe for a failing service
            return document if document["status"] == "degraded" else None

        # On a loaded machine the error was seen in the database while /healthz still said
        # "ok" for a moment: wait for /healthz rather than read it once.
        document = wait_until(degraded, timeout=30, what="/healthz degraded")
        assert list(document["degraded"]) == [ENV]
        assert "AADSTS7000215" in document["degraded"][ENV]
        status = run_cli("--config", config, "status", "--json")
        assert status.returncode == 0, status.stderr
        entry = next(
            t
            for env in json.loads(status.stdout)["environments"]
            if env["name"] == ENV
            for t in env["tables"]
        )
        assert "AADSTS7000215" in entry["last_error"]
        _, metrics = daemon.get("/metrics")
        assert 'dvmirror_table_parked{environment="rot_env",table="account"} 1.0' in metrics
        failures = 'dvmirror_token_failures_total{reason="credential",tenant="contoso"}'
        assert failures in metrics, metrics
        # systemd's STATUS= line (and the journal) name the environment too.
        wait_until(
            lambda: any(
                f"tables failing in: {ENV}" in e["status"] for e in daemon.named("status_changed")
            ),
            timeout=30,
            what="the status line naming the failing environment",
        )
        assert daemon.process.poll() is None

        new = add_secret(sim)
        write_secret(secret, new)
        daemon.send(signal.SIGHUP)
        assert daemon.wait_event("reloaded")[0]["restarted"] == [ENV]
        churn(sim, ENV, TABLE, 94, creates=4, updates=6, deletes=2)
        wait_until(lambda: converged(sim, database), timeout=90, what="recovery without a restart")
        wait_until(lambda: health(daemon)[1]["status"] == "ok", timeout=60, what="ok again")
        wait_until(
            lambda: "failing" not in daemon.named("status_changed")[-1]["status"],
            timeout=10,
            what="the status line without the failing environment",
        )
        again = run_cli("--config", config, "status", "--json")
        assert again.returncode == 0, again.stderr
        entry = next(
            t
            for env in json.loads(again.stdout)["environments"]
            if env["name"] == ENV
            for t in env["tables"]
        )
        assert entry["last_success"] > entry["last_error_at"], entry  # no longer parked
        outputs = status.stdout + status.stderr + again.stdout + again.stderr
        assert_no_secret_leaked(daemon, database, outputs, old, new)
        assert len(daemon.named("http_listening")) == 1  # one process, never restarted
        assert daemon.process.poll() is None
