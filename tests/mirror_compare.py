"""Compare a mirror (a real SQLite file) with the simulator's own rows, column by column.

`differences()` returns what differs (empty when the mirror equals the source), so a test can
poll it while a daemon catches up; `assert_converged()` is the one-shot assertion.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

PRIMARY = {
    "account": "accountid",
    "contact": "contactid",
    "new_project": "new_projectid",
    "opportunity": "opportunityid",
}


def database_path(store_url: str) -> Path:
    """The SQLite file of a `sqlite+aiosqlite:///…` store URL."""
    return Path(store_url.split("///", 1)[1])


def source_rows(sim: Mapping[str, Any], env: str, table: str) -> list[dict[str, Any]]:
    """The simulator's dump of one table, decimals exact."""
    url = f"{sim['admin_url']}/environments/{env}/tables/{table}/rows"
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return [json.loads(line, parse_float=Decimal) for line in body.splitlines() if line.strip()]


def mirror_rows(database: Path, env: str, table: str) -> dict[str, dict[str, Any]] | None:
    """The mirror table's rows by primary key; None while the table does not exist yet."""
    with sqlite3.connect(database, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        try:
            rows = conn.execute(f'SELECT * FROM "{env}__{table}"').fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return {r[PRIMARY[table]]: dict(r) for r in rows}


def same(mirrored: Any, source: Any) -> bool:
    """One mirrored value equals its source value (SQLite keeps decimals as exact text)."""
    if source is None or mirrored is None:
        return source is mirrored
    if isinstance(source, bool):
        return bool(mirrored == int(source))
    if isinstance(source, Decimal) or (isinstance(source, int) and isinstance(mirrored, str)):
        return Decimal(str(mirrored)) == Decimal(source)
    if isinstance(source, float):
        return float(mirrored) == source
    return bool(mirrored == source)


def differences(
    sim: Mapping[str, Any], database: Path, env: str, table: str, *, limit: int = 5
) -> list[str]:
    """What differs between the mirror and the source (soft-deleted rows left aside)."""
    source = source_rows(sim, env, table)
    mirrored = mirror_rows(database, env, table)
    if mirrored is None:
        return [f"{env}/{table}: no mirror table yet"]
    live = {k: v for k, v in mirrored.items() if v.get("_dv_deleted_at") is None}
    key = PRIMARY[table]
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
            elif not same(mirror_row[column], value):
                problems.append(f"{env}/{table} {row[key]} {column}: {mirror_row[column]!r}")
            if len(problems) >= limit:
                return problems
    return problems


def assert_converged(sim: Mapping[str, Any], database: Path, env: str, table: str) -> None:
    """The mirror equals the source, column by column."""
    problems = differences(sim, database, env, table)
    assert not problems, problems
