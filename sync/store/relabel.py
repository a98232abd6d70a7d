"""Relabelled options reach the mirror as commits of the change feed (store.commits).

A relabel at the source moves no row's `versionnumber`, so the metadata refresh updates the
mirror itself: per option, `UPDATE <table> SET <col>__label = :new, _dv_commit_seq = :seq WHERE
<col> = :value AND <col>__label IS DISTINCT FROM :new` (a multi-select column: one UPDATE per
distinct stored value, its label recomputed). All label columns of one mirror table share one
commit number, recorded in `dv_commits` with `upserts` = the rows it changed; a table where
nothing changed takes no number. So a loader following `_dv_commit_seq > :last` (or `dvmirror
feed`) gets the relabelled rows with their other values unchanged.

History (`<table>__history`): a relabel is no new version. When the history is up to date with
the mirror, the open `upsert` versions of the relabelled rows take the new labels in place and
the same commit number; closed versions and open `delete` versions keep the label they had.
When the history is behind (turned off for a while), it is left alone: its catch-up takes every
mirror row changed meanwhile, these included (store.history.catch_up).

Everything runs in the caller's transaction (the metadata tables' rewrite), after taking the
environment's commit number (on PostgreSQL under its advisory lock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from sync.store.commits import record_commit, take_number
from sync.store.dialects import Dialect, dialect_for
from sync.store.dialects.history_sql import OP, VALID_TO, history_table
from sync.store.dialects.pg_wide import key_literal
from sync.store.identifiers import quote_ident
from sync.store.layout import COMMIT_SEQ_COLUMN, DELETED_COLUMN
from sync.store.relabel_wide import (
    OVERFLOW,
    distinct_values,
    label_update,
    overflowed,
    read_text,
    view_of,
)

SEQ = quote_ident(COMMIT_SEQ_COLUMN)
DELETED = quote_ident(DELETED_COLUMN)


@dataclass(frozen=True)
class LabelFix:
    """New labels for one mirror table's `<column>__label`: by option value (a choice column),
    or computed from each stored value (a multi-select column, `1,3` → `A; C`)."""

    table: str
    column: str
    labels: Mapping[int, str]
    recompute: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class TableRelabel:
    """One mirror table's relabel commit."""

    table: str
    seq: int
    rows: int  # distinct rows whose labels changed
    history_rows: int  # open history versions updated in place


def stored_value(value: Any) -> str:
    """A multi-select value as the Web API writes it (`1,3`), from SQLite's text or
    PostgreSQL's integer[]."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _differs(dialect: Dialect, a: str, b: str) -> str:
    return f"{a} IS NOT {b}" if dialect.name == "sqlite" else f"{a} IS DISTINCT FROM {b}"


@dataclass(frozen=True)
class Placement:
    """Where one mirror table keeps its columns: `overflow` names those in its `_dv_overflow`
    (a wide PostgreSQL table, store.relabel_wide), found through `view`."""

    key: str
    overflow: frozenset[str] = frozenset()
    view: str = ""


async def _update_column(
    conn: AsyncConnection,
    dialect: Dialect,
    target: str,
    fix: LabelFix,
    seq: int,
    *,
    place: Placement,
) -> None:
    column, label = quote_ident(fix.column), quote_ident(f"{fix.column}__label")
    source = target
    if {fix.column, f"{fix.column}__label"} & place.overflow:
        in_overflow = f"{fix.column}__label" in place.overflow
        statement = text(
            label_update(target, place.view, place.key, fix.column, label_in_overflow=in_overflow)
        )
        source = place.view
    else:
        statement = text(
            f"UPDATE {target} SET {label} = :label, {SEQ} = :seq "  # noqa: S608 - quoted identifiers
            f"WHERE {column} = :value AND {_differs(dialect, label, ':label')}"
        )
    if fix.recompute is None:
        for value, new in sorted(fix.labels.items()):
            await conn.execute(statement, {"label": new, "value": value, "seq": seq})
        return
    distinct = text(distinct_values(source, fix.column))
    for (stored,) in (await conn.execute(distinct)).all():
        new_label = fix.recompute(stored_value(stored))
        if new_label is not None:
            await conn.execute(statement, {"label": new_label, "value": stored, "seq": seq})


async def _history_current(
    conn: AsyncConnection, dialect: Dialect, environment: str, table: str, history: str
) -> bool:
    """Whether the history holds every change of the mirror's live rows (store.history's
    `history_behind`, read before this commit's changes)."""
    mirror = dialect.table_ref(environment, table)
    newest_live = (
        f"SELECT {SEQ} FROM {mirror} WHERE {DELETED} IS NULL "  # noqa: S608
        f"AND {SEQ} IS NOT NULL ORDER BY {SEQ} DESC LIMIT 1"
    )
    query = f"SELECT ({newest_live}), (SELECT max({SEQ}) FROM {history})"  # noqa: S608
    mirror_newest, history_newest = (await conn.execute(text(query))).one()
    return mirror_newest is None or mirror_newest <= (history_newest or 0)


