"""The PostgreSQL store: schema `<environment>`, table `<table>`, native types.

Types: numeric (exact Money/Decimal), timestamptz, date, uuid, boolean, integer, bigint,
double precision, text, and multi-select choices as integer[] (their labels stay text in
`<col>__label`). The control tables live in schema `dvmirror` (the engine's search_path).

A page is one statement per kind of change: its rows travel as one array per column and are
unnested on the server (`INSERT … SELECT … FROM unnest($1::text[], …) ON CONFLICT DO UPDATE`),
so a page of 5,000 rows is one round trip, not 5,000. Values arrive as the Web API sent them
(decimals, moments, GUIDs and choices as text) and PostgreSQL converts them exactly: text →
numeric keeps every digit. A value that does not fit its type fails the whole page (DataError),
which parks only its table, as in SQLite.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sync.config.values import CONTROL_SCHEMA
from sync.store.dialects import Failure, Overflow, WideRequest, guid_order_text
from sync.store.dialects.pg_wide import json_value, merged, pack, plan_wide
from sync.store.dialects.pg_width import OVERFLOW_COLUMN
from sync.store.identifiers import quote_ident
from sync.store.layout import (
    COMMIT_SEQ_COLUMN,
    DELETED_COLUMN,
    SYNCED_COLUMN,
    VERSION_COLUMN,
    SqlType,
)

COLUMN_TYPE: dict[SqlType, str] = {
    "text": "text",
    "uuid": "uuid",
    "numeric": "numeric",
    "timestamp": "timestamptz",
    "date": "date",
    "choices": "integer[]",
    "integer": "integer",
    "bigint": "bigint",
    "boolean": "boolean",
    "float": "double precision",
}
# How each logical type travels in its parameter array, and how the server turns it into the
# column's type (`{}` is the unnested value).
_ARRAY: dict[SqlType, str] = {
    "text": "text[]",
    "uuid": "text[]",
    "numeric": "text[]",
    "timestamp": "text[]",
    "date": "text[]",
    "choices": "text[]",
    "integer": "integer[]",
    "bigint": "bigint[]",
    "boolean": "boolean[]",
    "float": "float8[]",
}
_CONVERT: dict[SqlType, str] = {
    "uuid": "{}::uuid",
    "numeric": "{}::numeric",
    "timestamp": "{}::timestamptz",
    "date": "{}::date",
    "choices": "string_to_array({}, ',')::integer[]",
}
_DELETIONS = f'{quote_ident(CONTROL_SCHEMA)}."_dv_deletions"'
_LOG_COLUMNS = '("environment", "table", "id", "observed_at", "_dv_commit_seq", "reason")'
# SQLSTATE classes: 21 cardinality (one key twice in a statement), 22 data exception,
# 23 integrity violation → the page's values;
# 40 transaction rollback (serialization failure, deadlock) → run the transaction again;
# 08 connection exception, 57 operator intervention (shutdown, cancel), 53 insufficient
# resources → retry later; 54 program limit exceeded (a row past 8 KB of fixed-width values,
# over 1,600 columns) → the table cannot be stored as it is: mirror fewer columns.
_DATA_CLASSES = ("21", "22", "23")
_BUSY_CLASSES = ("40",)
_TRANSIENT_CLASSES = ("08", "53", "57")


def without_nul(values: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold U+0000 (SQLite can): it is dropped from a PostgreSQL mirror.
    Checked per column first, so pages without one (nearly all) are passed on as they are."""
    if not any(isinstance(value, str) and "\x00" in value for value in values):
        return values
    return [value.replace("\x00", "") if isinstance(value, str) else value for value in values]


def _convert(sql_type: SqlType, value: str) -> str:
    return _CONVERT.get(sql_type, "{}").format(value)


