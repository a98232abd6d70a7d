"""The write path keeps up: one writer per database file, and patience with another process's lock.

Page commits from many tasks take turns (FIFO) instead of fighting for SQLite's write lock;
readers run beside them. A commit that finds the file locked by another process (a real second
process holding a write transaction) retries the whole transaction with backoff, writes the page
exactly once when the lock goes, and gives up with a StoreError, nothing half-written, when the
lock outlives its patience.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from structlog.testing import capture_logs

from sync.errors import StoreError
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine, write_turn
from sync.store.migrate import upgrade
from sync.store.mirror_tables import ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page, database_busy
from tests.test_writer import NOW, T0, checkpoint, rows, schema

KEYS = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(40)]

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")  # a data team's write transaction on the mirror file
conn.execute("CREATE TABLE IF NOT EXISTS team_notes (note TEXT)")
conn.execute("INSERT INTO team_notes VALUES ('looking at accounts')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.fixture(name="db")
async def _db(tmp_path: Path) -> Path:
    path = tmp_path / "mirror.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        await upgrade(engine)
        await state.ensure(engine, "env", "account", now=NOW)
        await ensure_mirror(engine, "env", schema(name="String"), soft=False, now=NOW)
    finally:
        await engine.dispose()
    return path


@asynccontextmanager
async def engine_on(db: Path, *, busy_timeout_ms: int) -> AsyncIterator[Any]:
    engine = create_engine(f"sqlite+aiosqlite:///{db}", busy_timeout_ms=busy_timeout_ms)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def lock_held_by_another_process(db: Path, seconds: float) -> AsyncIterator[Any]:
    """A second python process holding a write transaction on `db` for `seconds`."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(db), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert holder.stdout is not None
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.strip() == b"locked"
        yield holder
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()


def stored(db: Path) -> tuple[int, int, str | None]:
    with sqlite3.connect(db) as conn:
        pages, upserted, link = conn.execute(
            "SELECT pages, rows_upserted, next_link FROM dv_sync_state "
            "WHERE environment = 'env' AND table_name = 'account'"
        ).fetchone()
    return int(pages), int(upserted), link


async def test_concurrent_page_commits_take_turns_in_order(db: Path) -> None:
    """Many tasks commit at once with no busy timeout and no retry: none meets a locked
    database, and they commit in the order they asked (FIFO)."""
    async with engine_on(db, busy_timeout_ms=0) as engine:
        layout = await ensure_mirror(engine, "env", schema(name="String"), soft=False, now=NOW)
        order: list[int] = []

        async def one(number: int) -> PageCounts:
            cursor = TableState("backfill", next_link=f"https://x/{number}")

            def build(counts: PageCounts) -> list[Any]:
                order.append(number)
                return list(checkpoint(cursor)(counts))

            page = PageWrite(rows=[(KEYS[number], f"row {number}", 'W/"1"')], synced_at=T0)
            return await commit_page(
                engine, layout.writer, page, observed_at=T0, checkpoint=build, patience=0
            )

        results = await asyncio.gather(*(one(n) for n in range(len(KEYS))))
    assert [r.upserted for r in results] == [1] * len(KEYS)
    assert order == list(range(len(KEYS)))
    assert len(rows(engine)) == len(KEYS)
    assert stored(db) == (len(KEYS), len(KEYS), f"https://x/{len(KEYS) - 1}")


async def test_without_turns_the_same_commits_would_collide(db: Path) -> None:
    """The control: two write transactions that bypass the turn (connect() + begin()) do meet
    SQLite's lock, which is what the turns spare the page commits."""
    async with engine_on(db, busy_timeout_ms=0) as engine:

        async def bypass() -> None:
            async with engine.connect() as conn, conn.begin():
                await conn.execute(text("UPDATE dv_sync_state SET pages = pages + 1"))
                await asyncio.sleep(0.2)

        results = await asyncio.gather(bypass(), bypass(), return_exceptions=True)
    assert any(isinstance(r, sa_exc.OperationalError) and database_busy(r) for r in results)


async def test_readers_run_beside_a_writer_holding_its_turn(db: Path) -> None:
    """While a write transaction holds the turn, reads (status) go on; a second writer waits."""
    async with engine_on(db, busy_timeout_ms=0) as engine:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def writer() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE dv_sync_state SET pages = pages + 1"))
                entered.set()
                await release.wait()

        holding = asyncio.create_task(writer())
        await entered.wait()
        turn = write_turn(engine)
        assert turn.held
        loaded = await asyncio.wait_for(state.load(engine, "env", "account"), 5)
        assert loaded is not None
        waiting = asyncio.create_task(writer())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # queued behind the holder, not failing on SQLite's lock
        release.set()
        await asyncio.wait_for(asyncio.gather(holding, waiting), 5)
        assert not turn.held
    assert stored(db)[0] == 2


