"""The commit-ordered change feed: dv_commits and the `_dv_commit_seq` numbers.

Each page transaction that really changes a mirror takes the next number of its environment
(`take_number`, inside the transaction) and records it (`record_commit`); the rows it changed and
the `_dv_deletions` rows it logged carry that number as `_dv_commit_seq`. A downstream load reads
`M = max(seq)` first, then the mirror rows and `_dv_deletions` rows with `:last < _dv_commit_seq
<= M`: nothing committed later can carry a number at or below M.

What "really changes" means (decided in SQL by each dialect's upsert): a row that is inserted, or
whose stored values differ in anything but `_dv_synced_at` (its columns, `_dv_version`,
`_dv_deleted_at`, a removed column written NULL); a deletion that removes or soft-deletes a live
row. Rows re-sent identical (a full pass over unchanged rows, a replayed delta page) and touches
keep their old number, and a transaction without a real change records nothing: its number is
given to the next one, so the numbers of an environment have no gaps.

Commit order: on PostgreSQL, concurrent transactions of one environment (the key ranges of a
backfill, a resync beside the delta) first take a transaction-scoped advisory lock of the
environment, so the number is read and the transaction committed before the next one can read
it (READ COMMITTED, the engine's default). SQLite has one writer per file anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.store.control import commits


def lock_statement(environment: str) -> tuple[str, tuple[str]]:
    """PostgreSQL: the environment's feed lock, held until the transaction ends."""
    return "SELECT pg_advisory_xact_lock(hashtext('dvmirror commits ' || $1::text))", (environment,)


async def take_number(conn: AsyncConnection, environment: str) -> int:
    """The number the current transaction's changes carry (given for good by `record_commit`)."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(*lock_statement(environment))
    query = select(func.coalesce(func.max(commits.c.seq), 0)).where(
        commits.c.environment == environment
    )
    return int((await conn.execute(query)).scalar_one()) + 1


async def record_commit(
    conn: AsyncConnection,
    *,
    environment: str,
    seq: int,
    table: str,
    committed_at: datetime,
    upserts: int,
    deletes: int,
) -> None:
    await conn.execute(
        insert(commits).values(
            environment=environment,
            seq=seq,
            table_name=table,
            committed_at=committed_at,
            upserts=upserts,
            deletes=deletes,
        )
    )


@dataclass(frozen=True)
class Commit:
    seq: int
    table: str
    committed_at: datetime
    upserts: int
    deletes: int


async def commits_since(
    engine: AsyncEngine, environment: str, since: int, until: int | None = None
) -> tuple[list[Commit], int]:
    """The environment's commits with `since < seq <= until` (until: the current maximum), and
    that maximum; read in one transaction."""
    where = and_(commits.c.environment == environment, commits.c.seq > since)
    async with engine.connect() as conn:
        top = select(func.coalesce(func.max(commits.c.seq), 0)).where(
            commits.c.environment == environment
        )
        newest = int((await conn.execute(top)).scalar_one())
        upper = newest if until is None else min(until, newest)
        rows = await conn.execute(
            select(commits).where(where, commits.c.seq <= upper).order_by(commits.c.seq)
        )
        found = [
            Commit(r.seq, r.table_name, r.committed_at, int(r.upserts), int(r.deletes))
            for r in rows
        ]
    return found, upper


def newest_query() -> Select[tuple[str, int]]:
    """Per environment, the highest commit number (for `status`)."""
    return select(commits.c.environment, func.max(commits.c.seq).label("commit_seq")).group_by(
        commits.c.environment
    )


def as_rows(found: Sequence[Commit]) -> list[dict[str, object]]:
    return [
        {
            "seq": c.seq,
            "table": c.table,
            "committed_at": c.committed_at,
            "upserts": c.upserts,
            "deletes": c.deletes,
        }
        for c in found
    ]
