"""The rows of the change feed's closed interval `since < _dv_commit_seq <= until`, per table:
the mirror rows that carry a number in it and the `_dv_deletions` rows logged in it.

A row changed again after `until` carries its newer number and comes with the next interval;
a row deleted after `until` is gone from the mirror and its deletion comes with the next one. So
a reader that applies intervals one after another, in number order, ends with the mirror.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import and_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from sync.store.control import commits, deletions
from sync.store.dialects import dialect_for
from sync.store.identifiers import quote_ident
from sync.store.layout import COMMIT_SEQ_COLUMN


async def tables_in(conn: AsyncConnection, environment: str, since: int, until: int) -> list[str]:
    """The tables with a commit in the interval, by name."""
    query = (
        select(commits.c.table_name)
        .where(
            and_(
                commits.c.environment == environment,
                commits.c.seq > since,
                commits.c.seq <= until,
            )
        )
        .distinct()
        .order_by(commits.c.table_name)
    )
    return [str(name) for name in (await conn.execute(query)).scalars()]


async def deleted_in(
    conn: AsyncConnection, environment: str, table: str, since: int, until: int
) -> list[tuple[int, str]]:
    """(number, id) of the table's deletions in the interval, in number order."""
    seq = deletions.c._dv_commit_seq
    query = (
        select(seq, deletions.c.id)
        .where(
            and_(
                deletions.c.environment == environment,
                deletions.c.table == table,
                seq > since,
                seq <= until,
            )
        )
        .order_by(seq, deletions.c.seq)
    )
    return [(int(s), str(i)) for s, i in await conn.execute(query)]


async def rows_in(
    conn: AsyncConnection, environment: str, table: str, since: int, until: int
) -> AsyncIterator[dict[str, Any]]:
    """The table's mirror rows numbered in the interval (every column), in number order,
    streamed."""
    ref = dialect_for(conn).table_ref(environment, table)
    seq = quote_ident(COMMIT_SEQ_COLUMN)
    sql = f"SELECT * FROM {ref} WHERE {seq} > :since AND {seq} <= :until ORDER BY {seq}"  # noqa: S608
    result = await conn.stream(text(sql), {"since": since, "until": until})
    async for row in result.mappings():
        yield dict(row)
