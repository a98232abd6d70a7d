"""The SQLite store: STRICT mirror tables `<environment>__<table>`, one writer per file.

Storage (STRICT tables, so SQLite itself refuses a string in an INTEGER/REAL column): text,
uuid, numeric (exact decimal text), timestamp (`YYYY-MM-DDTHH:MM:SSZ`), date (`YYYY-MM-DD`),
choices (the Web API's `1,2,3`) → TEXT; integer, bigint, boolean (0/1) → INTEGER; float → REAL.
The logical type of every column is in dv_mirror_columns.sql_type.

A page's rows go in with one `executemany` of the upsert, whose only inlined literal is the
page's sync stamp; the row version is cut out of the raw ETag by SQLite.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sync.errors import ConfigError
from sync.store.dialects import Failure, Overflow, WideRequest, guid_order_text
from sync.store.dialects.sqlite_turns import StoreEngine
from sync.store.identifiers import quote_ident, stamp_literal
from sync.store.layout import (
    COMMIT_SEQ_COLUMN,
    DELETED_COLUMN,
    SYNCED_COLUMN,
    VERSION_COLUMN,
    SqlType,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
# A WAL that a long reader made grow is cut back to this size when SQLite next resets it (after
# a full checkpoint), instead of keeping its peak size on disk forever.
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# The page size of a new database file (an existing one keeps its own: SQLite cannot change it
# in WAL mode). Dataverse rows are wide (a 30-column row with its annotations is ~2 KB): twice
# the default of 4,096 bytes takes ~10% less CPU to upsert a page of 5,000 such rows.
PAGE_SIZE = 8192

STORAGE: dict[SqlType, str] = {
    "text": "TEXT",
    "uuid": "TEXT",
    "numeric": "TEXT",
    "timestamp": "TEXT",
    "date": "TEXT",
    "choices": "TEXT",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "boolean": "INTEGER",
    "float": "REAL",
}
# Multi-select choices were catalogued as text before they had a type of their own; SQLite keeps
# the same `1,2,3` text in the same column, so that is not a type change.
_SAME_STORAGE = {("text", "choices")}
_LOG_DELETIONS = (
    'INSERT INTO "_dv_deletions" '
    '("environment", "table", "id", "observed_at", "_dv_commit_seq", "reason") '
)


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def prepare_sqlite_file(path: Path) -> None:
    """Create the directory (0700) and an empty database file (0600) before SQLite opens it.

    An existing file is never opened here: closing any descriptor of the database file drops
    every POSIX lock this process holds on it, SQLite's too (fcntl locks belong to the process,
    not to the descriptor). A process whose connections are open (the demo's daemon, beside an
    engine of its own) would lose the shared lock that tells other processes it is there; the
    next reader elsewhere to close would take itself for the last connection, checkpoint past
    the writer and delete the -wal and -shm files under it: commits no other process sees,
    torn pages ("database disk image is malformed") for readers.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        if path.is_dir() or not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(
                f"store.url: cannot write the database file {path}: it is a directory or not "
                "readable and writable by this user; check daemon.data_dir or store.url"
            ) from None
        return
    except OSError as exc:
        raise ConfigError(
            f"store.url: cannot create the database file {path}: {exc.strerror or exc}; "
            "check daemon.data_dir or store.url"
        ) from None
    os.close(fd)  # a new file: no connection of this process can hold a lock on it yet


def _pragmas(busy_timeout_ms: int, dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL: only a new, empty file takes it
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.close()


def mirror_table_name(environment: str, table: str) -> str:
    return f"{environment}__{table}"


def create_table_sql(name: str, primary_key: str, columns: Sequence[tuple[str, SqlType]]) -> str:
    parts = [f"{quote_ident(primary_key)} TEXT NOT NULL PRIMARY KEY"]
    parts += [f"{quote_ident(c)} {STORAGE[t]}" for c, t in columns if c != primary_key]
    parts += [
        f"{quote_ident(VERSION_COLUMN)} INTEGER",
        f"{quote_ident(SYNCED_COLUMN)} TEXT NOT NULL",
        f"{quote_ident(DELETED_COLUMN)} TEXT",
        f"{quote_ident(COMMIT_SEQ_COLUMN)} INTEGER",
    ]
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(name)} ({', '.join(parts)}) STRICT"


def commit_seq_index_sql(name: str) -> str:
    """The index that makes `WHERE _dv_commit_seq > :last` (and the page's count) cheap."""
    index = quote_ident(f"ix_{name}{COMMIT_SEQ_COLUMN}")
    return (
        f"CREATE INDEX IF NOT EXISTS {index} ON {quote_ident(name)} "
        f"({quote_ident(COMMIT_SEQ_COLUMN)})"
    )


async def _many(conn: AsyncConnection, sql: str, params: Sequence[tuple[Any, ...]]) -> int:
    if not params:
        return 0
    result = await conn.exec_driver_sql(sql, list(params))
    return max(result.rowcount, 0)


