"""`dvmirror status`: the report read from a real SQLite control database, JSON and human forms."""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import insert, update

from sync.cli import cli
from sync.commands.status import run_status
from sync.config.loading import load_config
from sync.config.model import Config
from sync.store.connect import create_engine
from sync.store.control import environments, leases, request_budget, run_history, sync_state
from sync.store.migrate import upgrade
from tests.cli import run_cli

SECRET = "status-test-secret-value"
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CONFIG = """
[app]
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}

[store]
url = "sqlite+aiosqlite:///{db}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
daily_request_budget = 5000

[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account", "contact", "lead"]

[[tenants]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"

[[tenants.environments]]
name = "fabrikam_prod"
url = "https://fabrikam.crm.dynamics.com"
tables = "all"
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "dvmirror.toml"
    path.write_text(CONFIG.format(db=tmp_path / "mirror.db"))
    return path


def config_for(path: Path) -> Config:
    return load_config(path, environ={"DVMIRROR_CLIENT_SECRET": SECRET})


def ago(**kwargs: float) -> dt.datetime:
    return NOW - dt.timedelta(**kwargs)


def state_row(environment: str, table: str, **values: Any) -> dict[str, Any]:
    return {"environment": environment, "table_name": table, "updated_at": NOW, **values}


def run_row(environment: str, table: str, started: dt.datetime, **values: Any) -> dict[str, Any]:
    return {
        "environment": environment,
        "table_name": table,
        "command": "run",
        "started_at": started,
        "finished_at": started + dt.timedelta(seconds=30),
        **values,
    }


async def seed(config: Config) -> None:
    """A database as a running daemon would leave it."""
    engine = create_engine(config.store_url)
    await upgrade(engine)
    async with engine.begin() as conn:
        for row in [
            state_row(
                "contoso_prod",
                "account",
                phase="delta",
                row_count=1234,
                last_success=ago(seconds=120),
                attempts=0,
            ),
            state_row(
                "contoso_prod",
                "contact",
                phase="parked",
                row_count=10,
                last_success=ago(hours=3),
                last_error="403 from Dataverse; Authorization: Bearer abc.def-ghi",
                last_error_at=ago(minutes=5),
                attempts=4,
                parked_until=NOW + dt.timedelta(minutes=30),
            ),
            state_row("contoso_prod", "opportunity", phase="delta", row_count=7),
            state_row("fabrikam_prod", "account", phase="backfill", row_count=50_000),
            state_row("old_env", "account", phase="delta", row_count=1),
        ]:
            await conn.execute(insert(sync_state), row)  # rows differ in keys: one at a time
        for row in [
            run_row("contoso_prod", "account", ago(hours=48), throttled=10, requests=90),
            run_row("contoso_prod", "account", ago(hours=2), throttled=2, requests=40),
            run_row(
                "contoso_prod",
                "account",
                ago(minutes=3),
                throttled=1,
                requests=5,
                status="ok",
            ),
        ]:
            await conn.execute(insert(run_history), row)
        await conn.execute(
            insert(request_budget),
            [{"tenant": "contoso", "window_start": ago(hours=1), "used": 1200}],
        )
        await conn.execute(
            insert(environments),
            [
                {
                    "name": "old_env",
                    "tenant": "gone",
                    "tenant_id": "gone.onmicrosoft.com",
                    "url": "https://gone.crm.dynamics.com",
                    "first_seen": ago(days=30),
                    "updated_at": ago(days=2),
                }
            ],
        )
    await engine.dispose()


async def status_json(config: Config) -> dict[str, Any]:
    out = io.StringIO()
    code = await run_status(config, as_json=True, console=Console(file=out, width=80), now=NOW)
    assert code == 0
    document: dict[str, Any] = json.loads(out.getvalue())
    return document


def tables_of(document: dict[str, Any], environment: str) -> dict[str, dict[str, Any]]:
    env = next(e for e in document["environments"] if e["name"] == environment)
    return {t["table"]: t for t in env["tables"]}


async def test_json_report_reflects_the_control_tables(tmp_path: Path) -> None:
    """Phase, rows, lag, errors, throttling and parking come straight from the stored rows."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    document = await status_json(config)

    assert NOW.isoformat() == document["generated_at"]
    assert [e["name"] for e in document["environments"]] == [
        "contoso_prod",
        "fabrikam_prod",
        "old_env",
    ]
    contoso = tables_of(document, "contoso_prod")
    assert list(contoso) == ["account", "contact", "lead", "opportunity"]
    account = contoso["account"]
    assert account["phase"] == "delta"
    assert account["rows"] == 1234
    assert ago(seconds=120).isoformat() == account["last_success"]
    assert account["lag_seconds"] == 120.0
    assert account["throttled_recent"] == 3  # the 48-hour-old run is outside the window
    assert account["last_run"]["status"] == "ok"

    contact = contoso["contact"]
    assert contact["phase"] == "parked"
    assert contact["attempts"] == 4
    assert (NOW + dt.timedelta(minutes=30)).isoformat() == contact["parked_until"]
    assert "abc.def-ghi" not in contact["last_error"]
    assert contact["last_error"].startswith("403 from Dataverse")


