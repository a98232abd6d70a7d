"""The INSERT construct with `on_conflict_do_*` of the connection's dialect.

PostgreSQL's is imported only when the store is PostgreSQL: its dialect package costs a SQLite
store's every command about 20 ms of start-up for nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection


def upsert_insert(conn: AsyncConnection, table: Any) -> Any:
    """`insert(table)` of the connection's dialect (PostgreSQL's or SQLite's)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgres_insert

        return postgres_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
