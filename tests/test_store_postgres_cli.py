"""A PostgreSQL store that cannot be used says what to do in one line, through the real CLI:
a missing database or a role without the CREATE privilege is a configuration error (exit 2),
a server that does not answer is a store failure (exit 1); no traceback, no password shown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.cli import run_cli

pytestmark = pytest.mark.postgres
SECRET = "pg-cli-test-secret"
CONFIG = """
[app]
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}

[store]
url = "{url}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]
"""


def status(tmp_path: Path, url: str) -> tuple[int, str, str]:
    path = tmp_path / "dvmirror.toml"
    path.write_text(CONFIG.format(url=url))
    result = run_cli("--config", path, "status", env={"DVMIRROR_CLIENT_SECRET": SECRET})
    return result.returncode, result.stdout, result.stderr


def superuser(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_weak_role(url: str, role: str, password: str) -> None:
    conn = await asyncpg.connect(superuser(url))
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await conn.execute(f'REVOKE CREATE ON DATABASE "{make_url(url).database}" FROM PUBLIC')
    finally:
        await conn.close()


def test_a_usable_store_migrates_and_reports(tmp_path: Path, pg_url: str) -> None:
    code, out, err = status(tmp_path, pg_url)
    assert code == 0, err
    assert "contoso_prod" in out


def test_a_missing_database_is_a_configuration_error(tmp_path: Path, pg_url: str) -> None:
    missing = make_url(pg_url).set(database="no_such_database").render_as_string()
    code, _, err = status(tmp_path, missing)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "store.url" in err and "does not exist: create it" in err


def test_a_role_without_create_privilege_is_told_what_it_needs(tmp_path: Path, pg_url: str) -> None:
    password = "weak-role-password-9f2c"
    role = f"weak_{make_url(pg_url).database}"  # roles belong to the cluster, not the database
    asyncio.run(create_weak_role(pg_url, role, password))
    weak = make_url(pg_url).set(username=role, password=password)
    code, out, err = status(tmp_path, weak.render_as_string(hide_password=False))
    assert code == 2, err
    assert "needs CREATE on the database" in err
    assert password not in err and password not in out and "Traceback" not in err


def test_a_server_that_does_not_answer_is_a_store_failure(tmp_path: Path, pg_url: str) -> None:
    url = make_url(pg_url)
    if "host" in url.query:  # a unix socket directory: point at a port nobody listens on
        gone = url.update_query_dict({"port": "1"})
    else:
        gone = url.set(host="127.0.0.1", port=1)
    code, _, err = status(tmp_path, gone.render_as_string())
    assert code == 1, err
    assert "cannot connect" in err and "Traceback" not in err


async def insert_commits(url: str, rows: list[tuple[str, int, int]]) -> None:
    conn = await asyncpg.connect(superuser(url))
    try:
        await conn.executemany(
            "INSERT INTO dvmirror.dv_commits (environment, seq, table_name, committed_at,"
            " upserts, deletes) VALUES ($1, $2, 'account', now() - make_interval(days => $3), 1, 0)",
            rows,
        )
    finally:
        await conn.close()


def test_migrate_prunes_commit_records_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same pruning as on SQLite (the correlated delete keeps each environment's newest)."""
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        CONFIG.format(url=pg_url).replace("[store]", "[daemon]\nhistory_days = 7\n\n[store]")
    )
    env = {"DVMIRROR_CLIENT_SECRET": SECRET}
    assert run_cli("--config", path, "migrate", env=env).returncode == 0
    asyncio.run(
        insert_commits(
            pg_url, [("pg_quiet", 1, 40), ("pg_quiet", 2, 30), ("pg_busy", 1, 9), ("pg_busy", 2, 1)]
        )
    )
    result = run_cli("--config", path, "migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "dv_commits: pruned 2 commit records older than 7 days" in result.stdout