@dataclass(frozen=True)
class SqliteTable:
    """The prepared SQL of one SQLite mirror table for one column layout."""

    environment: str
    table: str
    mirror: str
    primary_key: str
    upsert_template: str
    soft: bool

    @classmethod
    def build(
        cls,
        environment: str,
        table: str,
        primary_key: str,
        columns: Sequence[str],
        removed: Sequence[str] = (),
        *,
        soft: bool,
    ) -> SqliteTable:
        """`columns` in row-tuple order (primary key first, then the raw ETag, see RowShaper).

        `removed` columns are written NULL. The page's sync stamp is inlined as a literal (the
        same for every row of the page), the row version is cut out of the ETag by SQLite.
        """
        mirror = mirror_table_name(environment, table)
        names = [*columns, VERSION_COLUMN, SYNCED_COLUMN, DELETED_COLUMN, *removed]
        values = ["?"] * len(columns) + ["CAST(substr(?, 4) AS INTEGER)", "{stamp}"]
        values += ["NULL"] * (1 + len(removed))
        updates = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in names[1:])
        # The commit number changes only when the stored values do (store.commits).
        kept = [quote_ident(c) for c in names[1:] if c != SYNCED_COLUMN]
        old = ", ".join(f"{quote_ident(mirror)}.{c}" for c in kept)
        new = ", ".join(f"excluded.{c}" for c in kept)
        seq = quote_ident(COMMIT_SEQ_COLUMN)
        names.append(COMMIT_SEQ_COLUMN)
        values.append("{seq}")
        updates += (
            f", {seq} = CASE WHEN ({old}) IS NOT ({new}) THEN excluded.{seq} "
            f"ELSE {quote_ident(mirror)}.{seq} END"
        )
        column_list, value_list = ", ".join(map(quote_ident, names)), ", ".join(values)
        upsert = (
            f"INSERT INTO {quote_ident(mirror)} ({column_list}) VALUES ({value_list}) "  # noqa: S608
            f"ON CONFLICT ({quote_ident(primary_key)}) DO UPDATE SET {updates}"
        )
        return cls(environment, table, mirror, primary_key, upsert, soft)

    def upsert_sql(self, stamp: str, seq: int) -> str:
        sql = self.upsert_template.replace("{stamp}", stamp_literal(stamp), 1)
        return sql.replace("{seq}", str(int(seq)), 1)

    @property
    def _target(self) -> str:
        return quote_ident(self.mirror)

    async def upsert(
        self, conn: AsyncConnection, rows: Sequence[tuple[Any, ...]], stamp: str, seq: int
    ) -> int:
        return await _many(conn, self.upsert_sql(stamp, seq), rows)

    async def changed(self, conn: AsyncConnection, seq: int) -> int:
        sql = f"SELECT count(*) FROM {self._target} WHERE {quote_ident(COMMIT_SEQ_COLUMN)} = ?"  # noqa: S608
        return int((await conn.exec_driver_sql(sql, (seq,))).scalar_one())

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
        key, deleted = quote_ident(self.primary_key), quote_ident(DELETED_COLUMN)
        alive = f" AND {deleted} IS NULL" if self.soft else ""
        # Logged only where a live row goes (an unknown or already deleted id changes nothing).
        live = f"FROM {self._target} WHERE {key} = ?{alive}"
        log = _LOG_DELETIONS + f"SELECT ?, ?, {key}, ?, ?, ? {live}"
        env, table = self.environment, self.table
        await _many(conn, log, [(env, table, observed_at, seq, reason, i) for i in ids])
        if self.soft:
            mark = f"{deleted} = ?, {quote_ident(COMMIT_SEQ_COLUMN)} = {int(seq)}"
            sql = f"UPDATE {self._target} SET {mark} WHERE {key} = ?{alive}"  # noqa: S608
            return await _many(conn, sql, [(observed_at, i) for i in ids])
        return await _many(conn, f"DELETE FROM {self._target} WHERE {key} = ?", [(i,) for i in ids])  # noqa: S608

    async def touch(self, conn: AsyncConnection, keys: Sequence[str], stamp: str) -> None:
        key, synced = quote_ident(self.primary_key), quote_ident(SYNCED_COLUMN)
        sql = f"UPDATE {self._target} SET {synced} = ? WHERE {key} = ?"  # noqa: S608
        await _many(conn, sql, [(stamp, k) for k in keys])

    async def sweep(self, conn: AsyncConnection, before: str, observed_at: str, seq: int) -> int:
        key = quote_ident(self.primary_key)
        synced, deleted = quote_ident(SYNCED_COLUMN), quote_ident(DELETED_COLUMN)
        alive = f" AND {deleted} IS NULL" if self.soft else ""
        gone = f"SELECT ?, ?, {key}, ?, ?, NULL FROM {self._target} WHERE {synced} < ?{alive}"  # noqa: S608
        await conn.exec_driver_sql(
            _LOG_DELETIONS + gone, (self.environment, self.table, observed_at, seq, before)
        )
        if self.soft:
            mark = f"{deleted} = ?, {quote_ident(COMMIT_SEQ_COLUMN)} = {int(seq)}"
            apply = f"UPDATE {self._target} SET {mark} WHERE {synced} < ?{alive}"  # noqa: S608
            result = await conn.exec_driver_sql(apply, (observed_at, before))
        else:
            apply = f"DELETE FROM {self._target} WHERE {synced} < ?"  # noqa: S608
            result = await conn.exec_driver_sql(apply, (before,))
        return max(result.rowcount, 0)

    async def count(self, conn: AsyncConnection) -> int:
        alive = f" WHERE {quote_ident(DELETED_COLUMN)} IS NULL" if self.soft else ""
        sql = f"SELECT count(*) FROM {self._target}{alive}"  # noqa: S608
        return int((await conn.exec_driver_sql(sql)).scalar_one())


