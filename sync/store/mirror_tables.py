"""Typed mirror tables: create them, follow schema drift, keep the column catalogue.

Drift rules (decided by the pure `plan_drift()`, applied by `ensure_mirror()` in one transaction):

* a column added at the source → `ALTER TABLE … ADD COLUMN`; no resync (the cursor widens its
  `$select`; see cursor.with_select for change-tracked tables).
* a column removed at the source → kept with its old values; rows written from then on get NULL
  there (the source no longer has a value); `dv_mirror_columns.removed_at` is set. If it comes
  back with the same type it is revived.
* a column whose type changed → the old column is renamed `<col>__old_<oldtype>` (old values
  kept and never written again) and a new `<col>` of the new type is added; `type_changed_at` is
  set on both and the change is reported (log + a status note). Nothing is lost or converted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.logs import get_logger
from sync.store.control import mirror_columns
from sync.store.layout import MirrorColumn, SqlType, TableSchema
from sync.store.writer import (
    TableStatements,
    add_column_sql,
    create_table_sql,
    execute_ddl,
    existing_columns,
    map_store_errors,
    mirror_table_name,
    rename_column_sql,
)

log = get_logger(__name__)


@dataclass(frozen=True)
class CatalogueEntry:
    """A row of dv_mirror_columns."""

    column: str
    attribute_type: str
    sql_type: str
    removed: bool
    archive: bool = False  # `<col>__old_<type>` kept after a type change: never written again


@dataclass(frozen=True)
class TypeChange:
    column: MirrorColumn
    old_type: str
    kept_as: str


@dataclass(frozen=True)
class DriftPlan:
    """What to change so that the mirror table fits the current schema."""

    create: bool = False
    added: tuple[MirrorColumn, ...] = ()
    removed: tuple[str, ...] = ()
    revived: tuple[MirrorColumn, ...] = ()
    retyped: tuple[TypeChange, ...] = ()
    still_removed: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return bool(self.create or self.added or self.removed or self.revived or self.retyped)


def _kept_name(column: str, old_type: str, taken: set[str]) -> str:
    name = f"{column}__old_{old_type}"
    suffix = 2
    while name in taken:
        name = f"{column}__old_{old_type}_{suffix}"
        suffix += 1
    return name


def plan_drift(
    catalogue: Mapping[str, CatalogueEntry], columns: Sequence[MirrorColumn], *, table_exists: bool
) -> DriftPlan:
    """Compare the catalogue with the wanted columns. Pure."""
    if not table_exists:
        return DriftPlan(create=True, added=tuple(columns))
    wanted = {c.name: c for c in columns}
    taken = set(catalogue) | set(wanted)
    added: list[MirrorColumn] = []
    revived: list[MirrorColumn] = []
    retyped: list[TypeChange] = []
    for column in columns:
        entry = catalogue.get(column.name)
        if entry is None:
            added.append(column)
        elif entry.sql_type != column.sql_type:
            kept = _kept_name(column.name, entry.sql_type, taken)
            taken.add(kept)
            retyped.append(TypeChange(column, entry.sql_type, kept))
        elif entry.removed:
            revived.append(column)
    removed = tuple(sorted(n for n, e in catalogue.items() if n not in wanted and not e.removed))
    still = tuple(sorted(n for n, e in catalogue.items() if n not in wanted and not e.archive))
    return DriftPlan(False, tuple(added), removed, tuple(revived), tuple(retyped), still)


@dataclass(frozen=True)
class MirrorLayout:
    """The mirror table as the writer sees it: statements plus what drift did."""

    name: str
    statements: TableStatements
    drift: DriftPlan


async def _catalogue(
    engine: AsyncEngine, environment: str, table: str
) -> dict[str, CatalogueEntry]:
    query = select(mirror_columns).where(
        and_(mirror_columns.c.environment == environment, mirror_columns.c.table_name == table)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        r.column_name: CatalogueEntry(
            r.column_name,
            r.attribute_type,
            r.sql_type,
            r.removed_at is not None,
            archive=r.removed_at is not None and r.type_changed_at is not None,
        )
        for r in rows
    }


def _catalogue_row(
    environment: str, table: str, column: MirrorColumn, now: datetime
) -> dict[str, Any]:
    return {
        "environment": environment,
        "table_name": table,
        "column_name": column.name,
        "attribute_type": column.attribute_type,
        "sql_type": column.sql_type,
        "added_at": now,
    }


def _ddl(environment: str, schema: TableSchema, plan: DriftPlan, now: datetime) -> list[Any]:
    table, name = schema.table, mirror_table_name(environment, schema.table)
    where = and_(mirror_columns.c.environment == environment, mirror_columns.c.table_name == table)
    steps: list[Any] = []
    if plan.create:
        layout: list[tuple[str, SqlType]] = [(c.name, c.sql_type) for c in schema.columns]
        steps.append(create_table_sql(name, schema.primary_key, layout))
        steps.append(delete(mirror_columns).where(where))
        steps.append(
            insert(mirror_columns).values(
                [_catalogue_row(environment, table, c, now) for c in schema.columns]
            )
        )
        return steps
    for column in plan.added:
        steps.append(add_column_sql(name, column.name, column.sql_type))
        steps.append(insert(mirror_columns).values(_catalogue_row(environment, table, column, now)))
    for gone in plan.removed:
        steps.append(
            update(mirror_columns)
            .where(where, mirror_columns.c.column_name == gone)
            .values(removed_at=now)
        )
    for column in plan.revived:
        steps.append(
            update(mirror_columns)
            .where(where, mirror_columns.c.column_name == column.name)
            .values(removed_at=None, attribute_type=column.attribute_type)
        )
    for change in plan.retyped:
        column = change.column
        steps.append(rename_column_sql(name, column.name, change.kept_as))
        steps.append(add_column_sql(name, column.name, column.sql_type))
        steps.append(
            update(mirror_columns)
            .where(where, mirror_columns.c.column_name == column.name)
            .values(column_name=change.kept_as, removed_at=now, type_changed_at=now)
        )
        row = _catalogue_row(environment, table, column, now) | {"type_changed_at": now}
        steps.append(insert(mirror_columns).values(row))
    return steps


async def ensure_mirror(
    engine: AsyncEngine, environment: str, schema: TableSchema, *, soft: bool, now: datetime
) -> MirrorLayout:
    """Create or adapt the mirror table of `schema`; return how to write it."""
    name = mirror_table_name(environment, schema.table)
    with map_store_errors(schema.table):
        async with engine.connect() as conn:
            existing = await existing_columns(conn, name)
    catalogue = await _catalogue(engine, environment, schema.table)
    plan = plan_drift(catalogue, schema.columns, table_exists=existing is not None)
    if plan.changed:
        await execute_ddl(engine, _ddl(environment, schema, plan, now), table=schema.table)
        for change in plan.retyped:
            log.warning(
                "schema_type_changed",
                environment=environment,
                table=schema.table,
                column=change.column.name,
                old_type=change.old_type,
                new_type=change.column.sql_type,
                kept_as=change.kept_as,
            )
        if plan.create:
            log.info("mirror_created", environment=environment, table=schema.table, name=name)
        elif plan.added or plan.removed or plan.revived:
            log.info(
                "schema_drift",
                environment=environment,
                table=schema.table,
                added=[c.name for c in plan.added],
                removed=list(plan.removed),
                revived=[c.name for c in plan.revived],
            )
    statements = TableStatements.build(
        environment,
        schema.table,
        schema.primary_key,
        [c.name for c in schema.columns],
        plan.still_removed,
        soft=soft,
    )
    return MirrorLayout(name, statements, plan)


def type_change_note(plan: DriftPlan) -> str | None:
    """The status note that reports type changes (None when there are none)."""
    if not plan.retyped:
        return None
    parts = [
        f"{t.column.name} {t.old_type}→{t.column.sql_type} (old values kept in {t.kept_as})"
        for t in plan.retyped
    ]
    return "schema drift: column type changed: " + "; ".join(parts)
