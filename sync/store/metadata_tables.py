"""The Synapse-style metadata tables of an environment, and the label fixes that go with them.

Named like the mirror tables: `<environment>__optionsetmetadata` on SQLite, schema
`<environment>`, table `optionsetmetadata` on PostgreSQL; columns are Synapse Link's names in
lower case (sync.mirror.option_metadata builds the rows). The rows of one Dataverse table in one
metadata table are rewritten together — delete, insert, their new hash in `dv_metadata_hashes` —
and only when that hash changed; other tables' rows stay (a table no longer mirrored keeps them,
as it keeps its mirror). Everything that changed in one refresh, and the `<col>__label` fixes of
the mirror tables, commit in one transaction, so a reader never sees half a refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.store.control import metadata_hashes
from sync.store.dialects import dialect_for
from sync.store.history_labels import fix_history_labels
from sync.store.identifiers import quote_ident
from sync.store.writer import database_of, map_store_errors, patiently

Row = tuple[Any, ...]

# Per metadata table: its columns (name, type) and primary key, Synapse's names in lower case.
SHAPES: dict[str, tuple[tuple[tuple[str, Any], ...], tuple[str, ...]]] = {
    "optionsetmetadata": (
        (
            ("entityname", Text),
            ("optionsetname", Text),
            ("option", Integer),
            ("isuserlocalizedlabel", Integer),
            ("localizedlabellanguagecode", Integer),
            ("localizedlabel", Text),
        ),
        ("entityname", "optionsetname", "option", "localizedlabellanguagecode"),
    ),
    "globaloptionsetmetadata": (
        (
            ("entityname", Text),
            ("optionsetname", Text),
            ("globaloptionsetname", Text),
            ("option", Integer),
            ("isuserlocalizedlabel", Integer),
            ("localizedlabellanguagecode", Integer),
            ("localizedlabel", Text),
        ),
        ("entityname", "optionsetname", "option", "localizedlabellanguagecode"),
    ),
    "statemetadata": (
        (
            ("entityname", Text),
            ("state", Integer),
            ("isuserlocalizedlabel", Integer),
            ("localizedlabellanguagecode", Integer),
            ("localizedlabel", Text),
        ),
        ("entityname", "state", "localizedlabellanguagecode"),
    ),
    "statusmetadata": (
        (
            ("entityname", Text),
            ("state", Integer),
            ("status", Integer),
            ("isuserlocalizedlabel", Integer),
            ("localizedlabellanguagecode", Integer),
            ("localizedlabel", Text),
        ),
        ("entityname", "status", "localizedlabellanguagecode"),
    ),
    "targetmetadata": (
        (
            ("entityname", Text),
            ("attributename", Text),
            ("referencedentity", Text),
            ("referencedattribute", Text),
        ),
        ("entityname", "attributename", "referencedentity"),
    ),
    "attributemetadata": (
        (
            ("entityname", Text),
            ("attributename", Text),
            ("attributetype", Text),
            ("attributetypecode", Integer),
            ("displayname", Text),
            ("description", Text),
            ("precision", Integer),
            ("maxlength", Integer),
        ),
        ("entityname", "attributename"),
    ),
}
NAMES = tuple(SHAPES)


@lru_cache(maxsize=64)
def tables_for(dialect: str, environment: str) -> dict[str, Table]:
    """SQLAlchemy tables of one environment's metadata tables, named as the mirror tables are."""
    quote_ident(environment)  # refuse an unsafe environment name before it names anything
    meta = MetaData()
    out: dict[str, Table] = {}
    for name, (columns, key) in SHAPES.items():
        table_name, schema = (
            (name, environment)
            if dialect == "postgresql"
            else (
                f"{environment}__{name}",
                None,
            )
        )
        out[name] = Table(
            table_name,
            meta,
            *(Column(c, t) for c, t in columns),
            PrimaryKeyConstraint(*key, name=f"pk_{table_name}"),
            schema=schema,
        )
    return out


@dataclass(frozen=True)
class LabelFix:
    """New labels for one mirror table's `<column>__label`: by option value (a choice column),
    or computed from each stored value (a multi-select column, `1,3` → `A; C`)."""

    table: str
    column: str
    labels: Mapping[int, str]
    recompute: Callable[[str], str | None] | None = None


Part = tuple[str, str]  # (metadata table, entityname)


async def stored_hashes(engine: AsyncEngine, environment: str) -> dict[Part, str]:
    query = select(
        metadata_hashes.c.metadata_table,
        metadata_hashes.c.entityname,
        metadata_hashes.c.source_hash,
    ).where(metadata_hashes.c.environment == environment)
    with map_store_errors("metadata", dialect_for(engine), environment=environment):
        async with engine.connect() as conn:
            return {
                (r.metadata_table, r.entityname): r.source_hash for r in await conn.execute(query)
            }