async def test_a_nested_write_by_the_holder_does_not_wait_for_itself(db: Path) -> None:
    """The turn is re-entrant for the task that holds it (no self-deadlock)."""
    async with engine_on(db, busy_timeout_ms=0) as engine, engine.begin() as outer:
        await outer.execute(text("SELECT 1"))
        async with engine.begin() as inner:
            await inner.execute(text("UPDATE dv_sync_state SET pages = pages"))
    assert stored(db)[0] == 0


async def test_two_engines_on_one_file_share_the_turn(db: Path) -> None:
    """The turn belongs to the database file, not to the engine object."""
    async with engine_on(db, busy_timeout_ms=0) as one, engine_on(db, busy_timeout_ms=0) as two:
        assert write_turn(one) is write_turn(two)


async def test_a_commit_waits_out_another_process_lock_and_writes_once(db: Path) -> None:
    """A second process holds a write transaction for a few seconds: the commit retries (logged,
    naming environment and table) and lands once the lock goes, rows and checkpoint exactly once."""
    async with engine_on(db, busy_timeout_ms=100) as engine:
        layout = await ensure_mirror(engine, "env", schema(name="String"), soft=False, now=NOW)
        cursor = TableState("backfill", next_link="https://x/next")
        page = PageWrite(rows=[(KEYS[0], "a", 'W/"5"'), (KEYS[1], "b", 'W/"6"')], synced_at=T0)
        async with lock_held_by_another_process(db, 3) as holder:
            started = time.monotonic()
            with capture_logs() as logs:
                counts = await commit_page(
                    engine,
                    layout.writer,
                    page,
                    observed_at=T0,
                    checkpoint=checkpoint(cursor),
                    patience=60,
                )
            waited = time.monotonic() - started
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"released"
    assert waited > 1.5
    retries = [e for e in logs if e["event"] == "store_busy_retry"]
    assert retries
    assert all(e["log_level"] == "warning" for e in retries)
    assert {(e["environment"], e["table"]) for e in retries} == {("env", "account")}
    assert counts.upserted == 2
    assert rows(engine) == [(KEYS[0], "a", 5, T0, None), (KEYS[1], "b", 6, T0, None)]
    assert stored(db) == (1, 2, "https://x/next")
    with sqlite3.connect(db) as conn:  # the other process's write is there too
        assert conn.execute("SELECT count(*) FROM team_notes").fetchone() == (1,)


async def test_a_lock_that_outlives_the_patience_fails_the_commit_with_nothing_written(
    db: Path,
) -> None:
    """The lock stays longer than the patience: a StoreError that says what to do, and neither
    the rows nor the checkpoint are written."""
    async with engine_on(db, busy_timeout_ms=100) as engine:
        layout = await ensure_mirror(engine, "env", schema(name="String"), soft=False, now=NOW)
        cursor = TableState("backfill", next_link="https://x/next")
        page = PageWrite(rows=[(KEYS[0], "a", 'W/"5"')], synced_at=T0)
        async with lock_held_by_another_process(db, 30):
            started = time.monotonic()
            with pytest.raises(StoreError) as failed:
                await commit_page(
                    engine,
                    layout.writer,
                    page,
                    observed_at=T0,
                    checkpoint=checkpoint(cursor),
                    patience=1,
                )
            assert time.monotonic() - started < 15
    message = failed.value.message
    assert "environment env, table account" in message
    assert "locked" in message
    assert "another process" in message
    assert (failed.value.environment, failed.value.table) == ("env", "account")
    assert rows(engine) == []
    assert stored(db) == (0, 0, None)


async def test_a_lock_met_mid_transaction_reruns_the_whole_page_without_double_counting(
    db: Path,
) -> None:
    """Locked at the checkpoint, after the rows: the transaction is rolled back and run again in
    full, the checkpoint rebuilt from the new attempt's counts, so counters move once."""
    async with engine_on(db, busy_timeout_ms=100) as engine:
        layout = await ensure_mirror(engine, "env", schema(name="String"), soft=False, now=NOW)
        cursor = TableState("backfill", next_link="https://x/next")
        calls: list[int] = []

        def flaky(counts: PageCounts) -> list[Any]:
            calls.append(counts.upserted)
            if len(calls) == 1:
                locked = sqlite3.OperationalError("database is locked")
                raise sa_exc.OperationalError("UPDATE dv_sync_state", {}, locked)
            return list(checkpoint(cursor)(counts))

        page = PageWrite(rows=[(KEYS[0], "a", 'W/"5"'), (KEYS[1], "b", 'W/"6"')], synced_at=T0)
        counts = await commit_page(
            engine, layout.writer, page, observed_at=T0, checkpoint=flaky, patience=30
        )
    assert calls == [2, 2]
    assert counts.upserted == 2
    assert len(rows(engine)) == 2
    assert stored(db) == (1, 2, "https://x/next")


def test_only_a_locked_database_is_retried() -> None:
    """SQLITE_BUSY/SQLITE_LOCKED are waited out; other operational failures are not."""

    def failure(message: str) -> sa_exc.OperationalError:
        return sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError(message))

    assert database_busy(failure("database is locked"))
    assert database_busy(failure("database table is locked"))
    assert not database_busy(failure("disk I/O error"))
    assert not database_busy(ValueError("database is locked"))
