"""Wide tables on PostgreSQL: the columns kept in `_dv_overflow jsonb`, and the view that shows
them typed.

store.dialects.pg_width decides which columns a row has no room for; this module reads the
table as PostgreSQL lays it out, turns the decision into DDL (the `_dv_overflow` column, the
view `<environment>.<table>__wide`) and gives the writer the SQL that packs those columns into
the jsonb. Which columns are in overflow is not stored anywhere else: it is every catalogued
column (dv_mirror_columns) that is not a column of the table, so the table itself is the record
and can never disagree with it.

Values in the jsonb are typed: numbers (numeric, integer, bigint, double) as JSON numbers with
every digit, booleans as JSON booleans, moments as ISO-8601 UTC text
(`2024-05-01T12:00:00.000000Z`), dates as `YYYY-MM-DD`, GUIDs as lower-case text, multi-select
choices as an array of numbers. A NULL is an absent key. The view casts each key back to the
column's type, so a reader of the view sees every column as if the table held it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from sync.logs import get_logger
from sync.store.dialects import Overflow, WideRequest
from sync.store.dialects.pg_width import (
    MAX_VIEW_COLUMNS,
    OVERFLOW_COLUMN,
    OverflowPlan,
    Slot,
    pg_slot,
    plan_existing_table,
    plan_new_table,
)
from sync.store.identifiers import quote_ident
from sync.store.layout import RESERVED_COLUMNS, SqlType

log = get_logger("dvmirror.store")

VIEW_SUFFIX = "__wide"
MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names (NAMEDATALEN - 1)
# jsonb_build_object takes at most 100 arguments (FUNC_MAX_ARGS): 50 key/value pairs a call.
_PAIRS_PER_CALL = 50

# The JSON value of a column, from its unnested parameter `{}` (text, or a typed array).
_JSON_VALUE: dict[SqlType, str] = {
    "text": "{}",
    "uuid": "{}::uuid",
    "numeric": "{}::numeric",
    "timestamp": "to_char({}::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "date": "{}::date",
    "choices": "string_to_array({}, ',')::integer[]",
    "integer": "{}",
    "bigint": "{}",
    "boolean": "{}",
    "float": "{}",
}
# The view's expression of a key: `{text}` is `_dv_overflow ->> 'name'` (the value as text),
# `{json}` is `_dv_overflow -> 'name'` (as jsonb).
_VIEW_CAST: dict[str, str] = {
    "text": "({text})",
    "uuid": "({text})::uuid",
    "numeric": "({text})::numeric",
    "timestamp": "({text})::timestamptz",
    "date": "({text})::date",
    # [1, 2] → {1, 2}: a JSON array of integers is an integer[] literal in other brackets.
    "choices": "translate(({json})::text, '[]', '{{}}')::integer[]",
    "integer": "({text})::integer",
    "bigint": "({text})::bigint",
    "boolean": "({text})::boolean",
    "float": "({text})::double precision",
}


def key_literal(name: str) -> str:
    """A column name as an SQL string literal (safe identifiers only: no quote can occur)."""
    return "'" + quote_ident(name)[1:-1] + "'"


def json_value(sql_type: SqlType, value: str, *, typed: bool = False) -> str:
    """The JSON value of a parameter's text `value`, or (`typed`) of a column of the table."""
    if typed and sql_type == "choices":  # already integer[]
        return value
    return _JSON_VALUE[sql_type].format(value)


def view_cast(sql_type: str, name: str, *, source: str = "") -> str:
    """`(_dv_overflow ->> 'name')::type`: a key as the column's type (unknown types stay text);
    `source` names the jsonb another way (`m."_dv_overflow"`)."""
    column, key = source or quote_ident(OVERFLOW_COLUMN), key_literal(name)
    template = _VIEW_CAST.get(sql_type, _VIEW_CAST["text"])
    return template.format(text=f"{column} ->> {key}", json=f"{column} -> {key}")


def pack(pairs: Sequence[tuple[str, str]]) -> str:
    """The `_dv_overflow` value of (key, SQL value) pairs: NULL values left out, NULL when
    nothing is left."""
    calls = []
    for start in range(0, len(pairs), _PAIRS_PER_CALL):
        chunk = pairs[start : start + _PAIRS_PER_CALL]
        calls.append(
            "jsonb_build_object(" + ", ".join(f"{key_literal(k)}, {v}" for k, v in chunk) + ")"
        )
    return f"NULLIF(jsonb_strip_nulls({' || '.join(calls)}), '{{}}'::jsonb)"


