"""History mode (SCD type 2): `table_options.<table>.history = true` keeps `<table>__history`.

The model (one row per version of a key; the versions of a key never overlap):

* A page row that really changed the mirror (it carries the page's commit number,
  store.commits) with a new `_dv_version` closes the key's open version (`_dv_valid_to`) and
  opens a new `upsert` version, `_dv_valid_from` = the row's `modifiedon` (the sync time when
  the table has none, or when it is not after the previous version's start). The same version
  with other values (a column added and filled) updates the open version in place.
* A row deleted at the source (a delta tombstone, a key-scan or a full pass's sweep, a verify
  repair; hard or soft deletes alike) closes the open version at the time dvmirror saw the
  deletion and opens a `delete` version holding the last values; a row created again later
  closes that one.
* History turned off for a while and on again catches up when the table starts (`catch_up`).
* A point-in-time read: `_dv_op = 'upsert' AND _dv_valid_from <= T AND (_dv_valid_to IS NULL OR
  _dv_valid_to > T)`.
* A wide PostgreSQL table (columns in `_dv_overflow`) has a wide history: its own `_dv_overflow`
  and the view `<table>__history__wide` (store.dialects.pg_history_wide).

All of it runs in the page's transaction, derived from the mirror, so a replayed page (equal
versions and values: the mirror keeps the rows' old commit numbers) adds nothing, a crash never
leaves history without its page, and a full reload (resync) adds versions only for rows whose
values changed. On PostgreSQL the page transactions of an environment (concurrent key ranges, a
resync beside the delta) write one after another: each first takes the environment's commit lock
(store.commits.take_number); a unique index keeps one open version per key regardless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.logs import get_logger
from sync.store.commits import take_number
from sync.store.dialects import Dialect, Overflow, TableWriter, WideRequest, dialect_for
from sync.store.dialects.history_sql import (
    Flavour,
    HistorySql,
    Placement,
    create_history_sql,
    history_table,
)
from sync.store.dialects.pg_history_wide import plan_history_wide
from sync.store.layout import SqlType
from sync.store.writer import map_store_errors, patiently

log = get_logger("dvmirror.history")

__all__ = [
    "HistoryPlan",
    "HistoryWriter",
    "Placement",
    "catch_up",
    "existing_history_columns",
    "history_steps",
    "plan_history",
    "plan_history_overflow",
    "prune_history",
]


@dataclass(frozen=True)
class HistoryPlan:
    """What to change so that the history table fits the mirror's columns."""

    create: bool = False
    renamed: tuple[tuple[str, str], ...] = ()  # (column, kept_as) after a type change
    added: tuple[tuple[str, SqlType], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.create or self.renamed or self.added)


def plan_history(
    existing: Sequence[str] | None,
    columns: Sequence[tuple[str, SqlType]],
    retyped: Sequence[tuple[str, str]] = (),
) -> HistoryPlan:
    """Compare the history table's columns (None: no table yet) with the mirror's; `retyped`
    are the mirror's (column, kept_as) renames of this drift, followed here too. Pure."""
    if existing is None:
        return HistoryPlan(create=True)
    present = set(existing)
    renamed = tuple((old, new) for old, new in retyped if old in present and new not in present)
    for old, new in renamed:
        present.discard(old)
        present.add(new)
    added = tuple((name, sql_type) for name, sql_type in columns if name not in present)
    return HistoryPlan(False, renamed, added)


def _flavour(dialect: Dialect) -> Flavour:
    return "sqlite" if dialect.name == "sqlite" else "postgresql"


def history_steps(
    dialect: Dialect,
    environment: str,
    table: str,
    columns: Sequence[tuple[str, SqlType]],
    plan: HistoryPlan,
    *,
    wide: Overflow | None = None,
    placement: Placement | None = None,
) -> list[str]:
    """The DDL of `plan`, to run in the mirror's DDL transaction (after the mirror's own): a new
    history table starts with an open version of every live mirror row. `wide`: the DDL of a
    wide table's history overflow and view (plan_history_overflow), `placement` its columns."""
    flavour = _flavour(dialect)
    wide = wide or Overflow()
    if plan.create:
        sql = HistorySql.build(flavour, environment, table, columns, placement)
        named = [(c, t) for c, t in columns if c not in wide.columns]
        create = create_history_sql(flavour, environment, table, named)
        return [*create, *wide.before, sql.seed(), *wide.after]
    name = history_table(table)
    steps = list(wide.before)
    steps += [dialect.rename_column(environment, name, old, new) for old, new in plan.renamed]
    steps += [dialect.add_column(environment, name, c, t) for c, t in plan.added]
    return [*steps, *wide.after]


async def plan_history_overflow(
    engine: AsyncEngine, request: WideRequest, mirror_overflow: frozenset[str]
) -> Overflow:
    """Where a wide PostgreSQL table's history keeps its columns (nothing on SQLite, which has
    no row limit, nor for a table that fits)."""
    dialect = dialect_for(engine)
    if _flavour(dialect) == "sqlite":
        return Overflow()
    with map_store_errors(request.table, dialect):
        async with engine.connect() as conn:
            return await plan_history_wide(conn, request, mirror_overflow)


async def existing_history_columns(
    conn: AsyncConnection, dialect: Dialect, environment: str, table: str
) -> list[str] | None:
    return await dialect.existing_columns(conn, environment, history_table(table))