async def test_unsynced_and_unconfigured_tables_are_listed(tmp_path: Path) -> None:
    """Configured tables without state are "new"; leftovers from old config are marked so."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    document = await status_json(config)

    lead = tables_of(document, "contoso_prod")["lead"]
    assert {k: lead[k] for k in ("phase", "rows", "last_success", "lag_seconds", "configured")} == {
        "phase": "new",
        "rows": 0,
        "last_success": None,
        "lag_seconds": None,
        "configured": True,
    }
    assert tables_of(document, "contoso_prod")["opportunity"]["configured"] is False
    assert tables_of(document, "fabrikam_prod")["account"]["configured"] is True  # tables = "all"
    old_env = next(e for e in document["environments"] if e["name"] == "old_env")
    assert (old_env["configured"], old_env["tenant"]) == (False, "gone")


async def test_budgets_per_tenant(tmp_path: Path) -> None:
    """Each tenant's daily request budget shows used, limit and remaining for the open window."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    document = await status_json(config)

    assert [
        {
            "tenant": "contoso",
            "limit": 5000,
            "used": 1200,
            "remaining": 3800,
            "window_start": ago(hours=1).isoformat(),
            "window_ends": (ago(hours=1) + dt.timedelta(hours=24)).isoformat(),
        },
        {
            "tenant": "fabrikam",
            "limit": None,
            "used": 0,
            "remaining": None,
            "window_start": None,
            "window_ends": None,
        },
    ] == document["budgets"]


async def test_fresh_database_shows_every_configured_table_as_new(tmp_path: Path) -> None:
    """Before the first sync every configured table is listed with phase "new"."""
    config = config_for(write_config(tmp_path))
    document = await status_json(config)

    contoso = tables_of(document, "contoso_prod")
    assert list(contoso) == ["account", "contact", "lead"]
    assert {"new"} == {t["phase"] for t in contoso.values()}
    assert tables_of(document, "fabrikam_prod") == {}  # "all": nothing discovered yet


