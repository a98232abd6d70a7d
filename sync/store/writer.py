"""SQLite statements for the mirror tables, and the one-transaction page commit.

This is the dialect branch point: every statement that only works in SQLite lives here (STRICT
tables, `INSERT … ON CONFLICT DO UPDATE` via `executemany`, `PRAGMA table_info`). A PostgreSQL
writer (schema `<environment>`, table `<table>`, real numeric/timestamptz/uuid types) implements
the same functions.

Storage in SQLite (STRICT tables, so SQLite itself refuses a string in an INTEGER/REAL column):
text, uuid, numeric (exact decimal text), timestamp (`YYYY-MM-DDTHH:MM:SSZ`), date (`YYYY-MM-DD`)
→ TEXT; integer, bigint, boolean (0/1) → INTEGER; float → REAL. The logical type of every
column is in dv_mirror_columns.sql_type.

Identifiers reach SQL only through `quote_ident()`, which refuses anything but a safe name;
that is why the f-string statements below carry `noqa: S608` (no value is ever interpolated).

Writes take turns per database file (store.connect.StoreEngine), so this process never fights
itself for SQLite's write lock. Another process can hold it (a data team's long write
transaction): then SQLite's busy timeout runs out, the transaction is rolled back, and
`commit_page` runs the whole transaction again (rows and checkpoint, the counts recomputed, so
nothing is counted twice) after a jittered exponential backoff, logging a warning each time,
for up to `COMMIT_PATIENCE` seconds; only then does it give up with a StoreError.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from sync.errors import HostileResponseError, StoreError, TransientError
from sync.logs import get_logger
from sync.store.layout import DELETED_COLUMN, SYNCED_COLUMN, VERSION_COLUMN, SqlType

log = get_logger("dvmirror.store")
T = TypeVar("T")

# How long a page commit (or a table's DDL) keeps retrying a database that another process holds
# locked before it fails with a StoreError; each attempt itself first waits out SQLite's busy
# timeout (store.connect.SQLITE_BUSY_TIMEOUT_MS).
COMMIT_PATIENCE = 600.0
BUSY_BACKOFF_INITIAL = 0.5  # seconds; doubles per attempt, full jitter
BUSY_BACKOFF_MAX = 30.0
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

SAFE_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,254}")
STORAGE: dict[SqlType, str] = {
    "text": "TEXT",
    "uuid": "TEXT",
    "numeric": "TEXT",
    "timestamp": "TEXT",
    "date": "TEXT",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "boolean": "INTEGER",
    "float": "REAL",
}
_LOG_DELETION = (
    'INSERT INTO "_dv_deletions" ("environment", "table", "id", "observed_at") VALUES (?, ?, ?, ?)'
)


def quote_ident(name: str) -> str:
    """`"name"` for a safe identifier; anything else is refused before it reaches SQL."""
    if not isinstance(name, str) or not SAFE_IDENT.fullmatch(name):
        raise HostileResponseError(f"{str(name)[:80]!r} is not a safe SQL identifier")
    return f'"{name}"'


def mirror_table_name(environment: str, table: str) -> str:
    """SQLite: `<environment>__<table>` (PostgreSQL: schema `<environment>`, table `<table>`)."""
    return f"{environment}__{table}"


def create_table_sql(name: str, primary_key: str, columns: Sequence[tuple[str, SqlType]]) -> str:
    parts = [f"{quote_ident(primary_key)} TEXT NOT NULL PRIMARY KEY"]
    parts += [f"{quote_ident(c)} {STORAGE[t]}" for c, t in columns if c != primary_key]
    parts += [
        f"{quote_ident(VERSION_COLUMN)} INTEGER",
        f"{quote_ident(SYNCED_COLUMN)} TEXT NOT NULL",
        f"{quote_ident(DELETED_COLUMN)} TEXT",
    ]
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(name)} ({', '.join(parts)}) STRICT"


def add_column_sql(name: str, column: str, sql_type: SqlType) -> str:
    return f"ALTER TABLE {quote_ident(name)} ADD COLUMN {quote_ident(column)} {STORAGE[sql_type]}"


def rename_column_sql(name: str, old: str, new: str) -> str:
    return f"ALTER TABLE {quote_ident(name)} RENAME COLUMN {quote_ident(old)} TO {quote_ident(new)}"


async def existing_columns(conn: AsyncConnection, name: str) -> list[str] | None:
    """Column names of a mirror table, or None when it does not exist."""
    result = await conn.exec_driver_sql(f"PRAGMA table_info({quote_ident(name)})")
    names = [str(row._mapping["name"]) for row in result.fetchall()]
    return names or None


STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{6}Z")


def stamp_literal(stamp: str) -> str:
    """A `_dv_synced_at` value as an SQL literal; only our own fixed-format stamps pass."""
    if not STAMP.fullmatch(stamp):
        raise ValueError(f"{stamp!r} is not a sync stamp")
    return f"'{stamp}'"


@dataclass(frozen=True)
class TableStatements:
    """The prepared SQL of one mirror table for one column layout."""

    environment: str
    table: str
    mirror: str
    primary_key: str
    upsert_template: str
    delete: str
    soft_delete: str
    touch: str
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
    ) -> TableStatements:
        """`columns` in row-tuple order (primary key first, then the raw ETag, see RowShaper).

        `removed` columns are written NULL. The page's sync stamp is inlined as a literal (the
        same for every row of the page), the row version is cut out of the ETag by SQLite.
        """
        mirror = mirror_table_name(environment, table)
        target = quote_ident(mirror)
        key = quote_ident(primary_key)
        names = [*columns, VERSION_COLUMN, SYNCED_COLUMN, DELETED_COLUMN, *removed]
        values = ["?"] * len(columns) + ["CAST(substr(?, 4) AS INTEGER)", "{stamp}"]
        values += ["NULL"] * (1 + len(removed))
        updates = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in names[1:])
        column_list, value_list = ", ".join(map(quote_ident, names)), ", ".join(values)
        upsert = (
            f"INSERT INTO {target} ({column_list}) VALUES ({value_list}) "  # noqa: S608
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
        )
        synced, deleted = quote_ident(SYNCED_COLUMN), quote_ident(DELETED_COLUMN)
        return cls(
            environment=environment,
            table=table,
            mirror=mirror,
            primary_key=primary_key,
            upsert_template=upsert,
            delete=f"DELETE FROM {target} WHERE {key} = ?",  # noqa: S608
            soft_delete=f"UPDATE {target} SET {deleted} = ? WHERE {key} = ? AND {deleted} IS NULL",  # noqa: S608
            touch=f"UPDATE {target} SET {synced} = ? WHERE {key} = ?",  # noqa: S608
            soft=soft,
        )

    def upsert(self, stamp: str) -> str:
        return self.upsert_template.replace("{stamp}", stamp_literal(stamp), 1)

    def sweep(self) -> tuple[str, str]:
        """(log, apply) statements that remove rows not seen since a full pass started."""
        target, key = quote_ident(self.mirror), quote_ident(self.primary_key)
        synced, deleted = quote_ident(SYNCED_COLUMN), quote_ident(DELETED_COLUMN)
        alive = f" AND {deleted} IS NULL" if self.soft else ""
        gone = f"SELECT ?, ?, {key}, ? FROM {target} WHERE {synced} < ?{alive}"  # noqa: S608
        log = 'INSERT INTO "_dv_deletions" ("environment", "table", "id", "observed_at") ' + gone
        if self.soft:
            return log, f"UPDATE {target} SET {deleted} = ? WHERE {synced} < ?{alive}"  # noqa: S608
        return log, f"DELETE FROM {target} WHERE {synced} < ?"  # noqa: S608

    def count(self) -> str:
        alive = f" WHERE {quote_ident(DELETED_COLUMN)} IS NULL" if self.soft else ""
        return f"SELECT count(*) FROM {quote_ident(self.mirror)}{alive}"  # noqa: S608


@dataclass(frozen=True)
class PageWrite:
    """Everything one page changes in the mirror."""

    rows: Sequence[tuple[Any, ...]] = ()
    deleted_ids: Sequence[str] = ()
    keys_seen: Sequence[str] = ()
    sweep_before: str | None = None  # ISO text comparable with _dv_synced_at
    synced_at: str = ""
    count_rows: bool = False


@dataclass(frozen=True)
class PageCounts:
    upserted: int
    deleted: int
    row_count: int | None


@contextmanager
def map_store_errors(table: str) -> Iterator[None]:
    """Translate SQLite failures: bad data → HostileResponseError, locked → TransientError."""
    try:
        yield
    except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.InterfaceError) as exc:
        detail = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        raise HostileResponseError(
            f"table {table}: the store refused a value ({detail}); nothing from the page was "
            "written",
            table=table,
        ) from exc
    except (OverflowError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise HostileResponseError(
            f"table {table}: a value cannot be stored ({exc}); nothing from the page was written",
            table=table,
        ) from exc
    except sa_exc.OperationalError as exc:
        detail = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        if "locked" in detail or "busy" in detail:
            raise TransientError(
                f"table {table}: the database is busy ({detail})", table=table
            ) from exc
        raise StoreError(f"table {table}: the store failed: {detail}", table=table) from exc
    except sa_exc.SQLAlchemyError as exc:
        raise StoreError(
            f"table {table}: the store failed: {exc.__class__.__name__}", table=table
        ) from exc


async def _many(conn: AsyncConnection, sql: str, params: Sequence[tuple[Any, ...]]) -> int:
    if not params:
        return 0
    result = await conn.exec_driver_sql(sql, list(params))
    return max(result.rowcount, 0)


async def write_page(
    conn: AsyncConnection, statements: TableStatements, page: PageWrite, *, observed_at: str
) -> PageCounts:
    """Apply one page inside the caller's transaction (see `commit_page`)."""
    env, table = statements.environment, statements.table
    upserted = await _many(conn, statements.upsert(page.synced_at), page.rows)
    deleted = 0
    if page.deleted_ids:
        await _many(conn, _LOG_DELETION, [(env, table, i, observed_at) for i in page.deleted_ids])
        if statements.soft:
            deleted = await _many(
                conn, statements.soft_delete, [(observed_at, i) for i in page.deleted_ids]
            )
        else:
            deleted = await _many(conn, statements.delete, [(i,) for i in page.deleted_ids])
    await _many(conn, statements.touch, [(page.synced_at, k) for k in page.keys_seen])
    if page.sweep_before is not None:
        log, apply = statements.sweep()
        await conn.exec_driver_sql(log, (env, table, observed_at, page.sweep_before))
        params = (observed_at, page.sweep_before) if statements.soft else (page.sweep_before,)
        result = await conn.exec_driver_sql(apply, params)
        deleted += max(result.rowcount, 0)
    row_count = None
    if page.count_rows:
        row_count = int((await conn.exec_driver_sql(statements.count())).scalar_one())
    return PageCounts(upserted, deleted, row_count)


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


