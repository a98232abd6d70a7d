"""The Retry-After pause of an environment's own requests (WhoAmI, N:N discovery, the metadata
refresh) is stored and shown like a table run's (store.environment_runs,
sync.runtime.environment_pauses): the simulator refuses Contoso's requests before `dvmirror run`
starts, so its first request, WhoAmI, is throttled. The stored `(environment)` run, the console's
API and `/`, and `dvmirror status --json` then agree with the governor's /metrics counter; no
table counts that pause."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sync.runtime.environment_pauses import PauseSpan
from tests.cli import run_cli
from tests.console_harness import free_port
from tests.daemonproc import DaemonProcess, EnvSpec, sync_states, wait_until, write_config
from tests.simfixtures import admin, running_simulator
from tests.test_console_pauses import (
    ENV,
    SCENARIO,
    SESSION,
    console_figures,
    metrics_pause,
    stored_pauses,
    with_console,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
THROTTLE_SECONDS = 4


def environment_runs(database: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database, timeout=10) as conn:
        return conn.execute(
            "SELECT command, status, requests, throttled, paused_seconds FROM dv_run_history "
            "WHERE environment = ? AND table_name = '(environment)'",
            (ENV,),
        ).fetchall()


def test_a_throttled_whoami_pause_is_stored_and_shown(tmp_path: Path) -> None:
    with running_simulator(SCENARIO, tmp_path / "sim") as sim:
        port = free_port()
        config = write_config(sim, tmp_path, {ENV: EnvSpec(("account", "contact"))})
        with_console(config, port)
        database = tmp_path / "mirror.db"
        # By client id: the simulator knows no user of the environment before its first request.
        throttle = {"seconds": THROTTLE_SECONDS, "client_id": sim["client_id"]}
        admin(sim, "POST", f"/environments/{ENV}/throttle", throttle)
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env=SESSION)
        try:
            daemon.wait_event("console_listening")
            runs = wait_until(
                lambda: environment_runs(database), timeout=40, what="an (environment) run"
            )
            [(command, status, requests, throttled, paused)] = runs
            assert (command, status) == ("environment", "ok")
            assert throttled >= 1 and requests >= throttled
            assert THROTTLE_SECONDS - 2 <= paused <= 3 * THROTTLE_SECONDS, runs

            def synced() -> bool:
                states = sync_states(database)
                return all(
                    states.get((ENV, t), {}).get("last_success") for t in ("account", "contact")
                )

            wait_until(synced, timeout=40, what="contoso's tables synced once")

            def agreed() -> float:
                total, _ = stored_pauses(database)
                return total if total > 0 and abs(metrics_pause(daemon) - total) < 0.01 else 0.0

            total = wait_until(agreed, timeout=30, what="the store's sum equal to /metrics")
            assert total >= paused

            entry, index, _ = asyncio.run(
                console_figures(f"http://127.0.0.1:{port}", sim["ca_file"])
            )
            assert entry["retry_after_seconds_24h"] == pytest.approx(total, abs=0.002)
            own = entry["environment_requests_24h"]
            assert own["paused_seconds"] == pytest.approx(paused, abs=0.002)
            assert own["throttled"] == throttled
            cell = re.search(
                rf'id="env-{ENV}".*?class="num paused" data-seconds="([0-9.]+)">', index, re.S
            )
            assert cell and float(cell.group(1)) == pytest.approx(total, abs=0.002)

            done = run_cli("--config", config, "status", "--json", env=SESSION)
            assert done.returncode == 0, done.stderr
            (env_status,) = [e for e in json.loads(done.stdout)["environments"] if e["name"] == ENV]
            assert env_status["retry_after_seconds_recent"] == pytest.approx(total, abs=0.01)
            tables = sum(t["retry_after_seconds_recent"] for t in env_status["tables"])
            ours = env_status["environment_requests"]["retry_after_seconds_recent"]
            assert ours == pytest.approx(paused, abs=0.01)
            assert tables + ours == pytest.approx(total, abs=0.01)
        finally:
            code = daemon.stop()
        assert code == 0, daemon.tail()


def test_a_pause_span_records_only_what_holds_a_429() -> None:
    """Pure: requests without a 429 extend the span; a 429 (or a pause) closes it with what
    was added since the last record."""
    span = PauseSpan(datetime(2026, 1, 1, tzinfo=UTC))
    assert span.take((3, 0, 0.0)) is None
    assert span.take((5, 1, 2.5)) == (5, 1, 2.5)
    assert span.take((9, 1, 2.5)) is None
    assert span.take((10, 3, 2.5)) == (5, 2, 0.0)
    assert span.seen == (10, 3, 2.5)
