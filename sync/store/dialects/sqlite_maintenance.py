"""Keeping an SQLite store's write-ahead log small: checkpoint and truncate it.

SQLite's automatic checkpoint (every 1000 pages) copies the WAL into the database but cannot
start the WAL over while a reader (a data team's long transaction) still reads an old snapshot,
so the WAL grows for as long as that reader stays. Once the reader is gone, the pragma
`journal_size_limit` (store.dialects.sqlite) cuts the file back at the next write;
`checkpoint_wal` does it at once: the daemon calls it when the WAL has grown past a bound and
once more on a clean shutdown, before the engine is disposed (the last connection to close then
removes the -wal and -shm files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.dialects.sqlite import sqlite_path
from sync.store.dialects.sqlite_turns import write_turn

WAL_CHECKPOINT_BOUND = 64 * 1024 * 1024  # bytes of -wal past which the daemon checkpoints


@dataclass(frozen=True)
class WalCheckpoint:
    """The outcome of `PRAGMA wal_checkpoint(TRUNCATE)`."""

    complete: bool  # False: a reader or writer kept part of the WAL (busy); try again later
    wal_bytes_before: int
    wal_bytes_after: int


def wal_file(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def wal_size(database: Path) -> int:
    """Bytes in the database's -wal file (0 when there is none)."""
    try:
        return wal_file(database).stat().st_size
    except FileNotFoundError:
        return 0


def wal_needs_checkpoint(engine: AsyncEngine, bound: int = WAL_CHECKPOINT_BOUND) -> bool:
    """Whether the store's WAL has grown past `bound` bytes (always False for PostgreSQL)."""
    database = sqlite_path(engine.url.render_as_string(hide_password=False))
    return database is not None and wal_size(database) > bound


async def checkpoint_wal(engine: AsyncEngine) -> WalCheckpoint | None:
    """Copy the whole WAL into the database and truncate it to zero bytes; None for a store
    that is not an SQLite file. Not busy-waiting: with a reader on an old snapshot it copies
    what it can and reports `complete=False` (call it again later)."""
    database = sqlite_path(engine.url.render_as_string(hide_password=False))
    if database is None:
        return None
    before = wal_size(database)
    # In the file's write turn, so no page commit of ours is in between; outside a transaction,
    # which the pragma needs.
    async with write_turn(engine).hold(), engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await auto.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")).one()
    return WalCheckpoint(
        complete=int(row[0]) == 0, wal_bytes_before=before, wal_bytes_after=wal_size(database)
    )
