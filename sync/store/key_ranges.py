"""Read and write dv_key_ranges: the per-range checkpoints of a parallel backfill.

A range's checkpoint (its nextLink, or done) is written by `range_checkpoint()` inside the
transaction of the range's page, next to the table's own counters (store.checkpoints), so a
crash resumes every range at its last committed page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.store.control import key_ranges


@dataclass(frozen=True)
class RangeState:
    """One stored range: its bounds (SQL Server key order), where its chain stands."""

    number: int
    lower: str | None
    upper: str | None
    next_link: str | None = None
    done: bool = False
    rows: int = 0
    pages: int = 0


def _table(environment: str, table: str) -> Any:
    return and_(key_ranges.c.environment == environment, key_ranges.c.table_name == table)


async def load(engine: AsyncEngine, environment: str, table: str) -> list[RangeState]:
    query = select(key_ranges).where(_table(environment, table)).order_by(key_ranges.c.range_no)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        RangeState(r.range_no, r.lower_key, r.upper_key, r.next_link, bool(r.done), r.rows, r.pages)
        for r in rows
    ]


async def summary(engine: AsyncEngine) -> dict[tuple[str, str], tuple[int, int]]:
    """(ranges done, ranges) per (environment, table) with a ranged backfill under way."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(key_ranges))).all()
    found: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        done, total = found.get((row.environment, row.table_name), (0, 0))
        found[(row.environment, row.table_name)] = (done + bool(row.done), total + 1)
    return found


async def forget(engine: AsyncEngine, environment: str, table: str) -> None:
    """Drop ranges left by a pass that no longer stands (its mirror table was dropped)."""
    async with engine.begin() as conn:
        await conn.execute(clear(environment, table))


def create(
    environment: str, table: str, ranges: list[RangeState], *, now: datetime
) -> list[Executable]:
    """Statements that replace the table's ranges with `ranges`."""
    statements: list[Executable] = [delete(key_ranges).where(_table(environment, table))]
    statements += [
        insert(key_ranges).values(
            environment=environment,
            table_name=table,
            range_no=r.number,
            lower_key=r.lower,
            upper_key=r.upper,
            next_link=r.next_link,
            done=r.done,
            updated_at=now,
        )
        for r in ranges
    ]
    return statements


def range_checkpoint(
    environment: str,
    table: str,
    number: int,
    *,
    next_link: str | None,
    rows: int,
    now: datetime,
) -> Executable:
    """A range's page committed: its next link (None: the range is done)."""
    return (
        update(key_ranges)
        .where(_table(environment, table), key_ranges.c.range_no == number)
        .values(
            next_link=next_link,
            done=next_link is None,
            rows=key_ranges.c.rows + rows,
            pages=key_ranges.c.pages + 1,
            updated_at=now,
        )
    )


def clear(environment: str, table: str) -> Executable:
    """The ranged pass is over (its last commit) or abandoned (a resync starts afresh)."""
    return delete(key_ranges).where(_table(environment, table))
