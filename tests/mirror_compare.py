"""Compare a mirror (a real SQLite file or PostgreSQL database) with the simulator's own rows,
column by column.

`database` is a SQLite file's path, or a PostgreSQL store URL (`postgresql+asyncpg://…`), whose
mirror tables are `"<env>"."<table>"` with native types.

`differences()` returns what differs (empty when the mirror equals the source), so a test can
poll it while a daemon catches up; `assert_converged()` is the one-shot assertion.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest


@pytest.fixture(name="store_url", params=["sqlite", "postgres"])
def _store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on both stores: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"


PRIMARY = {
    "account": "accountid",
    "contact": "contactid",
    "new_project": "new_projectid",
    "opportunity": "opportunityid",
    "new_person": "new_personid",
    "new_inspection": "new_inspectionid",
}


def primary_of(table: str) -> str:
    """The primary key of a simulated table (an intersect table's is `<intersect>id`)."""
    return PRIMARY.get(table, f"{table}id")


def database_path(store_url: str) -> Path:
    """The SQLite file of a `sqlite+aiosqlite:///…` store URL."""
    return Path(store_url.split("///", 1)[1])


def database_of(store_url: str) -> Path | str:
    """What the functions below take: a SQLite file's path, or the PostgreSQL URL itself."""
    return store_url if store_url.startswith("postgresql") else database_path(store_url)


def query(database: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one read query on either store; `?` placeholders, control tables unqualified."""
    if isinstance(database, Path):
        with sqlite3.connect(database, timeout=10) as conn:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    import asyncpg

    parts = sql.split("?")
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(
            database.replace("postgresql+asyncpg://", "postgresql://", 1),
            server_settings={"search_path": "dvmirror"},
        )
        try:
            return [tuple(r) for r in await conn.fetch(numbered, *params)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def source_rows(sim: Mapping[str, Any], env: str, table: str) -> list[dict[str, Any]]:
    """The simulator's dump of one table, decimals exact."""
    url = f"{sim['admin_url']}/environments/{env}/tables/{table}/rows"
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return [json.loads(line, parse_float=Decimal) for line in body.splitlines() if line.strip()]


def _postgres_rows(url: str, env: str, table: str) -> list[dict[str, Any]] | None:
    import asyncpg

    async def fetch() -> list[dict[str, Any]] | None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            # A wide table keeps some columns in `_dv_overflow`: read it as data teams do,
            # through the view that unpacks them (store.dialects.pg_wide).
            wide = await conn.fetchval("SELECT to_regclass($1)", f'"{env}"."{table}__wide"')
            name = f"{table}__wide" if wide else table
            rows = await conn.fetch(f'SELECT * FROM "{env}"."{name}"')
        except asyncpg.UndefinedTableError:
            return None
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    return asyncio.run(fetch())


def mirror_rows(database: Path | str, env: str, table: str) -> dict[str, dict[str, Any]] | None:
    """The mirror table's rows by primary key; None while the table does not exist yet."""
    if isinstance(database, str) and database.startswith("postgresql"):
        found = _postgres_rows(database, env, table)
        if found is None:
            return None
        return {str(r[primary_of(table)]): r for r in found}
    with sqlite3.connect(database, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(f'SELECT * FROM "{env}__{table}"').fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return {r[primary_of(table)]: dict(r) for r in rows}


def same(mirrored: Any, source: Any, *, postgres: bool = False) -> bool:
    """One mirrored value equals its source value (SQLite keeps decimals as exact text;
    PostgreSQL has native numeric, timestamptz, date, uuid, boolean and integer[], and its text
    cannot hold NUL, which a PostgreSQL mirror drops by design)."""
    if source is None or mirrored is None:
        return source is mirrored
    if postgres and isinstance(source, str) and isinstance(mirrored, str):
        return mirrored == source.replace("\x00", "")
    if isinstance(mirrored, datetime):
        return isinstance(source, str) and mirrored == datetime.fromisoformat(source)
    if isinstance(mirrored, date):
        return isinstance(source, str) and mirrored == date.fromisoformat(source)
    if isinstance(mirrored, UUID):
        return isinstance(source, str) and mirrored == UUID(source)
    if isinstance(mirrored, list):
        return source == ",".join(map(str, mirrored))
    if isinstance(source, bool):
        return bool(mirrored == int(source))
    if isinstance(source, Decimal) or (isinstance(source, int) and isinstance(mirrored, str)):
        return Decimal(str(mirrored)) == Decimal(source)
    if isinstance(source, float):
        return float(mirrored) == source
    return bool(mirrored == source)


def differences(
    sim: Mapping[str, Any], database: Path | str, env: str, table: str, *, limit: int = 5
) -> list[str]:
    """What differs between the mirror and the source (soft-deleted rows left aside)."""
    source = source_rows(sim, env, table)
    mirrored = mirror_rows(database, env, table)
    if mirrored is None:
        return [f"{env}/{table}: no mirror table yet"]
    live = {k: v for k, v in mirrored.items() if v.get("_dv_deleted_at") is None}
    key = primary_of(table)
    wanted = {row[key] for row in source}
    problems = []
    if set(live) != wanted:
        problems.append(
            f"{env}/{table}: {len(wanted - set(live))} rows missing, "
            f"{len(set(live) - wanted)} rows extra"
        )
    for row in source:
        mirror_row = live.get(row[key])
        if mirror_row is None:
            continue
        for column, value in row.items():
            if column not in mirror_row:
                problems.append(f"{env}/{table}: column {column} missing")
            elif not same(mirror_row[column], value, postgres=isinstance(database, str)):
                problems.append(f"{env}/{table} {row[key]} {column}: {mirror_row[column]!r}")
            if len(problems) >= limit:
                return problems
    return problems


def assert_converged(sim: Mapping[str, Any], database: Path | str, env: str, table: str) -> None:
    """The mirror equals the source, column by column."""
    problems = differences(sim, database, env, table)
    assert not problems, problems