def database_busy(exc: BaseException) -> bool:
    """Whether a failure is SQLite's "database is locked" (SQLITE_BUSY/SQLITE_LOCKED)."""
    if not isinstance(exc, sa_exc.OperationalError):
        return False
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _BUSY_CODES:
            return True
    detail = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
    return "locked" in detail or "busy" in detail


def disk_full(exc: BaseException) -> bool:
    """Whether a failure is SQLite's "database or disk is full" (SQLITE_FULL): no space left on
    the filesystem of the database, its WAL or its temporary files."""
    error = getattr(exc, "orig", None) or exc
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(error)


class SqliteDialect:
    name = "sqlite"

    def create_engine(
        self, url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any
    ) -> AsyncEngine:
        """WAL, a busy timeout, private files, and write turns per database file."""
        path = sqlite_path(url)
        if path is None:
            return create_async_engine(url, **kwargs)
        prepare_sqlite_file(path)
        old_umask = os.umask(0o077)  # WAL and SHM files must be private too
        try:
            engine: AsyncEngine = StoreEngine(create_async_engine(url, **kwargs).sync_engine)
        finally:
            os.umask(old_umask)
        event.listen(engine.sync_engine, "connect", partial(_pragmas, busy_timeout_ms))
        return engine

    def mirror_name(self, environment: str, table: str) -> str:
        return mirror_table_name(environment, table)

    def guid_order(self, column: str) -> str:
        return guid_order_text(f"lower({column})")

    def table_ref(self, environment: str, table: str) -> str:
        return quote_ident(mirror_table_name(environment, table))

    def create_table(
        self,
        environment: str,
        table: str,
        primary_key: str,
        columns: Sequence[tuple[str, SqlType]],
    ) -> list[str]:
        name = mirror_table_name(environment, table)
        return [create_table_sql(name, primary_key, columns), commit_seq_index_sql(name)]

    def add_commit_seq(self, environment: str, table: str) -> list[str]:
        """A mirror made before the change feed: its `_dv_commit_seq` column and index."""
        name = mirror_table_name(environment, table)
        column = f"ALTER TABLE {quote_ident(name)} ADD COLUMN {quote_ident(COMMIT_SEQ_COLUMN)}"
        return [f"{column} INTEGER", commit_seq_index_sql(name)]

    def add_column(self, environment: str, table: str, column: str, sql_type: SqlType) -> str:
        target = self.table_ref(environment, table)
        return f"ALTER TABLE {target} ADD COLUMN {quote_ident(column)} {STORAGE[sql_type]}"

    def rename_column(self, environment: str, table: str, old: str, new: str) -> str:
        target = self.table_ref(environment, table)
        return f"ALTER TABLE {target} RENAME COLUMN {quote_ident(old)} TO {quote_ident(new)}"

    async def existing_columns(
        self, conn: AsyncConnection, environment: str, table: str
    ) -> list[str] | None:
        result = await conn.exec_driver_sql(
            f"PRAGMA table_info({self.table_ref(environment, table)})"
        )
        names = [str(row._mapping["name"]) for row in result.fetchall()]
        return names or None

    def writer(
        self,
        environment: str,
        table: str,
        columns: Sequence[tuple[str, SqlType]],
        removed: Sequence[str],
        *,
        soft: bool,
        overflow: frozenset[str] = frozenset(),  # never: a SQLite row has no width limit
    ) -> SqliteTable:
        names = [name for name, _ in columns]
        return SqliteTable.build(environment, table, names[0], names, removed, soft=soft)

    async def plan_overflow(self, conn: AsyncConnection, request: WideRequest) -> Overflow:
        return Overflow()  # a SQLite row holds up to 1 GB; the table up to 2,000 columns

    def same_storage(self, old: str, new: SqlType) -> bool:
        return (old, new) in _SAME_STORAGE

    def classify(self, exc: BaseException) -> Failure:
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.ProgrammingError | sa_exc.InterfaceError):
            return "data"
        if isinstance(exc, OverflowError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
            return "data"
        if database_busy(exc):
            return "busy"
        if disk_full(exc):
            return "full"
        return "store"


SQLITE = SqliteDialect()