def _log_busy(environment: str, table: str) -> Any:
    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "store_busy_retry",
            environment=environment or None,
            table=table,
            attempt=state.attempt_number,
            waited=round(state.seconds_since_start or 0.0, 1),
            wait=round(state.next_action.sleep, 3) if state.next_action else None,
            error=str(getattr(error, "orig", None) or error).splitlines()[0],
            hint="another process holds a write transaction on the database",
        )

    return before_sleep


async def patiently(
    attempt: Callable[[], Awaitable[T]],
    *,
    environment: str,
    table: str,
    patience: float = COMMIT_PATIENCE,
) -> T:
    """Run `attempt` (one whole transaction) again while the database is locked by another
    process, for up to `patience` seconds; then a StoreError. Other failures pass through."""
    retrying = AsyncRetrying(
        retry=retry_if_exception(database_busy),
        wait=wait_random_exponential(multiplier=BUSY_BACKOFF_INITIAL, max=BUSY_BACKOFF_MAX),
        stop=stop_after_delay(patience),
        before_sleep=_log_busy(environment, table),
        reraise=True,
    )
    try:
        return await retrying(attempt)
    except sa_exc.OperationalError as exc:
        if not database_busy(exc):
            raise
        detail = str(exc.orig if exc.orig is not None else exc).splitlines()[0]
        where = f"environment {environment}, table {table}" if environment else f"table {table}"
        raise StoreError(
            f"{where}: the database stayed locked for more than "
            f"{patience:g}s ({detail}); another process holds a write transaction on it (a long "
            "BEGIN IMMEDIATE/EXCLUSIVE or write, e.g. an sqlite3 shell): end it. Nothing was "
            "written; the table resumes from its last checkpoint",
            environment=environment or None,
            table=table,
        ) from exc


