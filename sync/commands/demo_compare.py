"""Compare a mirror with the simulator's own rows, column by column (for `dvmirror demo`).

The simulator's admin API dumps a table as JSON lines (decimals exact); every column of every
source row must be in the mirror with the same value: decimals compared exactly (the mirror keeps
them as decimal text), booleans as 0/1, lookups and dates as the text the Web API sent.
Soft-deleted mirror rows are left aside; rows missing or extra are differences too.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

import aiohttp
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.dialects import dialect_for
from sync.store.layout import DELETED_COLUMN


@dataclass
class Comparison:
    """What one table's comparison found."""

    rows: int = 0
    values: int = 0
    problems: list[str] = field(default_factory=list)


def as_sent(mirrored: Any) -> Any:
    """PostgreSQL's native moments, dates, GUIDs and choice arrays as the Web API sends them."""
    if isinstance(mirrored, dt.datetime):
        return mirrored.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(mirrored, dt.date):
        return mirrored.isoformat()
    if isinstance(mirrored, UUID):
        return str(mirrored)
    if isinstance(mirrored, list):
        return ",".join(map(str, mirrored))
    return mirrored


def same(mirrored: Any, source: Any) -> bool:
    """One mirrored value equals its source value."""
    if source is None or mirrored is None:
        return source is mirrored
    mirrored = as_sent(mirrored)
    if isinstance(source, bool):
        return bool(mirrored == int(source))
    if isinstance(source, Decimal | int):
        # Doubles too: the dump's text, read exactly, against the shortest repr of the stored
        # float (the text the Web API sent, when the float kept it).
        try:
            return Decimal(str(mirrored)) == Decimal(source)
        except InvalidOperation:
            return False
    if isinstance(source, float):
        return isinstance(mirrored, int | float) and float(mirrored) == source
    return bool(mirrored == source)


async def source_rows(admin_url: str, env: str, table: str) -> list[dict[str, Any]]:
    """The simulator's dump of one table, decimals exact."""
    async with (
        aiohttp.ClientSession(base_url=admin_url) as session,
        session.get(f"/environments/{env}/tables/{table}/rows") as response,
    ):
        response.raise_for_status()
        body = await response.read()
    return [json.loads(line, parse_float=Decimal) for line in body.splitlines() if line.strip()]


async def mirror_rows(engine: AsyncEngine, env: str, table: str) -> list[dict[str, Any]] | None:
    """The mirror table's live rows; None while it does not exist yet."""
    name = dialect_for(engine).table_ref(env, table)
    async with engine.connect() as conn:
        try:
            result = await conn.execute(text(f"SELECT * FROM {name}"))  # noqa: S608
        except (OperationalError, ProgrammingError):  # no such table yet
            return None
        rows = [dict(row._mapping) for row in result]
    return [r for r in rows if r.get(DELETED_COLUMN) is None]


async def compare_table(
    engine: AsyncEngine, admin_url: str, env: str, table: str, *, key: str, limit: int = 5
) -> Comparison:
    """Every source row and column against the mirror; at most `limit` problems listed."""
    found = Comparison()
    source = await source_rows(admin_url, env, table)
    mirrored = await mirror_rows(engine, env, table)
    if mirrored is None:
        found.problems.append(f"{env}/{table}: no mirror table yet")
        return found
    by_key = {as_sent(row[key]): row for row in mirrored}  # PostgreSQL's keys are UUIDs
    found.rows = len(source)
    extra = len(set(by_key) - {row[key] for row in source})
    if extra:
        found.problems.append(f"{env}/{table}: {extra} rows in the mirror but not in the source")
    for row in source:
        mirror_row = by_key.get(row[key])
        if mirror_row is None:
            found.problems.append(f"{env}/{table}: row {row[key]} missing")
        else:
            for column, value in row.items():
                found.values += 1
                if column not in mirror_row:
                    found.problems.append(f"{env}/{table}: column {column} missing")
                elif not same(mirror_row[column], value):
                    found.problems.append(f"{env}/{table} {row[key]} {column} differs")
        if len(found.problems) >= limit:
            break
    return found
