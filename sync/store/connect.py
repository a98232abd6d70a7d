"""Create the async engine of a store URL through its dialect (store.dialects).

SQLite: WAL, a busy timeout, private files (0600) and one writer per database file (the write
turn, store.dialects.sqlite_turns). PostgreSQL: a connection pool whose search_path is the
control schema `dvmirror`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.dialects import dialect_for
from sync.store.dialects.sqlite import SQLITE_BUSY_TIMEOUT_MS, prepare_sqlite_file, sqlite_path
from sync.store.dialects.sqlite_turns import StoreEngine, WriteTurn, write_turn

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "StoreEngine",
    "WriteTurn",
    "create_engine",
    "prepare_sqlite_file",
    "sqlite_path",
    "write_turn",
]


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for the store URL, set up by its dialect."""
    return dialect_for(url).create_engine(url, **kwargs)
