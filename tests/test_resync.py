"""`dvmirror resync` against the simulator over HTTPS, with the daemon as a subprocess.

A mirror can drift from its source in ways change tracking never reports: rows removed from the
mirror by hand, ghost rows a botched restore or a purge left behind. A resync request reads the
table(s) completely and sweeps what it did not see, so the mirror equals the source again, and
incremental sync goes on from a new delta link. The tests damage a real mirror file (ghost rows
inserted, real rows deleted) and check the repair column by column against the simulator.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.config.loading import load_config
from sync.store import checkpoints
from sync.store.open import open_store
from tests.cli import run_cli
from tests.daemonproc import (
    DaemonProcess,
    EnvSpec,
    admin_post,
    as_utc,
    sync_states,
    wait_until,
    write_config,
)
from tests.mirror_compare import PRIMARY, differences
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "daemon.toml"
OLD_STAMP = "2000-01-01T00:00:00.000000Z"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-resync")) as ready:
        yield ready


def database(config: Path) -> Path:
    return config.parent / "mirror.db"


def damage(
    db: Path, env: str, table: str, *, ghosts: int, removed: int
) -> tuple[set[str], set[str]]:
    """Insert ghost rows (ids the source never had) and delete real rows, straight in the
    mirror file: drift that change tracking never reports. Returns (ghost ids, removed ids)."""
    key = PRIMARY[table]
    ghost_ids = {str(uuid.uuid4()) for _ in range(ghosts)}
    with sqlite3.connect(db, timeout=30) as conn:
        real = [r[0] for r in conn.execute(f'SELECT "{key}" FROM "{env}__{table}" ORDER BY 1')]
        gone = set(real[:removed])
        conn.executemany(
            f'INSERT INTO "{env}__{table}" ("{key}", "_dv_synced_at") VALUES (?, ?)',
            [(ghost, OLD_STAMP) for ghost in ghost_ids],
        )
        conn.executemany(f'DELETE FROM "{env}__{table}" WHERE "{key}" = ?', [(g,) for g in gone])
    return ghost_ids, gone


def requests(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM dv_resync_requests ORDER BY id")]
        except sqlite3.OperationalError:
            return []


def audit_rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM dv_audit ORDER BY id")]


def logged_deletions(db: Path, env: str, table: str) -> set[str]:
    with sqlite3.connect(db, timeout=10) as conn:
        rows = conn.execute(
            'SELECT id FROM _dv_deletions WHERE environment = ? AND "table" = ?', (env, table)
        )
        return {r[0] for r in rows}


def wait_request(
    db: Path, request_id: int, state: str = "done", timeout: float = 90
) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        for row in requests(db):
            if row["id"] == request_id and row["state"] in ("done", "failed"):
                return row
        return None

    row = wait_until(ended, timeout=timeout, every=0.3, what=f"resync #{request_id} to end")
    assert row["state"] == state, row
    return row


def queue(config: Path, *args: str) -> str:
    result = run_cli("--config", config, "resync", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_json(config: Path) -> dict[str, Any]:
    result = run_cli("--config", config, "status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def converged(sim: dict[str, Any], db: Path, env: str, tables: tuple[str, ...]) -> bool:
    states = sync_states(db)
    return all(
        states.get((env, t), {}).get("last_success") and not differences(sim, db, env, t)
        for t in tables
    )


def test_resync_of_one_table_while_the_daemon_runs_sweeps_ghosts_and_restores_rows(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """A table that sleeps until its next cycle (interval 1 h) is woken by a request: the
    daemon claims it, reads the whole table, restores rows removed from the mirror, sweeps the
    ghosts (logged in _dv_deletions), stores a new delta link and marks the request done; the
    other table is not read again."""
    config = write_config(
        sim, tmp_path, {"churn_env": EnvSpec(("account", "contact"), page_size=25, interval="1h")}
    )
    db = database(config)
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(
            lambda: converged(sim, db, "churn_env", ("account", "contact")),
            timeout=90,
            what="first convergence",
        )
        before = sync_states(db)[("churn_env", "account")]
        ghosts, removed = damage(db, "churn_env", "account", ghosts=3, removed=4)
        assert differences(sim, db, "churn_env", "account")  # the damage is visible

        out = queue(config, "--env", "churn_env", "--table", "account")
        assert "queued resync #1: churn_env/account (requested by cli:" in out
        assert "dvmirror status" in out
        row = wait_request(db, 1)
        assert row["rows_done"] >= 116 and row["handled_by"] and row["error"] is None
        assert row["started_at"] and row["finished_at"]

        assert not differences(sim, db, "churn_env", "account")  # mirror = source again
        assert ghosts <= logged_deletions(db, "churn_env", "account")
        after = sync_states(db)[("churn_env", "account")]
        assert after["phase"] == "delta" and after["delta_link"]
        assert after["delta_link"] != before["delta_link"]  # incremental goes on from a new one
        assert after["resync_started_at"] is None and after["parked_until"] is None
        started = daemon.named("resync_pass_started")
        assert [e["table"] for e in started] == ["account"]  # contact was not read again
        claimed = daemon.named("resync_claimed")[0]
        assert claimed["request"] == 1 and claimed["tables"] == ["account"]

        document = status_json(config)
        shown = {r["id"]: r for r in document["resync_requests"]}
        assert shown[1]["shown"] == "done" and shown[1]["percent"] == 100
        assert shown[1]["table"] == "account" and shown[1]["requested_by"].startswith("cli:")
        text = run_cli("--config", config, "status")
        assert text.returncode == 0 and "Resync requests" in text.stdout
        assert "churn_env/account" in text.stdout and "done" in text.stdout
        assert removed  # restored: differences() above found no row missing
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_request_queued_without_a_daemon_is_merged_then_run_when_one_starts(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """With no daemon running, `resync --all` queues one request (a second one is merged into
    it, both audited); the daemon that starts later picks it up and repairs every table."""
    env = "fabrikam_env"
    tables = ("account", "contact")
    config = write_config(sim, tmp_path, {env: EnvSpec(tables, page_size=20, interval="1h")})
    db = database(config)
    synced = run_cli("--config", config, "sync", "--once")
    assert synced.returncode == 0, synced.stderr
    damaged = {table: damage(db, env, table, ghosts=2, removed=3) for table in tables}

    first = queue(config, "--env", env, "--all")
    assert f"queued resync #1: every table of {env}" in first
    second = queue(config, "--env", env, "--all")
    assert "already queued: resync #1" in second and "not queued twice" in second
    rows = requests(db)
    assert len(rows) == 1 and rows[0]["state"] == "requested" and rows[0]["table_name"] is None
    audits = audit_rows(db)
    assert [a["action"] for a in audits] == ["resync_requested", "resync_requested"]
    assert [a["outcome"] for a in audits] == ["ok: queued #1", "ok: merged into open #1"]
    assert all(a["preferred_username"].startswith("cli:") for a in audits)
    assert all(a["target"] == f"{env}/*" and a["environment"] == env for a in audits)
    waiting = status_json(config)["resync_requests"]
    assert [(r["id"], r["shown"]) for r in waiting] == [(1, "requested")]
    table_entries = status_json(config)["environments"][0]["tables"]
    assert {e["table"]: e["resync"] for e in table_entries} == {
        t: {"id": 1, "shown": "requested"} for t in tables
    }

    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_request(db, 1)
        for table in tables:
            assert not differences(sim, db, env, table), table
            assert damaged[table][0] <= logged_deletions(db, env, table)
        assert sorted(e["table"] for e in daemon.named("resync_pass_started")) == list(tables)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    # Done: a new request for the same target is a new row, not merged into the finished one.
    assert "queued resync #2" in queue(config, "--env", env, "--all")


def test_running_request_shows_its_progress(sim: dict[str, Any], tmp_path: Path) -> None:
    """A resync of a table of slow pages is shown running with a percentage between 0 and 100
    while it reads, then done with every row counted."""
    config = write_config(
        sim, tmp_path, {"big_env": EnvSpec(("opportunity",), page_size=25, interval="1h")}
    )
    db = database(config)
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(
            lambda: converged(sim, db, "big_env", ("opportunity",)),
            timeout=120,
            what="first backfill",
        )
        queue(config, "--env", "big_env", "--table", "opportunity")

        def midway() -> dict[str, Any] | None:
            for row in requests(db):
                expected = row["rows_expected"]
                if row["state"] == "running" and expected and 0 < row["rows_done"] < expected:
                    return row
            return None

        running = wait_until(midway, timeout=60, every=0.1, what="a running request with progress")
        assert running["rows_expected"] == 3000
        done = wait_request(db, 1, timeout=120)
        assert done["rows_done"] == 3000 and done["rows_expected"] == 3000
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--env", "nowhere", "--all"), "environment 'nowhere' is not in"),
        (("--env", "adatum_env", "--table", "contact"), "table 'contact' is not mirrored"),
        (("--env", "adatum_env"), "give --table T for one table, or --all"),
        (("--env", "adatum_env", "--table", "account", "--all"), "give --table T"),
    ],
)
def test_invalid_requests_are_one_line_exit_2_and_write_nothing(
    sim: dict[str, Any], tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    """An unknown environment or table, or neither/both of --table and --all: exit 2, one
    line that says what to pass, and no request written."""
    config = write_config(sim, tmp_path, {"adatum_env": EnvSpec(("account",))})
    result = run_cli("--config", config, "resync", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("dvmirror: error:")
    assert result.stdout == ""
    assert requests(database(config)) == []


def test_with_tables_all_only_a_table_the_daemon_took_up_can_be_resynced(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """`tables = "all"`: a table without state in the store (never discovered: a typo, or not
    in the environment) is refused with exit 2 and one line naming environment and table, and
    nothing is queued; once the table has state, the same command queues it."""
    config = write_config(sim, tmp_path, {"adatum_env": EnvSpec(("account",))})
    config.write_text(config.read_text().replace('tables = ["account"]', 'tables = "all"'))
    refused = run_cli("--config", config, "resync", "--env", "adatum_env", "--table", "acount")
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("dvmirror: error:") and "'acount'" in line and "adatum_env" in line
    assert "not mirrored" in line and refused.stdout == ""
    assert requests(database(config)) == []

    async def take_up() -> None:  # what the daemon's discovery writes first: a state row
        engine = await open_store(load_config(config, resolve_secrets=False))
        try:
            now = dt.datetime.now(dt.UTC)
            await checkpoints.ensure(engine, "adatum_env", "account", now=now)
        finally:
            await engine.dispose()

    asyncio.run(take_up())
    again = run_cli("--config", config, "resync", "--env", "adatum_env", "--table", "acount")
    assert again.returncode == 2 and "mirrored so far: account" in again.stderr
    queued = run_cli("--config", config, "resync", "--env", "adatum_env", "--table", "account")
    assert queued.returncode == 0, queued.stderr
    assert [(r["environment"], r["table_name"]) for r in requests(database(config))] == [
        ("adatum_env", "account")
    ]


def test_a_request_for_a_parked_table_runs_at_once_instead_of_after_its_backoff(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """A table parked by a broken page waits out a backoff (7.5 s at least); once the source
    is fixed, a resync request un-parks it: the pass runs and the request is done before the
    retry the scheduler had planned, and the table is no longer parked."""
    env, table = "adatum_env", "account"
    hostile = f"/environments/{env}/tables/{table}/hostile"
    admin_post(sim, hostile, {"kind": "malformed_json"})
    config = write_config(sim, tmp_path, {env: EnvSpec((table,), interval="1h")})
    db = database(config)
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        parked = wait_until(
            lambda: (sync_states(db).get((env, table)) or {}).get("parked_until"),
            timeout=60,
            what="the table parked",
        )
        admin_post(sim, hostile, {"kind": None})
        queue(config, "--env", env, "--table", table)
        row = wait_request(db, 1, timeout=60)
        assert as_utc(row["finished_at"]) < as_utc(parked)  # type: ignore[operator]
        state = sync_states(db)[(env, table)]
        assert state["parked_until"] is None and not differences(sim, db, env, table)
        assert as_utc(state["last_success"]) > as_utc(state["last_error_at"])  # type: ignore[operator]
        assert daemon.stop() == 0
    finally:
        admin_post(sim, hostile, {"kind": None})
        daemon.kill()
