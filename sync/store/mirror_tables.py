"""Typed mirror tables: create them, follow schema drift, keep the column catalogue.

Drift rules (decided by the pure `plan_drift()`, applied by `ensure_mirror()` in one transaction):

* a column added at the source → `ALTER TABLE … ADD COLUMN`; no resync (the cursor widens its
  `$select`; see cursor.with_select for change-tracked tables).
* a column removed at the source → kept with its old values; rows written from then on get NULL
  there (the source no longer has a value); `dv_mirror_columns.removed_at` is set. If it comes
  back with the same type it is revived.
* a column whose type changed (unless the dialect already stores the new type in the same way:
  `Dialect.same_storage`, then only the catalogue changes) → the old column is renamed
  `<col>__old_<oldtype>` (old values kept and never written again) and a new `<col>` of the new
  type is added; `type_changed_at` is set on both and the change is reported (log + a status
  note). Nothing is lost or converted.
* a column deleted at the source and created again under the same name (a new MetadataId: every
  value starts empty there, and a change-tracked table's delta never says so) → handled like a
  type change: the old values move to `<col>__old_<type>` and a new, empty `<col>` is added, so
  the mirror never shows the old attribute's values as the new one's.
* a mirror made before the change feed (no `_dv_commit_seq`) → the column and its index are
  added; its rows keep NULL there until they change (store.commits).

With `history`, the history table (sync.store.history) follows the same drift in the same
transaction: added columns are added, retyped ones renamed to the same `<col>__old_<type>`. On a
wide PostgreSQL table the history keeps the mirror's overflow placement
(store.dialects.pg_history_wide).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.logs import get_logger
from sync.store.control import mirror_columns
from sync.store.dialects import Dialect, Overflow, TableWriter, WideRequest, dialect_for
from sync.store.history import (
    HistoryPlan,
    HistoryWriter,
    Placement,
    catch_up,
    existing_history_columns,
    history_steps,
    plan_history,
    plan_history_overflow,
)
from sync.store.layout import COMMIT_SEQ_COLUMN, MirrorColumn, SqlType, TableSchema
from sync.store.writer import execute_ddl, map_store_errors

log = get_logger(__name__)


@dataclass(frozen=True)
class CatalogueEntry:
    """A row of dv_mirror_columns."""

    column: str
    attribute_type: str
    sql_type: str
    removed: bool
    archive: bool = False  # `<col>__old_<type>` kept after a type change: never written again
    attribute_id: str = ""  # the attribute's MetadataId when known


@dataclass(frozen=True)
class TypeChange:
    column: MirrorColumn
    old_type: str
    kept_as: str
    recreated: bool = False  # same name and type, a new attribute (a new MetadataId)


@dataclass(frozen=True)
class DriftPlan:
    """What to change so that the mirror table fits the current schema."""

    create: bool = False
    added: tuple[MirrorColumn, ...] = ()
    removed: tuple[str, ...] = ()
    revived: tuple[MirrorColumn, ...] = ()
    retyped: tuple[TypeChange, ...] = ()
    still_removed: tuple[str, ...] = field(default=())
    # Catalogued with an older type name the dialect stores the same way: only the catalogue
    # changes (SQLite's multi-select text → choices).
    restamped: tuple[MirrorColumn, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(
            self.create
            or self.added
            or self.removed
            or self.revived
            or self.retyped
            or self.restamped
        )


def _kept_name(column: str, old_type: str, taken: set[str]) -> str:
    name = f"{column}__old_{old_type}"
    suffix = 2
    while name in taken:
        name = f"{column}__old_{old_type}_{suffix}"
        suffix += 1
    return name


def plan_drift(
    catalogue: Mapping[str, CatalogueEntry],
    columns: Sequence[MirrorColumn],
    *,
    table_exists: bool,
    same_storage: Callable[[str, SqlType], bool] = lambda old, new: False,
) -> DriftPlan:
    """Compare the catalogue with the wanted columns. Pure."""
    if not table_exists:
        return DriftPlan(create=True, added=tuple(columns))
    wanted = {c.name: c for c in columns}
    taken = set(catalogue) | set(wanted)
    added: list[MirrorColumn] = []
    revived: list[MirrorColumn] = []
    retyped: list[TypeChange] = []
    restamped: list[MirrorColumn] = []
    for column in columns:
        entry = catalogue.get(column.name)
        if entry is None:
            added.append(column)
            continue
        new_type = entry.sql_type != column.sql_type
        recreated = bool(entry.attribute_id and column.attribute_id) and (
            entry.attribute_id != column.attribute_id
        )
        if recreated or (new_type and not same_storage(entry.sql_type, column.sql_type)):
            kept = _kept_name(column.name, entry.sql_type, taken)
            taken.add(kept)
            retyped.append(TypeChange(column, entry.sql_type, kept, recreated and not new_type))
        elif new_type:  # stored the same way: only the catalogue changes
            restamped.append(column)
        elif entry.removed:
            revived.append(column)
        elif column.attribute_id and not entry.attribute_id:  # catalogued before ids were kept
            restamped.append(column)
    removed = tuple(sorted(n for n, e in catalogue.items() if n not in wanted and not e.removed))
    still = tuple(sorted(n for n, e in catalogue.items() if n not in wanted and not e.archive))
    return DriftPlan(
        False, tuple(added), removed, tuple(revived), tuple(retyped), still, tuple(restamped)
    )


@dataclass(frozen=True)
class MirrorLayout:
    """The mirror table as the writer sees it: statements plus what drift did."""

    name: str
    writer: TableWriter
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
            attribute_id=r.attribute_id or "",
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
        "attribute_id": column.attribute_id or None,
        "display_name": column.display_name or None,
        "description": column.description or None,
    }


def _ddl(
    dialect: Dialect,
    environment: str,
    schema: TableSchema,
    plan: DriftPlan,
    now: datetime,
    *,
    overflow: Overflow | None = None,
) -> list[Any]:
    """`overflow`: the columns kept out of the table's own (PostgreSQL's wide rows), with the
    DDL of the overflow column and its view (store.dialects.pg_wide)."""
    table = schema.table
    wide = overflow or Overflow()
    where = and_(mirror_columns.c.environment == environment, mirror_columns.c.table_name == table)
    steps: list[Any] = []
    if plan.create:
        layout: list[tuple[str, SqlType]] = [
            (c.name, c.sql_type) for c in schema.columns if c.name not in wide.columns
        ]
        steps += dialect.create_table(environment, table, schema.primary_key, layout)
        steps += wide.before
        steps.append(delete(mirror_columns).where(where))
        steps.append(
            insert(mirror_columns).values(
                [_catalogue_row(environment, table, c, now) for c in schema.columns]
            )
        )
        return [*steps, *wide.after]
    steps += wide.before
    for column in plan.added:
        if column.name not in wide.columns:
            steps.append(dialect.add_column(environment, table, column.name, column.sql_type))
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
            .values(
                removed_at=None,
                attribute_type=column.attribute_type,
                attribute_id=column.attribute_id or None,
            )
        )
    for column in plan.restamped:
        steps.append(
            update(mirror_columns)
            .where(where, mirror_columns.c.column_name == column.name)
            .values(
                sql_type=column.sql_type,
                attribute_type=column.attribute_type,
                **({"attribute_id": column.attribute_id} if column.attribute_id else {}),
            )
        )
    for change in plan.retyped:
        column = change.column
        if column.name not in wide.renamed:  # else its old values moved inside the overflow
            steps.append(dialect.rename_column(environment, table, column.name, change.kept_as))
        if column.name not in wide.columns:
            steps.append(dialect.add_column(environment, table, column.name, column.sql_type))
        steps.append(
            update(mirror_columns)
            .where(where, mirror_columns.c.column_name == column.name)
            .values(column_name=change.kept_as, removed_at=now, type_changed_at=now)
        )
        row = _catalogue_row(environment, table, column, now) | {"type_changed_at": now}
        steps.append(insert(mirror_columns).values(row))
    return [*steps, *wide.after]


async def ensure_mirror(
    engine: AsyncEngine,
    environment: str,
    schema: TableSchema,
    *,
    soft: bool,
    now: datetime,
    history: bool = False,
) -> MirrorLayout:
    """Create or adapt the mirror table of `schema` (and with `history`, its history table, in
    the same DDL transaction: sync.store.history); return how to write it."""
    dialect = dialect_for(engine)
    name = dialect.mirror_name(environment, schema.table)
    layout = [(c.name, c.sql_type) for c in schema.columns]
    with map_store_errors(schema.table, dialect):
        async with engine.connect() as conn:
            existing = await dialect.existing_columns(conn, environment, schema.table)
            history_columns = (
                await existing_history_columns(conn, dialect, environment, schema.table)
                if history
                else None
            )
    catalogue = await _catalogue(engine, environment, schema.table)
    plan = plan_drift(
        catalogue,
        schema.columns,
        table_exists=existing is not None,
        same_storage=dialect.same_storage,
    )
    # A mirror made before the change feed gets its `_dv_commit_seq` (NULL on old rows).
    feedless = existing is not None and COMMIT_SEQ_COLUMN not in existing
    renames = [(t.column.name, t.kept_as) for t in plan.retyped]
    request = _wide_request(environment, schema, plan, catalogue)
    overflow = await _overflow(engine, request)
    history_wide = (
        await plan_history_overflow(engine, request, overflow.columns) if history else Overflow()
    )
    placement = Placement(overflow.columns, history_wide.columns)
    history_layout = [(c, t) for c, t in layout if c not in history_wide.columns]
    history_plan = (
        plan_history(history_columns, history_layout, renames) if history else HistoryPlan()
    )
    # (A table made too wide before overflow existed changes even without drift.)
    if plan.changed or feedless or history_plan.changed or overflow.before or history_wide.before:
        steps = _ddl(dialect, environment, schema, plan, now, overflow=overflow)
        if feedless:
            steps = [*dialect.add_commit_seq(environment, schema.table), *steps]
        steps += history_steps(
            dialect,
            environment,
            schema.table,
            layout,
            history_plan,
            wide=history_wide,
            placement=placement,
        )
        await execute_ddl(engine, steps, table=schema.table, environment=environment)
        for change in plan.retyped:
            log.warning(
                "schema_column_recreated" if change.recreated else "schema_type_changed",
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
    await _refresh_labels(engine, environment, schema)
    writer: TableWriter = dialect.writer(
        environment,
        schema.table,
        layout,
        plan.still_removed,
        soft=soft,
        overflow=overflow.columns,
    )
    if history:
        writer = HistoryWriter.wrap(writer, dialect, layout, placement)
        await catch_up(engine, writer, now=now)
    return MirrorLayout(name, writer, plan)


def _wide_request(
    environment: str,
    schema: TableSchema,
    plan: DriftPlan,
    catalogue: Mapping[str, CatalogueEntry],
) -> WideRequest:
    """The drift of `plan` in the terms of the overflow plans."""
    return WideRequest(
        environment,
        schema.table,
        schema.primary_key,
        [(c.name, c.sql_type) for c in schema.columns],
        {name: entry.sql_type for name, entry in catalogue.items()},
        added=[(c.name, c.sql_type) for c in (*plan.added, *(t.column for t in plan.retyped))],
        retyped=[(t.column.name, t.kept_as) for t in plan.retyped],
        create=plan.create,
    )


async def _overflow(engine: AsyncEngine, request: WideRequest) -> Overflow:
    """Where the dialect keeps the columns its rows have no room for (PostgreSQL's
    `_dv_overflow`; store.dialects.pg_wide), as the table will be after the drift."""
    dialect = dialect_for(engine)
    with map_store_errors(request.table, dialect):
        async with engine.connect() as conn:
            return await dialect.plan_overflow(conn, request)


async def _refresh_labels(engine: AsyncEngine, environment: str, schema: TableSchema) -> None:
    """Keep the catalogue's display names and descriptions as the source has them now (a
    label renamed at the source, or columns catalogued before labels were kept)."""
    where = and_(
        mirror_columns.c.environment == environment, mirror_columns.c.table_name == schema.table
    )
    query = select(
        mirror_columns.c.column_name, mirror_columns.c.display_name, mirror_columns.c.description
    ).where(where, mirror_columns.c.removed_at.is_(None))
    async with engine.connect() as conn:
        stored = {r.column_name: (r.display_name, r.description) for r in await conn.execute(query)}
    steps = [
        update(mirror_columns)
        .where(where, mirror_columns.c.column_name == column.name)
        .values(display_name=column.display_name or None, description=column.description or None)
        for column in schema.columns
        if column.name in stored
        and stored[column.name] != (column.display_name or None, column.description or None)
    ]
    if steps:
        await execute_ddl(engine, steps, table=schema.table, environment=environment)


def type_change_note(plan: DriftPlan) -> str | None:
    """The status note that reports type changes (None when there are none)."""
    if not plan.retyped:
        return None
    parts = [
        f"{t.column.name} deleted and created again at the source (old values kept in {t.kept_as})"
        if t.recreated
        else f"column type changed: {t.column.name} {t.old_type}→{t.column.sql_type} (old "
        f"values kept in {t.kept_as})"
        for t in plan.retyped
    ]
    return "schema drift: " + "; ".join(parts)