async def commit_page(
    engine: AsyncEngine,
    statements: TableStatements,
    page: PageWrite,
    *,
    observed_at: str,
    checkpoint: Callable[[PageCounts], Sequence[Executable]],
    patience: float = COMMIT_PATIENCE,
) -> PageCounts:
    """One transaction: the page's upserts, deletions, deletion log and the table's checkpoint.

    `checkpoint(counts)` returns the control-table statements (dv_sync_state, dv_run_history,
    built by store.state) once the page's counts are known; they run in the same transaction.
    It must only build statements: when another process holds the database locked, the whole
    transaction is rolled back and run again (see `patiently`), calling it again.
    """

    async def attempt() -> PageCounts:
        async with engine.begin() as conn:  # waits for the file's write turn (store.connect)
            counts = await write_page(conn, statements, page, observed_at=observed_at)
            for statement in checkpoint(counts):
                await conn.execute(statement)
        return counts

    with map_store_errors(statements.table):
        return await patiently(
            attempt, environment=statements.environment, table=statements.table, patience=patience
        )


async def execute_ddl(
    engine: AsyncEngine,
    statements: Sequence[str | Executable],
    *,
    table: str,
    environment: str = "",
    patience: float = COMMIT_PATIENCE,
) -> None:
    """Run DDL and catalogue changes in one transaction (SQLite DDL is transactional)."""

    async def attempt() -> None:
        async with engine.begin() as conn:
            for statement in statements:
                if isinstance(statement, str):
                    await conn.exec_driver_sql(statement)
                else:
                    await conn.execute(statement)

    with map_store_errors(table):
        await patiently(attempt, environment=environment, table=table, patience=patience)
