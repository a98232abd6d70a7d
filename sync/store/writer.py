"""The one-transaction page commit, and its retries while another process holds the database.

Everything dialect-specific (table names, DDL, the statements of a page) is in store.dialects;
this module runs them: a page's upserts, deletions, touches, sweep and count, then the table's
checkpoint, all in one transaction (`commit_page`).

Writes take turns per database file in SQLite (store.dialects.sqlite_turns), so this process
never fights itself for SQLite's write lock. Another process can hold it (a data team's long write
transaction), or PostgreSQL can roll a transaction back (serialization failure, deadlock): then
`commit_page` runs the whole transaction again (rows and checkpoint, the counts recomputed, so
nothing is counted twice) after a jittered exponential backoff, logging a warning each time, for
up to `COMMIT_PATIENCE` seconds; only then does it give up with a StoreError.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
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
from sync.store.commits import record_commit, take_number
from sync.store.dialects import Dialect, TableWriter, dialect_for
from sync.store.dialects.postgres import sqlstate
from sync.store.dialects.sqlite import SQLITE
from sync.store.dialects.sqlite import database_busy as sqlite_busy
from sync.store.identifiers import quote_ident

__all__ = [
    "PageCounts",
    "PageWrite",
    "commit_page",
    "database_busy",
    "database_of",
    "execute_ddl",
    "quote_ident",
    "write_page",
]

log = get_logger("dvmirror.store")
T = TypeVar("T")

# How long a page commit (or a table's DDL) keeps retrying a database that another process holds
# locked before it fails with a StoreError; each SQLite attempt itself first waits out the busy
# timeout (store.dialects.sqlite.SQLITE_BUSY_TIMEOUT_MS).
COMMIT_PATIENCE = 600.0
BUSY_BACKOFF_INITIAL = 0.5  # seconds; doubles per attempt, full jitter
BUSY_BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class PageWrite:
    """Everything one page changes in the mirror."""

    rows: Sequence[tuple[Any, ...]] = ()
    deleted_ids: Sequence[str] = ()
    keys_seen: Sequence[str] = ()
    sweep_before: str | None = None  # ISO text comparable with _dv_synced_at
    synced_at: str = ""
    count_rows: bool = False
    deletion_reason: str | None = None  # `_dv_deletions.reason`: None for the sync itself


@dataclass(frozen=True)
class PageCounts:
    upserted: int
    deleted: int
    row_count: int | None
    # The change feed (store.commits): rows the page really changed, and its commit number
    # (None when it changed nothing and took no number).
    changed: int = 0
    commit_seq: int | None = None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).splitlines()[0]


def database_of(engine: AsyncEngine) -> str:
    return engine.url.database or engine.url.render_as_string(hide_password=True)


@contextmanager
def map_store_errors(
    table: str, dialect: Dialect | None = None, *, database: str = "", environment: str = ""
) -> Iterator[None]:
    """Translate store failures by what happens next: a value the store refused →
    HostileResponseError (the table parks), busy or a broken connection → TransientError,
    a full disk → StoreError naming the database (the table parks and retries with backoff, so it
    resumes once space is freed), anything else → StoreError."""
    try:
        yield
    except (
        sa_exc.SQLAlchemyError,
        OverflowError,
        sqlite3.ProgrammingError,
        sqlite3.InterfaceError,
    ) as exc:
        kind = (dialect or SQLITE).classify(exc)
        detail = _first_line(exc)
        if kind == "data":
            raise HostileResponseError(
                f"table {table}: the store refused a value ({detail}); nothing from the page was "
                "written",
                table=table,
            ) from exc
        if kind in ("busy", "transient"):
            raise TransientError(
                f"table {table}: the database is busy or unreachable ({detail})", table=table
            ) from exc
        if kind == "full":
            where = f"environment {environment}, table {table}" if environment else f"table {table}"
            raise StoreError(
                f"{where}: disk full at {database or 'the store'} ({detail}): free space on its "
                "filesystem; syncing resumes by itself. Nothing from the page was written",
                environment=environment or None,
                table=table,
            ) from exc
        if kind == "limit":
            raise StoreError(
                f"table {table}: the store cannot hold this table ({detail}): PostgreSQL keeps a "
                "row's fixed-width values within 8 KB and a table within 1,600 columns; mirror "
                f"fewer columns with [tenants.environments.table_options.{table}] columns = "
                "[...]. Nothing from the page was written",
                environment=environment or None,
                table=table,
            ) from exc
        if isinstance(exc, sa_exc.DBAPIError):
            raise StoreError(f"table {table}: the store failed: {detail}", table=table) from exc
        raise StoreError(
            f"table {table}: the store failed: {exc.__class__.__name__}", table=table
        ) from exc


async def write_page(
    conn: AsyncConnection, writer: TableWriter, page: PageWrite, *, observed_at: str
) -> PageCounts:
    """Apply one page inside the caller's transaction (see `commit_page`).

    A delta page can hold a row's tombstone and the row itself (deleted, then created again
    with the same id): the rows of a page are the source's current state, so the row wins and
    its tombstone is not applied."""
    # The change feed: a page that may change rows takes its environment's next commit number
    # first (on PostgreSQL under the environment's lock, so numbers follow commit order).
    may_change = bool(page.rows or page.deleted_ids or page.sweep_before is not None)
    seq = await take_number(conn, writer.environment) if may_change else 0
    upserted = await writer.upsert(conn, page.rows, page.synced_at, seq)
    changed = await writer.changed(conn, seq) if page.rows else 0
    deleted_ids = page.deleted_ids
    if deleted_ids and page.rows:
        alive = {str(row[0]).lower() for row in page.rows}
        deleted_ids = [i for i in deleted_ids if i.lower() not in alive]
    deleted = await writer.delete(conn, deleted_ids, observed_at, seq, page.deletion_reason)
    await writer.touch(conn, page.keys_seen, page.synced_at)
    if page.sweep_before is not None:
        deleted += await writer.sweep(conn, page.sweep_before, observed_at, seq)
    row_count = await writer.count(conn) if page.count_rows else None
    if not (changed or deleted):  # nothing really changed: the number is not taken
        return PageCounts(upserted, deleted, row_count)
    await record_commit(
        conn,
        environment=writer.environment,
        seq=seq,
        table=writer.table,
        committed_at=datetime.fromisoformat(observed_at),
        upserts=changed,
        deletes=deleted,
    )
    return PageCounts(upserted, deleted, row_count, changed, seq)


def database_busy(exc: BaseException) -> bool:
    """Whether the whole transaction should simply run again: SQLite's "database is locked"
    (another process writes), PostgreSQL's serialization failure or deadlock (class 40)."""
    return sqlite_busy(exc) or (sqlstate(exc) or "").startswith("40")


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
    writer: TableWriter,
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
        async with engine.begin() as conn:  # SQLite: waits for the file's write turn
            counts = await write_page(conn, writer, page, observed_at=observed_at)
            for statement in checkpoint(counts):
                await conn.execute(statement)
        return counts

    with map_store_errors(
        writer.table,
        dialect_for(engine),
        database=database_of(engine),
        environment=writer.environment,
    ):
        return await patiently(
            attempt, environment=writer.environment, table=writer.table, patience=patience
        )


