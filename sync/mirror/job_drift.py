"""Fit a table's mirror and its stored checkpoint to the schema just discovered (drift)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tables import TableOptions
from sync.logs import get_logger
from sync.mirror import cursor as cur
from sync.store import checkpoints as state
from sync.store.layout import TableSchema
from sync.store.mirror_tables import MirrorLayout, ensure_mirror, type_change_note

log = get_logger("dvmirror.engine")


async def fit_mirror(
    store: AsyncEngine,
    environment: str,
    table: str,
    schema: TableSchema,
    *,
    stored: state.TableStatus,
    options: TableOptions,
    now: datetime,
) -> tuple[MirrorLayout, cur.TableState, bool]:
    """The mirror table created or adapted for `schema`, the checkpoint that fits it (stored
    when it changed) and whether the mirror gained columns."""
    layout = await ensure_mirror(
        store,
        environment,
        schema,
        soft=options.deletes == "soft",
        now=now,
        history=options.history,
    )
    cursor = stored.cursor
    if layout.drift.create and cursor.phase != "new":
        log.warning("mirror_table_missing", environment=environment, table=table)
        cursor = cur.TableState()
    widened = layout.drift.added or layout.drift.revived or layout.drift.retyped
    if widened and cursor.delta_link is not None:  # keep the token, widen the $select
        cursor = replace(cursor, delta_link=cur.with_select(cursor.delta_link, schema.select))
    if cursor != stored.cursor:
        await state.save_cursor(store, environment, table, cursor, now=now)
    note = type_change_note(layout.drift)
    if note is not None:
        await state.record_note(store, environment, table, note, now=now)
    if stored.schema_hash != schema.schema_hash:
        await state.set_schema_hash(store, environment, table, schema.schema_hash, now=now)
    return layout, cursor, bool(widened)
