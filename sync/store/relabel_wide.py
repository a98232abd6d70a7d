"""Label fixes on a wide PostgreSQL table, whose widest columns live in `_dv_overflow`
(store.dialects.pg_wide): the choice value and its `__label` may each be a column or a key of
the jsonb, in the mirror and in its history.

The rows are found through the mirror's `<table>__wide` view, which shows every column typed
wherever it lives, so one condition serves every placement. A label kept in the jsonb is set
with `jsonb_set` (a relabel always writes text, never NULL). A table whose view could not be
made (more columns than a view may have) cannot be searched this way: its overflowed labels are
left for the rows' next change, and a warning says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from sync.store.dialects import Dialect
from sync.store.dialects.pg_wide import key_literal, view_columns, view_name
from sync.store.dialects.pg_width import OVERFLOW_COLUMN
from sync.store.identifiers import quote_ident

OVERFLOW = quote_ident(OVERFLOW_COLUMN)


async def overflowed(
    conn: AsyncConnection, dialect: Dialect, environment: str, table: str, present: Sequence[str]
) -> frozenset[str]:
    """The columns `table` keeps in its `_dv_overflow` (none on SQLite or a table that fits)."""
    if dialect.name == "sqlite" or OVERFLOW_COLUMN not in present:
        return frozenset()
    return frozenset(await view_columns(conn, environment, table)) - set(present)


def view_of(dialect: Dialect, environment: str, table: str) -> str:
    return dialect.table_ref(environment, view_name(table))


def set_text(column: str, value: str, *, in_overflow: bool, alias: str = "") -> str:
    """`column = value` for a text column, or the same key set in the row's jsonb."""
    if not in_overflow:
        return f"{quote_ident(column)} = {value}"
    current = f"{alias}{OVERFLOW}" if alias else OVERFLOW
    return (
        f"{OVERFLOW} = jsonb_set(COALESCE({current}, '{{}}'::jsonb), "
        f"ARRAY[{key_literal(column)}], to_jsonb(CAST({value} AS text)))"
    )


def read_text(column: str, *, in_overflow: bool, alias: str = "") -> str:
    """A text column's value, or the same key read from the row's jsonb."""
    if in_overflow:
        return f"({alias}{OVERFLOW} ->> {key_literal(column)})"
    return f"{alias}{quote_ident(column)}"


def label_update(target: str, view: str, key: str, column: str, *, label_in_overflow: bool) -> str:
    """The UPDATE giving `:label` and `:seq` to the rows whose `column` is `:value` and whose
    label differs, found through the view."""
    label = f"{column}__label"
    k = quote_ident(key)
    return (
        f"UPDATE {target} SET {set_text(label, ':label', in_overflow=label_in_overflow)}, "  # noqa: S608 - quoted identifiers
        f"{quote_ident('_dv_commit_seq')} = :seq WHERE {k} IN (SELECT {k} FROM {view} "
        f"WHERE {quote_ident(column)} = :value "
        f"AND {quote_ident(label)} IS DISTINCT FROM CAST(:label AS text))"
    )


def distinct_values(view: str, column: str) -> str:
    """The distinct stored values of a (multi-select) column, wherever it lives."""
    c = quote_ident(column)
    return f"SELECT DISTINCT {c} FROM {view} WHERE {c} IS NOT NULL"  # noqa: S608