async def write_control(
    engine: AsyncEngine,
    statements: Sequence[Executable],
    *,
    environment: str,
    table: str,
    patience: float = COMMIT_PATIENCE,
) -> Any:
    """Run control-table statements in one transaction, run again while another process holds
    the database (like a page); the last statement's result (rowcount, inserted key)."""

    async def attempt() -> Any:
        last = None
        async with engine.begin() as conn:
            for statement in statements:
                last = await conn.execute(statement)
        return last

    with map_store_errors(
        table, dialect_for(engine), database=database_of(engine), environment=environment
    ):
        return await patiently(attempt, environment=environment, table=table, patience=patience)


async def execute_ddl(
    engine: AsyncEngine,
    statements: Sequence[str | Executable],
    *,
    table: str,
    environment: str = "",
    patience: float = COMMIT_PATIENCE,
) -> None:
    """Run DDL and catalogue changes in one transaction (DDL is transactional in both SQLite
    and PostgreSQL)."""

    async def attempt() -> None:
        async with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # pysqlite opens a transaction only before INSERT/UPDATE/DELETE: DDL first would
                # run, and commit, on its own (a kill after CREATE TABLE, before the catalogue,
                # left a table no later start could adopt). BEGIN makes the whole list atomic.
                await conn.exec_driver_sql("BEGIN")
            for statement in statements:
                if isinstance(statement, str):
                    await conn.exec_driver_sql(statement)
                else:
                    await conn.execute(statement)

    with map_store_errors(
        table, dialect_for(engine), database=database_of(engine), environment=environment
    ):
        await patiently(attempt, environment=environment, table=table, patience=patience)