class HistoryWriter:
    """A mirror table's writer that also keeps its history table, in the same transaction."""

    def __init__(self, inner: TableWriter, sql: HistorySql) -> None:
        self.inner, self.sql = inner, sql

    @classmethod
    def wrap(
        cls,
        inner: TableWriter,
        dialect: Dialect,
        columns: Sequence[tuple[str, SqlType]],
        placement: Placement | None = None,
    ) -> HistoryWriter:
        flavour = _flavour(dialect)
        sql = HistorySql.build(flavour, inner.environment, inner.table, columns, placement)
        return cls(inner, sql)

    @property
    def environment(self) -> str:
        return self.inner.environment

    @property
    def table(self) -> str:
        return self.inner.table

    @property
    def primary_key(self) -> str:
        return self.inner.primary_key

    @property
    def soft(self) -> bool:
        return self.inner.soft

    async def upsert(
        self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], stamp: str, seq: int
    ) -> int:
        upserted = await self.inner.upsert(conn, rows, stamp, seq)
        # A page that changed nothing (a full pass over unchanged rows, a replay) adds nothing:
        # one indexed count instead of three statements.
        if rows and await self.inner.changed(conn, seq):
            params = {"stamp": stamp, "seq": seq}
            for statement in (
                self.sql.close_superseded(),
                self.sql.refresh_current(),
                self.sql.open_changed(),
            ):
                await conn.execute(text(statement), params)
        return upserted

    async def changed(self, conn: AsyncConnection, seq: int) -> int:
        return await self.inner.changed(conn, seq)

    async def _deletions(
        self, conn: AsyncConnection, ids: Sequence[str] | None, at: str, seq: int
    ) -> None:
        params: dict[str, Any] = {"at": at, "seq": seq}
        if ids is not None:
            params["ids"] = self.sql.ids_param(ids)
        await conn.execute(text(self.sql.close_gone(by_ids=ids is not None)), params)
        await conn.execute(text(self.sql.open_deletions()), {"at": at, "seq": seq})

    async def delete(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        observed_at: str,
        seq: int,
        reason: str | None = None,
    ) -> int:
        deleted = await self.inner.delete(conn, ids, observed_at, seq, reason)
        if ids:
            await self._deletions(conn, ids, observed_at, seq)
        return deleted

    async def touch(self, conn: AsyncConnection, keys: Sequence[str], stamp: str) -> None:
        await self.inner.touch(conn, keys, stamp)

    async def sweep(self, conn: AsyncConnection, before: str, observed_at: str, seq: int) -> int:
        """The end of a full pass: every key without a live mirror row is a deletion (also a
        version left open by a mirror table that was dropped and loaded again)."""
        swept = await self.inner.sweep(conn, before, observed_at, seq)
        await self._deletions(conn, None, observed_at, seq)
        return swept

    async def count(self, conn: AsyncConnection) -> int:
        return await self.inner.count(conn)


def history_behind(mirror_newest: int | None, history_newest: int | None) -> bool:
    """Whether live mirror rows changed after the history's newest row: history was off for a
    while (or the mirror was written without it). Pure."""
    return mirror_newest is not None and mirror_newest > (history_newest or 0)


async def catch_up(engine: AsyncEngine, writer: HistoryWriter, *, now: datetime) -> bool:
    """History turned on again after a while off: every live mirror row changed meanwhile gets
    its version (from its `modifiedon`, else now) and the versions of rows gone meanwhile are
    closed. Two indexed `max()` reads when the history is up to date (every table start)."""
    sql = writer.sql
    dialect = dialect_for(engine)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def newest(conn: AsyncConnection) -> tuple[int | None, int | None]:
        mirror_newest, history_newest = (await conn.execute(text(sql.newest_numbers()))).one()
        return mirror_newest, history_newest

    async def attempt() -> bool:
        async with engine.begin() as conn:
            seq = await take_number(conn, writer.environment)  # PostgreSQL: the page lock
            mirror_newest, history_newest = await newest(conn)
            if not history_behind(mirror_newest, history_newest):
                return False
            params = {"stamp": stamp, "seq": seq, "since": history_newest or 0}
            for statement in (
                sql.close_superseded(catch_up=True),
                sql.refresh_current(catch_up=True),
                sql.open_changed(catch_up=True),
            ):
                await conn.execute(text(statement), params)
            await conn.execute(text(sql.close_gone(by_ids=False)), {"at": stamp, "seq": seq})
            await conn.execute(text(sql.open_deletions()), {"at": stamp, "seq": seq})
        return True

    with map_store_errors(writer.table, dialect, environment=writer.environment):
        async with engine.connect() as conn:
            if not history_behind(*await newest(conn)):
                return False
        caught = await patiently(attempt, environment=writer.environment, table=writer.table)
    if caught:
        log.info("history_caught_up", environment=writer.environment, table=writer.table)
    return caught


def retention_cutoff(now: datetime, retention_seconds: float) -> str:
    """The moment before which closed versions go, as a sync stamp (pure)."""
    moment = now.astimezone(UTC) - timedelta(seconds=retention_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def prune_history(
    engine: AsyncEngine,
    environment: str,
    table: str,
    retention_seconds: float,
    *,
    now: datetime,
) -> int:
    """Delete the versions of `<table>__history` that ended more than `retention_seconds` ago
    (and deletions older than that); 0 when there is no history table yet."""
    dialect = dialect_for(engine)
    async with engine.connect() as conn:
        columns = await existing_history_columns(conn, dialect, environment, table)
    if columns is None:
        return 0
    # Only the key's name matters to the prune statement; its type is not used.
    sql = HistorySql.build(_flavour(dialect), environment, table, [(columns[0], "text")])
    cutoff = retention_cutoff(now, retention_seconds)

    async def attempt() -> int:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql.prune()), {"cutoff": cutoff})
        return max(result.rowcount, 0)

    with map_store_errors(table, dialect, environment=environment):
        return await patiently(attempt, environment=environment, table=table)