@dataclass(frozen=True)
class PostgresTable:
    """The prepared SQL of one PostgreSQL mirror table for one column layout."""

    environment: str
    table: str
    primary_key: str
    key_type: SqlType
    soft: bool
    target: str
    upsert_sql: str
    text_columns: tuple[int, ...]

    @classmethod
    def build(
        cls,
        environment: str,
        table: str,
        columns: Sequence[tuple[str, SqlType]],
        removed: Sequence[str],
        *,
        soft: bool,
        overflow: frozenset[str] = frozenset(),
    ) -> PostgresTable:
        """`overflow`: columns written as keys of `_dv_overflow` (store.dialects.pg_wide)."""
        target = f"{quote_ident(environment)}.{quote_ident(table)}"
        primary_key, key_type = columns[0]
        # $1 … $n: one array per column, then the raw ETags, the page's stamp, its commit number.
        arrays = [f"${i}::{_ARRAY[t]}" for i, (_, t) in enumerate(columns, start=1)]
        etags = len(columns) + 1
        arrays.append(f"${etags}::text[]")
        aliases = [f"c{i}" for i in range(len(columns))] + ["etag"]
        stored = [(i, c, t) for i, (c, t) in enumerate(columns) if c not in overflow]
        values = [_convert(t, f"u.c{i}") for i, _, t in stored]
        values += [
            "split_part(u.etag, '\"', 2)::bigint",  # W/"12345" → 12345
            f"${etags + 1}::text::timestamptz",
            "NULL",
            *(["NULL"] * len([c for c in removed if c not in overflow])),
        ]
        names = [c for _, c, _ in stored] + [VERSION_COLUMN, SYNCED_COLUMN, DELETED_COLUMN]
        names += [c for c in removed if c not in overflow]
        new = {c: f"excluded.{quote_ident(c)}" for c in names[1:]}
        packed = [
            (c, json_value(t, f"u.c{i}")) for i, (c, t) in enumerate(columns) if c in overflow
        ]
        if overflow:  # a removed column in overflow is written as an absent key (NULL)
            names.append(OVERFLOW_COLUMN)
            values.append(pack(packed) if packed else "NULL")
            ov = quote_ident(OVERFLOW_COLUMN)
            written = [c for c, _ in packed] + [c for c in removed if c in overflow]
            new[OVERFLOW_COLUMN] = merged(f"excluded.{ov}", f"t.{ov}", written)
        updates = ", ".join(f"{quote_ident(c)} = {new[c]}" for c in names[1:])
        # The commit number changes only when the stored values do (store.commits).
        kept = [c for c in names[1:] if c != SYNCED_COLUMN]
        old = ", ".join(f"t.{quote_ident(c)}" for c in kept)
        changed = ", ".join(new[c] for c in kept)
        seq = quote_ident(COMMIT_SEQ_COLUMN)
        names.append(COMMIT_SEQ_COLUMN)
        values.append(f"${etags + 2}::bigint")
        updates += (
            f", {seq} = CASE WHEN ROW({old}) IS DISTINCT FROM ROW({changed}) "
            f"THEN excluded.{seq} ELSE t.{seq} END"
        )
        upsert = (
            f"INSERT INTO {target} AS t ({', '.join(map(quote_ident, names))}) "  # noqa: S608
            f"SELECT {', '.join(values)} "
            f"FROM unnest({', '.join(arrays)}) AS u({', '.join(aliases)}) "
            f"ON CONFLICT ({quote_ident(primary_key)}) DO UPDATE SET {updates}"
        )
        texts = tuple(i for i, (_, t) in enumerate(columns) if t == "text")
        return cls(environment, table, primary_key, key_type, soft, target, upsert, texts)

    def _keys(self, parameter: str) -> str:
        """An array parameter of key text, converted to the key column's type."""
        return f"{parameter}::text[]::{COLUMN_TYPE[self.key_type]}[]"

    async def upsert(
        self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], stamp: str, seq: int
    ) -> int:
        if not rows:
            return 0
        # One statement cannot update a row twice: the last version of a key wins, as it does
        # when SQLite upserts the rows one after another.
        rows = list({row[0]: row for row in rows}.values())
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for index in self.text_columns:
            columns[index] = without_nul(columns[index])
        await conn.exec_driver_sql(self.upsert_sql, (*columns, stamp, seq))
        return len(rows)  # every row is inserted or updated exactly once

    async def changed(self, conn: AsyncConnection, seq: int) -> int:
        sql = f"SELECT count(*) FROM {self.target} WHERE {quote_ident(COMMIT_SEQ_COLUMN)} = $1"  # noqa: S608
        return int((await conn.exec_driver_sql(sql, (seq,))).scalar_one())

    async def _remove_logged(
        self,
        conn: AsyncConnection,
        where: str,
        params: tuple[Any, ...],
        observed_at: str,
        seq: int,
        *,
        reason: str | None = None,
    ) -> int:
        """Delete (or soft-delete) the live rows matching `where` ($1, $2 … are `params`) and
        log exactly those in `_dv_deletions`, in one statement; how many went."""
        n = len(params)
        at, number = f"${n + 1}::text::timestamptz", f"${n + 2}::bigint"
        deleted = quote_ident(DELETED_COLUMN)
        if self.soft:
            mark = f"{deleted} = {at}, {quote_ident(COMMIT_SEQ_COLUMN)} = {number}"
            change = f"UPDATE {self.target} SET {mark} WHERE {where} AND {deleted} IS NULL"  # noqa: S608
        else:
            change = f"DELETE FROM {self.target} WHERE {where}"  # noqa: S608
        sql = (
            f"WITH gone AS ({change} RETURNING {quote_ident(self.primary_key)}::text AS id) "  # noqa: S608
            f"INSERT INTO {_DELETIONS} {_LOG_COLUMNS} "
            f"SELECT ${n + 3}, ${n + 4}, gone.id, {at}, {number}, ${n + 5}::text FROM gone"
        )
        result = await conn.exec_driver_sql(
            sql, (*params, observed_at, seq, self.environment, self.table, reason)
        )
        return max(result.rowcount, 0)

    async def delete(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        observed_at: str,
        seq: int,
        reason: str | None = None,
    ) -> int:
        if not ids:
            return 0
        where = f"{quote_ident(self.primary_key)} = ANY({self._keys('$1')})"
        return await self._remove_logged(conn, where, (list(ids),), observed_at, seq, reason=reason)

    async def touch(self, conn: AsyncConnection, keys: Sequence[str], stamp: str) -> None:
        if not keys:
            return
        key, synced = quote_ident(self.primary_key), quote_ident(SYNCED_COLUMN)
        sql = (
            f"UPDATE {self.target} SET {synced} = $1::text::timestamptz "  # noqa: S608
            f"WHERE {key} = ANY({self._keys('$2')})"
        )
        await conn.exec_driver_sql(sql, (stamp, list(keys)))

    async def sweep(self, conn: AsyncConnection, before: str, observed_at: str, seq: int) -> int:
        where = f"{quote_ident(SYNCED_COLUMN)} < $1::text::timestamptz"
        return await self._remove_logged(conn, where, (before,), observed_at, seq)

    async def count(self, conn: AsyncConnection) -> int:
        alive = f" WHERE {quote_ident(DELETED_COLUMN)} IS NULL" if self.soft else ""
        sql = f"SELECT count(*) FROM {self.target}{alive}"  # noqa: S608
        return int((await conn.exec_driver_sql(sql)).scalar_one())


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a failure raised through SQLAlchemy's asyncpg adapter."""
    for error in (
        getattr(exc, "orig", None),
        getattr(getattr(exc, "orig", None), "__cause__", None),
    ):
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