def merged(new: str, old: str, written: Sequence[str]) -> str:
    """The `_dv_overflow` of an updated row: the page's keys, plus the keys the page never
    writes (old values of a column whose type changed, `<col>__old_<type>`) kept from `old`."""
    keys = "ARRAY[" + ", ".join(key_literal(k) for k in written) + "]::text[]"
    kept = f"COALESCE({old} - {keys}, '{{}}'::jsonb)"
    return f"NULLIF(COALESCE({new}, '{{}}'::jsonb) || {kept}, '{{}}'::jsonb)"


def view_name(table: str) -> str:
    """`<table>__wide`, kept within PostgreSQL's 63 characters (a longer table name is cut and
    given a short hash, so the view never takes the table's own truncated name)."""
    name = f"{table}{VIEW_SUFFIX}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[: MAX_IDENTIFIER - len(VIEW_SUFFIX) - 9]}_{digest}{VIEW_SUFFIX}"


async def physical_slots(conn: AsyncConnection, environment: str, table: str) -> list[Slot] | None:
    """Every attribute of the table in order (dropped ones too: they still count), or None."""
    result = await conn.exec_driver_sql(
        "SELECT a.attname, a.attlen, a.attalign::text, a.attisdropped "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 "
        "ORDER BY a.attnum",
        (environment, table),
    )
    rows: list[Any] = list(result.fetchall())
    if not rows:
        return None
    return [pg_slot(str(r[0]), int(r[1]), str(r[2]), dropped=bool(r[3])) for r in rows]


async def view_columns(conn: AsyncConnection, environment: str, table: str) -> list[str]:
    """The columns of the table's `__wide` view in order ([] when there is none)."""
    result = await conn.exec_driver_sql(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'v' AND a.attnum > 0 "
        "AND NOT a.attisdropped ORDER BY a.attnum",
        (environment, view_name(table)),
    )
    return [str(r[0]) for r in result.fetchall()]


def _view_sql(
    environment: str,
    table: str,
    physical: Sequence[str],
    overflow: Mapping[str, str],
    current_view: Sequence[str],
    *,
    rebuild: bool,
) -> list[str]:
    """CREATE OR REPLACE the view: its existing columns keep their places (PostgreSQL only lets
    a view gain columns at the end), new ones follow; a type change rebuilds it."""
    target = f"{quote_ident(environment)}.{quote_ident(table)}"
    view = f"{quote_ident(environment)}.{quote_ident(view_name(table))}"
    expressions = {name: f"t.{quote_ident(name)}" for name in physical}
    for name, sql_type in overflow.items():
        expressions[name] = f"{view_cast(sql_type, name)} AS {quote_ident(name)}"
    keep = [] if rebuild else [n for n in current_view if n in expressions]
    if len(keep) < len(current_view):  # a column left the view: only a new view can say so
        keep, rebuild = [], True
    order = keep + [n for n in expressions if n not in keep]
    if len(order) > MAX_VIEW_COLUMNS:
        log.warning(
            "wide_view_too_wide",
            environment=environment,
            table=table,
            columns=len(order),
            limit=MAX_VIEW_COLUMNS,
            hint="the view is not made; read the _dv_overflow jsonb column directly",
        )
        return [f"DROP VIEW IF EXISTS {view}"] if current_view else []
    select = ", ".join(expressions[n] for n in order)
    steps = [f"DROP VIEW IF EXISTS {view}"] if rebuild and current_view else []
    steps.append(f"CREATE OR REPLACE VIEW {view} AS SELECT {select} FROM {target} AS t")  # noqa: S608
    steps.append(
        f"COMMENT ON VIEW {view} IS 'dvmirror: {environment}.{table} with the columns kept in "
        f"_dv_overflow (a row too wide for PostgreSQL) unpacked and typed'"
    )
    return steps


def _overflow_types(request: WideRequest, overflow: Collection[str]) -> dict[str, str]:
    """The type of every column in overflow: the live type, else the catalogued one (a column
    removed at the source, old values kept after a type change)."""
    live = dict(request.columns)
    kept_as = {new: old for old, new in request.retyped}
    found: dict[str, str] = {}
    for name in [*live, *sorted(set(overflow) - set(live))]:
        if name in overflow:
            found[name] = str(
                live.get(name) or request.catalogue.get(kept_as.get(name, name), "text")
            )
    return found


