"""The SQL view of table status (`dv_table_status`, PostgreSQL `dvmirror.table_status`) says
what `dvmirror status --json` says, on a real SQLite file and a real PostgreSQL cluster."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.migrate import upgrade
from sync.store.table_status import VIEW_NAMES, initial_sync_state
from tests.cli import run_cli
from tests.test_commit_feed import ENV, config_for

COLUMNS = [
    "environment",
    "table",
    "phase",
    "initial_sync",
    "last_synced_at",
    "lag_seconds",
    "mirror_rows",
    "source_rows_estimate",
    "source_rows_as_of",
    "last_verify",
    "last_error",
    "parked_until",
    "last_verify_outcome",
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="engine")
async def _engine(store_url: str) -> AsyncIterator[Any]:
    engine = create_engine(store_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


def moment(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


async def three_tables(engine: Any) -> None:
    """account: synced (delta, 42 rows); contact: first pass under way and parked; lead: new."""
    now = datetime.now(UTC).replace(microsecond=0)
    for table in ("account", "contact", "lead"):
        await state.ensure(engine, ENV, table, now=now)
    synced = state.checkpoint_statements(
        ENV, "account", TableState("delta", delta_link="https://x/d"), now=now, row_count=42
    )
    going = state.checkpoint_statements(
        ENV, "contact", TableState("backfill", next_link="https://x/n"), now=now, row_count=7
    )
    async with engine.begin() as conn:
        for statement in [*synced, *going]:
            await conn.execute(statement)
    await state.record_success(engine, ENV, "account", now=now - timedelta(minutes=5))
    await state.record_error(
        engine,
        ENV,
        "contact",
        "HTTP 503 from the service",
        now=now,
        attempts=2,
        retry_at=now + timedelta(minutes=10),
    )


async def test_the_view_matches_status_json(engine: Any, store_url: str, tmp_path: Path) -> None:
    await three_tables(engine)
    config = (
        config_for(tmp_path, store_url)
        .read_text()
        .replace('tables = ["account"]', 'tables = ["account", "contact", "lead"]')
    )
    path = tmp_path / "three.toml"
    path.write_text(config)
    result = run_cli(
        "--config", path, "status", "--json", env={"DVMIRROR_CLIENT_SECRET": "view-secret"}
    )
    assert result.returncode == 0, result.stderr
    [env] = json.loads(result.stdout)["environments"]
    reported = {entry["table"]: entry for entry in env["tables"]}
    view = VIEW_NAMES[engine.dialect.name]
    async with engine.connect() as conn:
        found = await conn.execute(text(f"SELECT * FROM {view} ORDER BY 2"))
        assert list(found.keys()) == COLUMNS
        rows = [dict(r._mapping) for r in found]
    assert [r["table"] for r in rows] == ["account", "contact", "lead"]
    for r in rows:
        entry = reported[r["table"]]
        assert r["environment"] == ENV
        assert r["phase"] == entry["phase"]
        assert r["initial_sync"] == entry["initial_sync"] == initial_sync_state(r["phase"])
        assert moment(r["last_synced_at"]) == moment(entry["last_success"])
        if entry["lag_seconds"] is None:
            assert r["lag_seconds"] is None
        else:
            assert abs(float(r["lag_seconds"]) - entry["lag_seconds"]) < 30
        assert r["mirror_rows"] == entry["rows"]
        assert r["last_error"] == entry["last_error"]
        assert moment(r["parked_until"]) == moment(entry["parked_until"])
        # No `dvmirror verify` has run yet (test_verify_e2e checks the view after one).
        assert r["source_rows_estimate"] is r["source_rows_as_of"] is r["last_verify"] is None
        assert r["last_verify_outcome"] is None
    by_table = {r["table"]: r for r in rows}
    assert [by_table[t]["initial_sync"] for t in ("account", "contact", "lead")] == [
        "Completed",
        "InProgress",
        "NotStarted",
    ]
    assert by_table["account"]["mirror_rows"] == 42
    assert 290 < float(by_table["account"]["lag_seconds"]) < 330
    assert by_table["contact"]["parked_until"] is not None


@pytest.mark.parametrize(
    ("phase", "shown"),
    [
        (None, "NotStarted"),
        ("new", "NotStarted"),
        ("backfill", "InProgress"),
        ("resync", "Completed"),
        ("delta", "Completed"),
        ("watermark", "Completed"),
        ("reconcile", "Completed"),
    ],
)
def test_initial_sync_state(phase: str | None, shown: str) -> None:
    assert initial_sync_state(phase) == shown