class PostgresDialect:
    name = "postgresql"

    def create_engine(self, url: str, **kwargs: Any) -> AsyncEngine:
        """Control tables resolve to schema `dvmirror`; mirror tables are always qualified."""
        # pg_stat_activity (and an audit trigger) tell which dvmirror process a session is.
        name = f"dvmirror {socket.gethostname()}:{os.getpid()}"[:63]
        settings = {"search_path": CONTROL_SCHEMA, "application_name": name}
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_timeout", 120)
        return create_async_engine(
            url,
            pool_pre_ping=True,
            connect_args={"server_settings": settings},
            **kwargs,
        )

    def mirror_name(self, environment: str, table: str) -> str:
        return f"{environment}.{table}"

    def guid_order(self, column: str) -> str:
        # Byte order of the hex text: the C collation, never the database's locale.
        return f'({guid_order_text(f"({column})::text")}) COLLATE "C"'

    def table_ref(self, environment: str, table: str) -> str:
        return f"{quote_ident(environment)}.{quote_ident(table)}"

    def create_table(
        self,
        environment: str,
        table: str,
        primary_key: str,
        columns: Sequence[tuple[str, SqlType]],
    ) -> list[str]:
        key_type = COLUMN_TYPE[dict(columns).get(primary_key, "uuid")]
        parts = [f"{quote_ident(primary_key)} {key_type} NOT NULL PRIMARY KEY"]
        parts += [f"{quote_ident(c)} {COLUMN_TYPE[t]}" for c, t in columns if c != primary_key]
        parts += [
            f"{quote_ident(VERSION_COLUMN)} bigint",
            f"{quote_ident(SYNCED_COLUMN)} timestamptz NOT NULL",
            f"{quote_ident(DELETED_COLUMN)} timestamptz",
            f"{quote_ident(COMMIT_SEQ_COLUMN)} bigint",
        ]
        return [
            # The tables of an environment are created concurrently, and two concurrent
            # CREATE SCHEMA IF NOT EXISTS can still collide: one at a time per environment.
            f"SELECT pg_advisory_xact_lock(hashtext('dvmirror schema ' || '{environment}'))",
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(environment)}",
            f"CREATE TABLE IF NOT EXISTS {self.table_ref(environment, table)} ({', '.join(parts)})",
            self._commit_seq_index(environment, table),
        ]

    def _commit_seq_index(self, environment: str, table: str) -> str:
        """The index that makes `WHERE _dv_commit_seq > :last` (and the page's count) cheap;
        named within PostgreSQL's 63 characters."""
        digest = hashlib.sha256(table.encode()).hexdigest()[:8]
        index = quote_ident(f"ix_{table[:40]}_{digest}_commit_seq")
        return (
            f"CREATE INDEX IF NOT EXISTS {index} ON {self.table_ref(environment, table)} "
            f"({quote_ident(COMMIT_SEQ_COLUMN)})"
        )

    def add_commit_seq(self, environment: str, table: str) -> list[str]:
        """A mirror made before the change feed: its `_dv_commit_seq` column and index."""
        target = self.table_ref(environment, table)
        return [
            f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS "
            f"{quote_ident(COMMIT_SEQ_COLUMN)} bigint",
            self._commit_seq_index(environment, table),
        ]

    def add_column(self, environment: str, table: str, column: str, sql_type: SqlType) -> str:
        target = self.table_ref(environment, table)
        return f"ALTER TABLE {target} ADD COLUMN {quote_ident(column)} {COLUMN_TYPE[sql_type]}"

    def rename_column(self, environment: str, table: str, old: str, new: str) -> str:
        target = self.table_ref(environment, table)
        return f"ALTER TABLE {target} RENAME COLUMN {quote_ident(old)} TO {quote_ident(new)}"

    async def existing_columns(
        self, conn: AsyncConnection, environment: str, table: str
    ) -> list[str] | None:
        result = await conn.exec_driver_sql(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            (environment, table),
        )
        names = [str(row[0]) for row in result.fetchall()]
        return names or None

    def writer(
        self,
        environment: str,
        table: str,
        columns: Sequence[tuple[str, SqlType]],
        removed: Sequence[str],
        *,
        soft: bool,
        overflow: frozenset[str] = frozenset(),
    ) -> PostgresTable:
        return PostgresTable.build(
            environment, table, columns, removed, soft=soft, overflow=overflow
        )

    async def plan_overflow(self, conn: AsyncConnection, request: WideRequest) -> Overflow:
        return await plan_wide(conn, request)

    def same_storage(self, old: str, new: SqlType) -> bool:
        return False

    def classify(self, exc: BaseException) -> Failure:
        state = sqlstate(exc) or ""
        if state.startswith(_DATA_CLASSES):
            return "data"
        if state.startswith(_BUSY_CLASSES):
            return "busy"
        if state.startswith("54"):
            return "limit"
        if state.startswith(_TRANSIENT_CLASSES) or isinstance(exc, sa_exc.InterfaceError | OSError):
            return "transient"
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return "transient"
        return "store"


POSTGRES = PostgresDialect()
