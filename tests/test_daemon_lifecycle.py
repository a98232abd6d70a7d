"""`dvmirror run` as a subprocess against the simulator over HTTPS: churn, a tenant without
consent, /metrics and /healthz, `status --json` beside it, and SIGTERM.

One daemon (module fixture) serves the tests that only watch it; the last of them stops it.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "daemon.toml"
GOOD = {
    "churn_env": ("account", "contact"),
    "fabrikam_env": ("account", "contact"),
    "adatum_env": ("account",),
}
BAD = {"northwind_env": ("account",)}
GOOD_TABLES = [(env, table) for env, tables in GOOD.items() for table in tables]


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-daemon")) as ready:
        yield ready


@pytest.fixture(scope="module", name="daemon")
def _daemon(
    sim: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """A daemon for three good environments and one in a tenant that never consented."""
    directory = tmp_path_factory.mktemp("daemon")
    specs = {name: EnvSpec(tables, page_size=25) for name, tables in (GOOD | BAD).items()}
    config = write_config(sim, directory, specs)
    daemon = DaemonProcess.start(config, directory / "daemon.log")
    try:
        yield daemon
    finally:
        daemon.kill()


def database(daemon: DaemonProcess) -> Path:
    return daemon.config.parent / "mirror.db"


def converged(
    sim: dict[str, Any],
    daemon: DaemonProcess,
    tables: list[tuple[str, str]],
    *,
    after: dt.datetime | None = None,
) -> bool:
    """Every table had a success (after `after`) and equals its source."""
    states = sync_states(database(daemon))
    for env, table in tables:
        success = as_utc(states.get((env, table), {}).get("last_success"))
        if success is None or (after is not None and success <= after):
            return False
        if differences(sim, database(daemon), env, table):
            return False
    return True


def wait_converged(sim: dict[str, Any], daemon: DaemonProcess, **kwargs: Any) -> None:
    tables = kwargs.pop("tables", GOOD_TABLES)
    wait_until(
        lambda: converged(sim, daemon, tables, **kwargs),
        timeout=90,
        every=0.5,
        what=f"convergence of {tables}",
    )


def status_document(daemon: DaemonProcess) -> dict[str, Any]:
    result = run_cli("--config", daemon.config, "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def status_tables(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (env["name"], entry["table"]): entry
        for env in document["environments"]
        for entry in env["tables"]
    }


def test_unconsented_tenant_is_parked_while_the_others_sync(
    sim: dict[str, Any], daemon: DaemonProcess
) -> None:
    """A tenant without consent is parked with a clear error; the other tenants converge."""
    wait_converged(sim, daemon)
    parked = daemon.wait_event("environment_parked")[0]
    assert parked["environment"] == "northwind_env"
    assert "not consented" in parked["error"]
    entry = status_tables(status_document(daemon))[("northwind_env", "account")]
    assert entry["last_error"] is not None
    assert "not consented" in entry["last_error"]
    assert entry["last_success"] is None
    assert daemon.process.poll() is None


def test_status_json_matches_the_database_while_running(
    sim: dict[str, Any], daemon: DaemonProcess
) -> None:
    """`status --json` beside the running daemon: rows equal the mirror counts, phases the state."""
    wait_converged(sim, daemon)
    document = status_document(daemon)
    states = sync_states(database(daemon))
    entries = status_tables(document)
    for env, table in GOOD_TABLES:
        entry = entries[(env, table)]
        assert entry["phase"] == states[(env, table)]["phase"] == "delta"
        assert entry["rows"] == mirror_count(database(daemon), env, table) > 0
        assert entry["last_success"] is not None
    assert daemon.process.poll() is None


def metric_samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name (counters keep their `_total` suffix), plus every family name."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(f"family:{family.name}", [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_metrics_and_health_while_running(sim: dict[str, Any], daemon: DaemonProcess) -> None:
    """/metrics has rows, request and 429 families, concurrency, freshness and token failures;
    /healthz answers 200: degraded, naming the environment whose tenant cannot sign in."""
    wait_converged(sim, daemon)
    (parked, *_) = daemon.wait_event("environment_parked")
    wait_until(lambda: daemon.named("ready"), what="ready")
    status, body = daemon.get("/healthz")
    assert status == 200
    document = json.loads(body)
    assert document["status"] == "degraded"
    assert list(document["degraded"]) == [parked["environment"]]

    status, text = daemon.get("/metrics")
    assert status == 200
    samples = metric_samples(text)
    upserted = {
        (labels["environment"], labels["table"]): value
        for labels, value in samples["dvmirror_rows_upserted_total"]
    }
    for key in GOOD_TABLES:
        assert upserted[key] > 0
    assert {"family:dvmirror_requests", "family:dvmirror_throttled"} <= samples.keys()
    ok_requests = {
        labels["environment"]: value
        for labels, value in samples["dvmirror_requests_total"]
        if labels["outcome"] == "2xx"
    }
    for env in GOOD:
        assert ok_requests[env] > 0
    concurrency = {labels["environment"] for labels, _ in samples["dvmirror_concurrency_limit"]}
    assert set(GOOD) <= concurrency
    for name in (
        "dvmirror_table_last_success_timestamp_seconds",
        "dvmirror_table_lag_seconds",
    ):
        fresh = {(labels["environment"], labels["table"]) for labels, _ in samples[name]}
        assert set(GOOD_TABLES) <= fresh
        assert ("northwind_env", "account") not in fresh
    failures = {
        (labels["tenant"], labels["reason"]): value
        for labels, value in samples["dvmirror_token_failures_total"]
    }
    assert failures[("northwind", "consent")] >= 1
    assert all(tenant == "northwind" for tenant, _ in failures)


def test_churn_converges_then_sigterm_exits_zero(
    sim: dict[str, Any], daemon: DaemonProcess
) -> None:
    """Under ongoing churn every table converges to the source; SIGTERM then exits 0."""
    wait_converged(sim, daemon)
    seeds = iter(range(100, 10_000))

    def keep_churning() -> None:
        # Eight batches 0.4 s apart span more than one cycle (interval 2 s) of every table.
        for _ in range(8):
            for env, table in GOOD_TABLES:
                churn(sim, env, table, seed=next(seeds))
            time.sleep(0.4)

    churner = threading.Thread(target=keep_churning)
    churner.start()
    churner.join(120)
    assert not churner.is_alive()
    last_churn = dt.datetime.now(dt.UTC)
    wait_converged(sim, daemon, after=last_churn)

    assert daemon.stop() == 0
    assert daemon.named("stopped")[0]["reason"] == "SIGTERM"
    assert not daemon.named("shutdown_grace_exceeded")
    errors = [e for e in daemon.events() if e.get("level") in ("error", "critical")]
    assert all(e.get("environment") == "northwind_env" for e in errors), errors


def test_sigterm_mid_backfill_commits_and_the_next_start_resumes(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """SIGTERM during a backfill exits 0 with a committed next link; the next start resumes."""
    page = 30
    config = write_config(sim, tmp_path, {"big_env": EnvSpec(("opportunity",), page_size=page)})
    db = tmp_path / "mirror.db"
    grace = {"DVMIRROR_DAEMON__SHUTDOWN_GRACE": '"5s"'}
    first = DaemonProcess.start(config, tmp_path / "first.log", env=grace)
    try:
        wait_until(
            lambda: sync_states(db).get(("big_env", "opportunity"), {}).get("pages", 0) >= 5,
            what="a few backfill pages",
        )
        assert first.stop() == 0
    finally:
        first.kill()
    assert not first.named("shutdown_grace_exceeded")
    state = sync_states(db)[("big_env", "opportunity")]
    assert state["phase"] == "backfill"
    assert state["next_link"]
    committed = mirror_count(db, "big_env", "opportunity")
    total = len(sim_rows := _source_ids(sim))
    assert 0 < committed < total, "the backfill was not caught in the middle"
    served_before = _rows_served(sim)

    second = DaemonProcess.start(config, tmp_path / "second.log")
    try:
        wait_until(
            lambda: sync_states(db)[("big_env", "opportunity")]["phase"] == "delta",
            timeout=90,
            what="the resumed backfill",
        )
        assert not differences(sim, db, "big_env", "opportunity")
        assert second.stop() == 0
    finally:
        second.kill()
    served = _rows_served(sim) - served_before
    assert served <= total - committed + page, (served, total, committed)
    assert len(sim_rows) == mirror_count(db, "big_env", "opportunity")


def _source_ids(sim: dict[str, Any]) -> list[Any]:
    from tests.mirror_compare import source_rows

    return [row["opportunityid"] for row in source_rows(sim, "big_env", "opportunity")]


def _rows_served(sim: dict[str, Any]) -> int:
    from tests.simfixtures import user_stats

    return int(user_stats(sim, "big_env")["rows_served"])


def test_small_environments_do_not_wait_for_a_big_backfill(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """Each small environment of other tenants finishes its first sync before the big backfill."""
    specs = {name: EnvSpec(tables) for name, tables in GOOD.items() if name != "churn_env"}
    specs["big_env"] = EnvSpec(("opportunity",), page_size=20)
    config = write_config(sim, tmp_path, specs)
    db = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(
            lambda: sync_states(db).get(("big_env", "opportunity"), {}).get("phase") == "delta",
            timeout=120,
            what="the big backfill",
        )
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    first_ok = _first_successes(db)
    big = first_ok[("big_env", "opportunity")]
    for env in ("fabrikam_env", "adatum_env"):
        for table in GOOD[env]:
            assert first_ok[(env, table)] < big, (env, table, first_ok)


def _first_successes(db: Path) -> dict[tuple[str, str], str]:
    """When each table's first successful run finished (from dv_run_history)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT environment, table_name, min(finished_at) FROM dv_run_history "
            "WHERE status = 'ok' GROUP BY environment, table_name"
        ).fetchall()
    return {(env, table): finished for env, table, finished in rows}


def test_sigint_also_stops_cleanly(sim: dict[str, Any], tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) stops the daemon like SIGTERM: exit 0, reason logged."""
    config = write_config(sim, tmp_path, {"adatum_env": EnvSpec(("account",))})
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        daemon.wait_event("ready")
        daemon.send(signal.SIGINT)
        assert daemon.process.wait(60) == 0
    finally:
        daemon.kill()
    assert daemon.named("stopped")[0]["reason"] == "SIGINT"