async def plan_wide(conn: AsyncConnection, request: WideRequest) -> Overflow:
    """Where the table's columns go, and the DDL for `_dv_overflow` and the view."""
    environment, table = request.environment, request.table
    target = f"{quote_ident(environment)}.{quote_ident(table)}"
    slots = None if request.create else await physical_slots(conn, environment, table)
    plan: OverflowPlan
    if slots is None:
        plan = plan_new_table(request.columns, request.primary_key)
        physical = [c for c, _ in request.columns if c not in plan.overflow]
        physical += list(RESERVED_COLUMNS)
        before: list[str] = []
        renamed: frozenset[str] = frozenset()
        stored = set(plan.overflow)
    else:
        names = {s.name for s in slots if not s.dropped}
        was = {c for c in request.catalogue if c not in names}
        # A retyped column in overflow: its old values move to the archive's key, and the
        # column itself is placed again like a new one.
        renamed = frozenset(c for c, _ in request.retyped if c in was)
        # A table too wide as it is may give up columns, never its key or reserved ones (nor a
        # column being renamed for a type change).
        fixed = {request.primary_key, *RESERVED_COLUMNS, *(c for c, _ in request.retyped)}
        plan = plan_existing_table(slots, was - renamed, request.added, fixed=fixed)
        stored = set(plan.overflow) | {k for c, k in request.retyped if c in renamed}
        gone = {*plan.evicted, OVERFLOW_COLUMN}
        physical = [s.name for s in slots if not s.dropped and s.name not in gone]
        physical = [dict(request.retyped).get(n, n) for n in physical]
        physical += [c for c, _ in request.added if c not in plan.overflow]
        before = _evict(target, plan.evicted, request.catalogue)
        before += [_move_key(target, c, k) for c, k in request.retyped if c in renamed]
    if not plan.fits:
        log.warning(
            "wide_table_over_limit",
            environment=environment,
            table=table,
            width=plan.width,
            hint="even with its columns in _dv_overflow the row passes PostgreSQL's limits",
        )
    if not stored:
        return Overflow()
    if plan.add_overflow_column:
        before.insert(
            0, f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {quote_ident(OVERFLOW_COLUMN)} jsonb"
        )
        before.append(
            f"COMMENT ON COLUMN {target}.{quote_ident(OVERFLOW_COLUMN)} IS 'dvmirror: the "
            f"columns this row has no room for, typed; read them through the view "
            f"{environment}.{view_name(table)}'"
        )
        log.info("wide_table_overflow", environment=environment, table=table, columns=len(stored))
    current_view = [] if slots is None else await view_columns(conn, environment, table)
    # A view column cannot change its type in place (a column deleted and created again with
    # the same type keeps its place), and a column the view reads cannot be dropped.
    rebuild = bool(plan.evicted) or any(
        request.catalogue.get(c) != dict(request.columns).get(c) for c, _ in request.retyped
    )
    if plan.evicted and current_view:
        before.insert(
            0, f"DROP VIEW IF EXISTS {quote_ident(environment)}.{quote_ident(view_name(table))}"
        )
        current_view = []
    types = _overflow_types(request, stored)
    after = _view_sql(environment, table, physical, types, current_view, rebuild=rebuild)
    return Overflow(frozenset(stored), tuple(before), tuple(after), renamed)


def _evict(target: str, columns: Sequence[str], types: Mapping[str, str]) -> list[str]:
    """Move the values of `columns` into the overflow (NULL in the same update, so no row
    grows) and drop the columns."""
    if not columns:
        return []
    log.warning("wide_table_columns_evicted", table=target, columns=len(columns))
    ov = quote_ident(OVERFLOW_COLUMN)
    pairs = [(c, json_value(_sql_type(types.get(c)), quote_ident(c), typed=True)) for c in columns]
    cleared = ", ".join(f"{quote_ident(c)} = NULL" for c in columns)
    packed = merged(pack(pairs), ov, columns)
    drops = ", ".join(f"DROP COLUMN {quote_ident(c)}" for c in columns)
    return [
        f"UPDATE {target} SET {ov} = {packed}, {cleared}",  # noqa: S608
        f"ALTER TABLE {target} {drops}",
    ]


def _sql_type(name: str | None) -> SqlType:
    known: dict[str, SqlType] = {t: t for t in _JSON_VALUE}
    return known.get(name or "", "text")


def _move_key(target: str, column: str, kept_as: str) -> str:
    """After a type change of a column in overflow, its old values move to `kept_as`."""
    key, kept = key_literal(column), key_literal(kept_as)
    ov = quote_ident(OVERFLOW_COLUMN)
    return (
        f"UPDATE {target} SET {ov} = ({ov} - {key}) || jsonb_build_object({kept}, {ov} -> {key}) "  # noqa: S608
        f"WHERE {ov} ? {key}"
    )