async def test_each_environment_shows_its_owner(tmp_path: Path) -> None:
    """The holder of an environment's current lease and its expiry; none when it expired."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    engine = create_engine(config.store_url)
    async with engine.begin() as conn:
        await conn.execute(
            insert(leases),
            [
                {
                    "resource": "contoso_prod",
                    "holder": "host-a:41:abc123",
                    "token": 3,
                    "acquired_at": ago(seconds=10),
                    "expires_at": NOW + dt.timedelta(seconds=20),
                },
                {
                    "resource": "fabrikam_prod",
                    "holder": "host-b:42:def456",
                    "token": 1,
                    "acquired_at": ago(seconds=40),
                    "expires_at": ago(seconds=10),
                },
            ],
        )
    await engine.dispose()
    document = await status_json(config)
    owners = {e["name"]: (e["owner"], e["lease_expires_at"]) for e in document["environments"]}
    assert owners == {
        "contoso_prod": ("host-a:41:abc123", (NOW + dt.timedelta(seconds=20)).isoformat()),
        "fabrikam_prod": (None, None),
        "old_env": (None, None),
    }
    for width in (220, 80):
        out = io.StringIO()
        await run_status(config, as_json=False, console=Console(file=out, width=width), now=NOW)
        assert "host-a:41:abc123" in out.getvalue()
        assert "host-b:42:def456" not in out.getvalue()


async def test_human_output_is_a_table(tmp_path: Path) -> None:
    """Without --json the report is a readable table with lag, phases and the budget."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    out = io.StringIO()
    code = await run_status(config, as_json=False, console=Console(file=out, width=220), now=NOW)
    text = out.getvalue()

    assert code == 0
    assert "contoso_prod" in text
    assert "2m 0s" in text  # account's lag
    assert "parked" in text
    assert "1,234" in text
    assert "opportunity (not configured)" in text
    assert "Daily request budgets" in text
    assert "abc.def-ghi" not in text


async def test_an_80_column_terminal_wraps_but_never_cuts(tmp_path: Path) -> None:
    """On an 80-column console every environment, table and error is shown whole (wrapped in
    its cell), never cut to "cont…"."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    out = io.StringIO()
    await run_status(config, as_json=False, console=Console(file=out, width=80), now=NOW)
    text = out.getvalue()
    assert "…" not in text
    joined = "".join(text.split())  # folded cells: join the pieces back
    for word in ("contoso_prod", "account", "contact", "opportunity(notconfigured)"):
        assert word in joined


async def test_status_reads_while_a_writer_holds_the_database(tmp_path: Path) -> None:
    """A write transaction left open by the daemon neither blocks status nor leaks into it."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    writer = sqlite3.connect(tmp_path / "mirror.db", timeout=0.1, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "UPDATE dv_sync_state SET row_count = 999999 WHERE table_name = 'account' "
            "AND environment = 'contoso_prod'"
        )
        document = await status_json(config)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert tables_of(document, "contoso_prod")["account"]["rows"] == 1234


@pytest.mark.skipif(
    "status" not in cli.commands, reason="`status` is not wired into sync/cli.py yet"
)
def test_cli_status_json_subprocess(tmp_path: Path) -> None:
    """`dvmirror status --json` exits 0 and prints one JSON document with the stable keys."""
    import asyncio

    path = write_config(tmp_path)
    asyncio.run(seed(config_for(path)))
    result = run_cli("--config", path, "status", "--json", env={"DVMIRROR_CLIENT_SECRET": SECRET})

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"generated_at", "environments", "budgets"} <= document.keys()
    account = tables_of(document, "contoso_prod")["account"]
    assert {
        "table",
        "phase",
        "rows",
        "last_success",
        "lag_seconds",
        "last_error",
        "attempts",
        "parked_until",
        "throttled_recent",
    } <= account.keys()
    assert (account["phase"], account["rows"]) == ("delta", 1234)
    assert SECRET not in result.stdout + result.stderr


async def test_errors_are_shown_as_written_never_read_as_markup(tmp_path: Path) -> None:
    """Errors quote the service and the store; text like `[/bold]` or a TOML table name in
    brackets is printed as it is, never taken for rich markup (which would drop it or fail)."""
    config = config_for(write_config(tmp_path))
    await seed(config)
    error = "service said [/bold] [red]no[/red]; set [tenants.environments.table_options.contact]"
    engine = create_engine(config.store_url)
    async with engine.begin() as conn:
        await conn.execute(
            update(sync_state).where(sync_state.c.table_name == "contact").values(last_error=error)
        )
    await engine.dispose()
    for width in (220, 80):
        out = io.StringIO()
        code = await run_status(
            config, as_json=False, console=Console(file=out, width=width), now=NOW
        )
        assert code == 0
        # The table wraps the cell between the two parts; the compact form has it whole.
        for part in ("service said [/bold] [red]no[/red]; set", error.rpartition(" ")[2]):
            assert part in out.getvalue(), out.getvalue()