async def _history_in_place(
    conn: AsyncConnection,
    dialect: Dialect,
    environment: str,
    table: str,
    *,
    key: str,
    labels: Sequence[str],
    seq: int,
    mirror_overflow: frozenset[str] = frozenset(),
    history_overflow: frozenset[str] = frozenset(),
) -> int:
    """The open `upsert` versions of the rows this commit relabelled take the new labels
    (wherever the mirror and the history keep each: a column or a key of `_dv_overflow`)."""
    history = dialect.table_ref(environment, history_table(table))
    mirror = dialect.table_ref(environment, table)
    new = {n: read_text(n, in_overflow=n in mirror_overflow, alias="m.") for n in labels}
    sets_list = [f"{quote_ident(n)} = {new[n]}" for n in labels if n not in history_overflow]
    packed = [f"{key_literal(n)}, {new[n]}" for n in labels if n in history_overflow]
    if packed:
        sets_list.append(
            f"{OVERFLOW} = COALESCE(h.{OVERFLOW}, '{{}}'::jsonb) || "
            f"jsonb_build_object({', '.join(packed)})"
        )
    sets = ", ".join(sets_list)
    differs = " OR ".join(
        _differs(dialect, read_text(n, in_overflow=n in history_overflow, alias="h."), new[n])
        for n in labels
    )
    k = quote_ident(key)
    statement = text(
        f"UPDATE {history} AS h SET {sets}, {SEQ} = :seq FROM {mirror} AS m "  # noqa: S608
        f"WHERE m.{SEQ} = :seq AND m.{DELETED} IS NULL AND m.{k} = h.{k} "
        f"AND h.{VALID_TO} IS NULL AND h.{OP} = 'upsert' AND ({differs})"
    )
    result = await conn.execute(statement, {"seq": seq})
    return max(result.rowcount or 0, 0)


async def relabel_table(
    conn: AsyncConnection,
    environment: str,
    table: str,
    fixes: Sequence[LabelFix],
    *,
    committed_at: datetime,
) -> TableRelabel | None:
    """Apply one mirror table's label fixes as one commit; None when no row changed (or the
    table has no mirror, or none of those label columns: its rows will come with new labels)."""
    dialect = dialect_for(conn)
    present = await dialect.existing_columns(conn, environment, table) or []
    mirror_overflow = await overflowed(conn, dialect, environment, table, present)
    located = {*present, *mirror_overflow}
    wanted = [f for f in fixes if f.column in located and f"{f.column}__label" in located]
    if not wanted:
        return None
    history = history_table(table)
    history_columns = await dialect.existing_columns(conn, environment, history) or []
    history_overflow = await overflowed(conn, dialect, environment, history, history_columns)
    labels = [f"{f.column}__label" for f in wanted]
    in_history = [n for n in labels if n in history_columns or n in history_overflow]
    seq = await take_number(conn, environment)
    history_current = bool(in_history) and await _history_current(
        conn, dialect, environment, table, dialect.table_ref(environment, history_table(table))
    )
    target = dialect.table_ref(environment, table)
    # The mirror's primary key is its first column (both dialects create it so).
    place = Placement(present[0], mirror_overflow, view_of(dialect, environment, table))
    for fix in wanted:
        await _update_column(conn, dialect, target, fix, seq, place=place)
    count = text(f"SELECT count(*) FROM {target} WHERE {SEQ} = :seq")  # noqa: S608
    rows = int((await conn.execute(count, {"seq": seq})).scalar_one())
    if not rows:  # nothing changed: the number is given to the next commit
        return None
    history_rows = 0
    if history_current:
        history_rows = await _history_in_place(
            conn,
            dialect,
            environment,
            table,
            key=present[0],
            labels=in_history,
            seq=seq,
            mirror_overflow=mirror_overflow,
            history_overflow=history_overflow,
        )
    await record_commit(
        conn,
        environment=environment,
        seq=seq,
        table=table,
        committed_at=committed_at,
        upserts=rows,
        deletes=0,
    )
    return TableRelabel(table, seq, rows, history_rows)


async def relabel(
    conn: AsyncConnection,
    environment: str,
    fixes: Sequence[LabelFix],
    *,
    committed_at: datetime,
) -> list[TableRelabel]:
    """Every table's label fixes, one commit per table that changed, in table order."""
    done = []
    ordered = sorted(fixes, key=lambda f: (f.table, f.column))
    for table, group in groupby(ordered, key=lambda f: f.table):
        found = await relabel_table(
            conn, environment, table, list(group), committed_at=committed_at
        )
        if found is not None:
            done.append(found)
    return done


async def record_metadata_commits(
    conn: AsyncConnection,
    environment: str,
    counts: Mapping[str, tuple[int, int]],
    *,
    committed_at: datetime,
) -> None:
    """One commit per metadata table rewritten (name → (rows written, rows removed)), named
    after it (`optionsetmetadata`): its rows carry no commit number, a loader copies the table
    again when a commit names it."""
    for name, (written, removed) in sorted(counts.items()):
        seq = await take_number(conn, environment)
        await record_commit(
            conn,
            environment=environment,
            seq=seq,
            table=name,
            committed_at=committed_at,
            upserts=written,
            deletes=removed,
        )