async def read_rows(
    engine: AsyncEngine, environment: str, name: str, entities: Sequence[str] | None = None
) -> list[Row]:
    """The rows a metadata table holds now, of `entities` or all ([] before it exists)."""
    dialect = dialect_for(engine)
    table = tables_for(dialect.name, environment)[name]
    query = select(table)
    if entities is not None:
        query = query.where(table.c.entityname.in_(list(entities)))
    with map_store_errors("metadata", dialect, environment=environment):
        async with engine.connect() as conn:
            exists = await conn.run_sync(
                lambda sync: sync.dialect.has_table(sync, table.name, schema=table.schema)
            )
            if not exists:
                return []
            return [tuple(r) for r in await conn.execute(query)]


async def _create(conn: AsyncConnection, dialect: str, environment: str) -> None:
    tables = tables_for(dialect, environment)
    if dialect == "postgresql":
        # CREATE SCHEMA IF NOT EXISTS can still collide: one at a time per environment.
        await conn.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock(hashtext('dvmirror schema ' || '{environment}'))"
        )
        await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(environment)}")
    meta = next(iter(tables.values())).metadata
    await conn.run_sync(lambda sync: meta.create_all(sync, checkfirst=True))


def _stored_value(value: Any) -> str:
    """A multi-select value as the Web API writes it (`1,3`), from SQLite's text or
    PostgreSQL's integer[]."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


async def _fix_labels(conn: AsyncConnection, environment: str, fixes: Sequence[LabelFix]) -> int:
    """`UPDATE <table> SET <col>__label = :new WHERE <col> = :value`; mirrors not made yet are
    skipped (their rows will come with the new labels). The number of rows changed."""
    dialect = dialect_for(conn)
    changed = 0
    for fix in fixes:
        present = await dialect.existing_columns(conn, environment, fix.table) or []
        label = f"{fix.column}__label"
        if fix.column not in present or label not in present:
            continue
        target = dialect.table_ref(environment, fix.table)
        column, label_column = quote_ident(fix.column), quote_ident(label)
        statement = text(
            f"UPDATE {target} SET {label_column} = :label "  # noqa: S608 - quoted identifiers
            f"WHERE {column} = :value "
            f"AND ({label_column} IS NULL OR {label_column} <> :label)"
        )
        if fix.recompute is None:
            for value, new in sorted(fix.labels.items()):
                result = await conn.execute(statement, {"label": new, "value": value})
                changed += max(result.rowcount or 0, 0)
            continue
        distinct = text(
            f"SELECT DISTINCT {column} FROM {target} WHERE {column} IS NOT NULL"  # noqa: S608
        )
        for (stored,) in (await conn.execute(distinct)).all():
            new_label = fix.recompute(_stored_value(stored))
            if new_label is not None:
                result = await conn.execute(statement, {"label": new_label, "value": stored})
                changed += max(result.rowcount or 0, 0)
    return changed


async def rewrite(
    engine: AsyncEngine,
    environment: str,
    changed: Mapping[Part, tuple[Sequence[Row], str]],
    fixes: Sequence[LabelFix],
    *,
    now: datetime,
) -> int:
    """Rewrite the `changed` parts ((metadata table, entityname) → rows and their hash) and fix
    the mirror's labels, in one transaction; the number of mirror rows whose label changed."""
    dialect = dialect_for(engine)
    tables = tables_for(dialect.name, environment)

    async def attempt() -> int:
        async with engine.begin() as conn:
            await _create(conn, dialect.name, environment)
            for (name, entity), (rows, digest) in sorted(changed.items()):
                table = tables[name]
                await conn.execute(delete(table).where(table.c.entityname == entity))
                if rows:
                    keys = [c.name for c in table.columns]
                    values = [dict(zip(keys, r, strict=True)) for r in rows]
                    await conn.execute(insert(table), values)
                await conn.execute(
                    delete(metadata_hashes).where(
                        metadata_hashes.c.environment == environment,
                        metadata_hashes.c.metadata_table == name,
                        metadata_hashes.c.entityname == entity,
                    )
                )
                await conn.execute(
                    insert(metadata_hashes).values(
                        environment=environment,
                        metadata_table=name,
                        entityname=entity,
                        source_hash=digest,
                        row_count=len(rows),
                        refreshed_at=now,
                    )
                )
            fixed = await _fix_labels(conn, environment, fixes)
            await fix_history_labels(conn, environment, fixes)  # their open versions too
            return fixed

    with map_store_errors(
        "metadata", dialect, database=database_of(engine), environment=environment
    ):
        return await patiently(attempt, environment=environment, table="metadata")
