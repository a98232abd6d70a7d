"""One writer per SQLite database file, per event loop: the *write turn*.

SQLite lets one connection write at a time, and tasks that commit pages concurrently (an
environment's tables, the key ranges of one table) would otherwise fight for that lock through
their pooled connections, each one waiting in SQLite's busy handler. So the engine of a SQLite
store is a `StoreEngine`: its `begin()` (every write transaction of dvmirror opens with it) first
waits for the database file's write turn, an asyncio lock per file and event loop, which hands the
turn to waiting tasks in the order they asked (FIFO) and holds no pooled connection while they
wait. Reads (`connect()`) never wait for it and run beside the writer (WAL). A task that already
holds the turn may open a nested `begin()` without waiting for itself. A write outside `begin()`
(`connect()` then `commit()`) would bypass the turn: don't.

Other processes (a data team's `sqlite3` shell, a reader holding `BEGIN IMMEDIATE`) are not in
the turn: the busy timeout waits for them, then the page commit retries (store.writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class WriteTurn:
    """The write turn of one database file in one event loop: FIFO, re-entrant for its holder."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # wakes its waiters in the order they came
        self._holder: asyncio.Task[Any] | None = None

    @property
    def held(self) -> bool:
        return self._lock.locked()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None and task is self._holder:
            yield  # a nested write transaction of the holder: waiting for itself would hang
            return
        async with self._lock:
            self._holder = task
            try:
                yield
            finally:
                self._holder = None


# One turn per database file, per event loop (an asyncio.Lock belongs to one loop).
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, WriteTurn]] = (
    weakref.WeakKeyDictionary()
)


def _file_key(url: URL) -> str:
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
        return str(Path(url.database).resolve())
    return url.render_as_string()


def write_turn(engine: AsyncEngine) -> WriteTurn:
    """The write turn of the engine's database file in the running event loop."""
    turns = _TURNS.setdefault(asyncio.get_running_loop(), {})
    key = _file_key(engine.url)
    turn = turns.get(key)
    if turn is None:
        turn = turns[key] = WriteTurn()
    return turn


class StoreEngine(AsyncEngine):
    """An AsyncEngine whose write transactions (`begin()`) take turns per database file."""

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with write_turn(self).hold(), super().begin() as conn:
            yield conn
