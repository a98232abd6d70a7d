"""A new SQLite store gets 8 KB pages (store.dialects.sqlite.PAGE_SIZE); an existing one keeps
the page size it was made with, and works as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from sync.store.connect import create_engine
from sync.store.dialects.sqlite import PAGE_SIZE
from sync.store.migrate import upgrade


async def _page_size_and_mode(path: Path) -> tuple[int, str]:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            size = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar_one()
    finally:
        await engine.dispose()
    return int(size), str(mode)


async def test_a_new_store_gets_the_larger_pages(tmp_path: Path) -> None:
    assert PAGE_SIZE == 8192
    assert await _page_size_and_mode(tmp_path / "data" / "mirror.db") == (PAGE_SIZE, "wal")


async def test_an_existing_store_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # made by an earlier dvmirror: default pages, WAL
        old.execute("PRAGMA journal_mode=WAL")
        old.execute("CREATE TABLE kept (x INTEGER)")
        old.execute("INSERT INTO kept VALUES (42)")
    old.close()
    assert await _page_size_and_mode(path) == (4096, "wal")
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT x FROM kept").fetchall() == [(42,)]
    check.close()
