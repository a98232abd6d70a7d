"""Service outages against the daemon (subprocess, simulator over HTTPS, real SQLite file).

One environment answers 503 to every request for a long stretch: its table fails and is retried
with a capped, growing backoff, the other environment goes on syncing, `/healthz` says the
daemon is degraded (HTTP 200, naming the environment and why), not dead; when the 503s stop,
the environment recovers by itself, without a restart, and /healthz is "ok" again.

The token endpoint's outages (45 s, 10 minutes) run with `pytest -m long tests/test_outages.py`:
they wait out a cached token's life. The default run's test of a token that cannot be renewed
is tests/test_secret_rotation.py's revoked secret (the same park-then-recover path).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.runtime.timing import BACKOFF_CAP
from tests import mirror_compare as compare
from tests.daemonproc import DaemonProcess, EnvSpec, churn, sync_states, wait_until, write_config
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(600)]
SCENARIO = Path(__file__).parent / "scenarios" / "outages.toml"
ENVS = {
    "out_down": EnvSpec(("account",), interval="1s"),
    "out_up": EnvSpec(("account",), interval="1s"),
}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-outages")) as ready:
        yield ready


def health(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    code, body = daemon.get("/healthz")
    return code, json.loads(body)


def synced_since(database: Path, env: str, moment: str | None) -> bool:
    state = sync_states(database).get((env, "account"), {})
    success = state.get("last_success")
    return success is not None and (moment is None or str(success) > moment)


def test_an_environment_answering_503_degrades_the_daemon_and_recovers_by_itself(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path, ENVS)
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(
            lambda: all(synced_since(database, env, None) for env in ENVS),
            timeout=90,
            what="the first sync of both environments",
        )
        code, document = health(daemon)
        assert (code, document["status"], document["degraded"]) == (200, "ok", {})

        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 1.0})
        churn(sim, "out_up", "account", 71, creates=5, updates=7, deletes=3)
        churn(sim, "out_down", "account", 72, creates=5, updates=7, deletes=3)

        def degraded() -> dict[str, Any] | None:
            code, document = health(daemon)
            assert code == 200, document  # alive: never a failing probe for a failing service
            return document if document["status"] == "degraded" else None

        document = wait_until(degraded, timeout=120, what="/healthz degraded")
        assert list(document["degraded"]) == ["out_down"]
        assert "503" in document["degraded"]["out_down"] or "unavailable" in (
            document["degraded"]["out_down"].lower()
        ), document
        # The other environment goes on meanwhile.
        wait_until(
            lambda: not compare.differences(sim, database, "out_up", "account"),
            timeout=90,
            what="out_up converging during the outage",
        )
        # Retries back off, growing, never past the cap.
        wait_until(
            lambda: len(daemon.named("table_retry_scheduled")) >= 2,
            timeout=120,
            what="two retries of the failing table",
        )
        delays = [e["retry_in"] for e in daemon.named("table_retry_scheduled")]
        assert all(0 < d <= BACKOFF_CAP for d in delays), delays
        assert daemon.process.poll() is None

        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 0.0})
        wait_until(
            lambda: not compare.differences(sim, database, "out_down", "account"),
            timeout=180,
            what="out_down recovering without a restart",
        )
        wait_until(
            lambda: health(daemon)[1]["status"] == "ok", timeout=60, what="/healthz ok again"
        )
    finally:
        admin(sim, "POST", "/faults", {"environment": "out_down", "http_503": 0.0})
        assert daemon.stop() == 0, daemon.tail()


TOKEN_SCENARIO = Path(__file__).parent / "scenarios" / "token_outage.toml"


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(45, id="45s", marks=pytest.mark.long),
        pytest.param(600, id="10min", marks=[pytest.mark.long, pytest.mark.timeout(1200)]),
    ],
)
def test_the_token_endpoint_failing_for_a_stretch_parks_with_its_aadsts_code_then_recovers(
    tmp_path: Path, outage: int
) -> None:
    """The token endpoint answers 503 (AADSTS90055) for a stretch: syncing goes on with the
    cached token while it is valid; once it must be renewed, the environment parks with the
    AADSTS code (status and /healthz say so); when the endpoint is back it recovers by itself."""
    with running_simulator(TOKEN_SCENARIO, tmp_path / "sim") as sim:
        config = write_config(sim, tmp_path, {"tok_env": EnvSpec(("account",), interval="1s")})
        database = tmp_path / "mirror.db"
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
        try:
            wait_until(lambda: synced_since(database, "tok_env", None), timeout=60, what="sync")
            admin(sim, "POST", "/faults", {"entra": {"http_503": 1.0}})
            started = time.monotonic()
            # The cached token still serves (MSAL uses it until 5 minutes before it expires).
            churn(sim, "tok_env", "account", 81, creates=4, updates=6, deletes=2)
            wait_until(
                lambda: not compare.differences(sim, database, "tok_env", "account"),
                timeout=25,
                what="a sync with the cached token during the outage",
            )

            def parked_with_code() -> str | None:
                state = sync_states(database).get(("tok_env", "account"), {})
                error = str(state.get("last_error") or "")
                return error if "AADSTS90055" in error else None

            error = wait_until(parked_with_code, timeout=120, what="parked with the AADSTS code")
            assert "token" in error.lower() or "sign" in error.lower(), error
            code, document = health(daemon)
            assert code == 200 and document["status"] == "degraded", document
            assert "AADSTS90055" in document["degraded"]["tok_env"]
            time.sleep(max(0.0, outage - (time.monotonic() - started)))
            assert daemon.process.poll() is None
            admin(sim, "POST", "/faults", {"entra": {"http_503": 0.0}})
            churn(sim, "tok_env", "account", 82, creates=4, updates=6, deletes=2)
            wait_until(
                lambda: not compare.differences(sim, database, "tok_env", "account"),
                timeout=BACKOFF_CAP + 60 if outage > 300 else 180,
                what="recovery without a restart",
            )
            wait_until(lambda: health(daemon)[1]["status"] == "ok", timeout=60, what="ok again")
        finally:
            admin(sim, "POST", "/faults", {"entra": {"http_503": 0.0}})
            assert daemon.stop() == 0, daemon.tail()
