"""The `relationshipmetadata` table: one row per mirrored N:N, so that joins are mechanical.

Named like a mirror table (`<env>__relationshipmetadata` on SQLite, `<env>.relationshipmetadata`
on PostgreSQL); created once the environment mirrors an N:N. Its rows are rewritten in one
transaction when the set of mirrored N:N changes; an unchanged set writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.store.dialects import dialect_for
from sync.store.identifiers import quote_ident
from sync.store.writer import database_of, map_store_errors, patiently

TABLE = "relationshipmetadata"
COLUMNS = (
    "schema_name",
    "intersect_table",
    "entity1",
    "entity1_attribute",
    "entity2",
    "entity2_attribute",
)
Row = tuple[str, str, str, str, str, str]


def _ddl(postgres: bool, environment: str, ref: str) -> list[str]:
    columns = ", ".join(
        f"{quote_ident(c)} text NOT NULL" + (" PRIMARY KEY" if c == "schema_name" else "")
        for c in COLUMNS
    )
    if not postgres:
        return [f"CREATE TABLE IF NOT EXISTS {ref} ({columns}) STRICT"]
    return [
        # One at a time per environment, like the mirror tables' CREATE SCHEMA.
        f"SELECT pg_advisory_xact_lock(hashtext('dvmirror schema ' || '{environment}'))",
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(environment)}",
        f"CREATE TABLE IF NOT EXISTS {ref} ({columns})",
    ]


async def _stored(conn: AsyncConnection, ref: str) -> list[Row]:
    names = ", ".join(quote_ident(c) for c in COLUMNS)
    # Identifiers only, each quoted (store.identifiers); values are bound.
    result = await conn.execute(text(f"SELECT {names} FROM {ref} ORDER BY schema_name"))  # noqa: S608
    return [tuple(str(v) for v in row) for row in result]  # type: ignore[misc]


async def write_relationship_metadata(
    engine: AsyncEngine, environment: str, rows: Sequence[Row]
) -> bool:
    """Create the table if needed and make its rows `rows`; True when they changed. An
    environment without any N:N gets no table (one that had some keeps it, emptied)."""
    dialect = dialect_for(engine)
    ref = dialect.table_ref(environment, TABLE)
    wanted = sorted(rows)
    placeholders = ", ".join(f":{c}" for c in COLUMNS)
    names = ", ".join(quote_ident(c) for c in COLUMNS)
    insert = text(f"INSERT INTO {ref} ({names}) VALUES ({placeholders})")  # noqa: S608

    async def attempt() -> bool:
        async with engine.begin() as conn:
            if not wanted and await dialect.existing_columns(conn, environment, TABLE) is None:
                return False  # no N:N, and never any: no table either
            for statement in _ddl(dialect.name == "postgresql", environment, ref):
                await conn.exec_driver_sql(statement)
            if await _stored(conn, ref) == wanted:
                return False
            await conn.execute(text(f"DELETE FROM {ref}"))  # noqa: S608
            if wanted:
                await conn.execute(insert, [dict(zip(COLUMNS, row, strict=True)) for row in wanted])
            return True

    with map_store_errors(TABLE, dialect, database=database_of(engine), environment=environment):
        return await patiently(attempt, environment=environment, table=TABLE)


async def intersect_tables(engine: AsyncEngine, environment: str) -> tuple[str, ...]:
    """The intersect tables the environment mirrors now, from its `relationshipmetadata`
    (none before the table exists): a configured list of tables does not name them, yet
    they are mirrored as configured (`relationships`)."""
    dialect = dialect_for(engine)
    with map_store_errors(TABLE, dialect, environment=environment):
        async with engine.connect() as conn:
            if await dialect.existing_columns(conn, environment, TABLE) is None:
                return ()
            rows = await _stored(conn, dialect.table_ref(environment, TABLE))
    return tuple(sorted({row[1] for row in rows}))
