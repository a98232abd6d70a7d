"""Resync requests inside the daemon: what one environment group does with them.

The group holding an environment's lease polls dv_resync_requests every RESYNC_POLL_SECONDS
(one scheduler tick) and claims the environment's open requests through its fenced engine
(store.requests.claim: only the lease holder can). Each request names its tables; each of those
tables' loops is woken (a cycle under way is cut between two committed pages, a parked table
stops waiting for its backoff), stores a full-pass cursor — the same one an expired delta token
gives (sync.mirror.cursor.expired) — and runs that pass, which ends with the sweep of every row
it did not see and a new delta link; incremental sync goes on from there. The pages of the pass
count as the request's progress, written back every tick; the request is done when each of its
tables finished its pass, failed (with that table's error) when one of them failed.

A daemon that stops mid-pass leaves the request running; whichever daemon holds the lease next
takes it over, and a table whose pass started for the request (its `resync_started_at` is not
older than the request's start) resumes that pass from its checkpoint instead of starting anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.errors import DvmirrorError, LeaseLostError
from sync.logs import get_logger
from sync.mirror.cursor import FULL_PASSES
from sync.mirror.job_types import PageProgress
from sync.store import checkpoints as state
from sync.store import requests as store
from sync.store.checkpoints import TableState
from sync.store.leases import FencedEngine

log = get_logger("dvmirror.resync")

RESYNC_POLL_SECONDS = 1.0  # one scheduler tick (sync.runtime.daemon.TICK_SECONDS)


def utcnow() -> datetime:
    return datetime.now(UTC)


def holder_of(engine: AsyncEngine) -> str:
    """Who handles the requests: the lease holder (host:pid:id), or this process without one."""
    if isinstance(engine, FencedEngine):
        return engine.lease.holder
    return f"{socket.gethostname()}:{os.getpid()}"


def pass_is_current(cursor: TableState, since: datetime) -> bool:
    """Whether the table is in a full pass that started for a request made at `since`."""
    started = cursor.resync_started_at
    return cursor.phase in FULL_PASSES and started is not None and started >= since


@dataclass
class Running:
    """A claimed request: which of its tables are still to finish their pass, its figures."""

    request: store.ResyncRequest
    pending: set[str]
    started: set[str] = field(default_factory=set)  # tables whose pass for it has begun
    base_rows: int = 0  # rows counted by an earlier handler (a takeover)
    rows: int = 0
    expected: dict[str, int] = field(default_factory=dict)
    written: tuple[int, int | None] = (0, None)

    @property
    def rows_done(self) -> int:
        return self.base_rows + self.rows

    @property
    def rows_expected(self) -> int | None:
        return sum(self.expected.values()) or self.request.rows_expected


class ResyncWork:
    """One environment group's resync requests (see the module docstring)."""

    def __init__(
        self, environment: str, engine: AsyncEngine, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.environment = environment
        self.store = engine
        self.clock = clock
        self.holder = holder_of(engine)
        self.running: dict[int, Running] = {}
        self.tables: tuple[str, ...] = ()
        self._wake: dict[str, asyncio.Event] = {}

    def wake(self, table: str) -> asyncio.Event:
        """Set when a request wants a new pass of `table` (its loop waits on it)."""
        return self._wake.setdefault(table, asyncio.Event())

    async def run(self, tables: Iterable[str], stopping: asyncio.Event) -> None:
        """Poll every tick until `stopping`. A lost lease is raised (the group stops)."""
        self.tables = tuple(tables)
        while not stopping.is_set():
            try:
                await self.poll()
            except LeaseLostError:
                raise
            except DvmirrorError as exc:
                log.warning("resync_poll_failed", environment=self.environment, error=exc.message)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RESYNC_POLL_SECONDS):
                    await stopping.wait()

    async def poll(self) -> None:
        """Claim what waits, then write the running requests' progress."""
        claimed = await store.claim(
            self.store,
            self.environment,
            holder=self.holder,
            now=self.clock(),
            keep=list(self.running),
        )
        if claimed:
            estimates = {
                row.table: row.total_estimate
                for row in await state.statuses(self.store, self.environment)
                if row.total_estimate
            }
            for request in claimed:
                await self._take(request, estimates)
        await self.flush()

    async def _take(self, request: store.ResyncRequest, estimates: dict[str, int]) -> None:
        if request.table is not None and request.table not in self.tables:
            error = (
                f"table {request.table} is not among the tables environment {self.environment} "
                "mirrors (check the name, or the environment's tables)"
            )
            await store.mark_failed(self.store, request.id, now=self.clock(), error=error)
            log.warning("resync_refused", request=request.id, error=error)
            return
        targets = self.tables if request.table is None else (request.table,)
        running = Running(
            request,
            set(targets),
            base_rows=request.rows_done,
            expected={t: estimates[t] for t in targets if t in estimates},
            written=(request.rows_done, request.rows_expected),
        )
        self.running[request.id] = running
        log.info(
            "resync_claimed",
            environment=self.environment,
            request=request.id,
            tables=sorted(targets),
            requested_by=request.requested_by,
            holder=self.holder,
        )
        if not targets:  # an environment without tables yet: nothing to read
            await self._done(running)
        for table in targets:
            self.wake(table).set()

    def since(self, table: str) -> datetime | None:
        """When the latest running request that wants a pass of `table` started (None: none)."""
        moments = [
            r.request.started_at or r.request.requested_at
            for r in self.running.values()
            if table in r.pending
        ]
        return max(moments) if moments else None

    def pass_started(self, table: str) -> None:
        """The table's pass for every request waiting on it has begun: its pages count."""
        for running in self.running.values():
            if table in running.pending:
                running.started.add(table)

    def page(self, progress: PageProgress) -> None:
        """A committed page: a full pass's rows count for the requests it runs for."""
        if progress.phase not in FULL_PASSES:
            return
        for running in self.running.values():
            if progress.table in running.pending and progress.table in running.started:
                running.rows += progress.rows
                if progress.total_estimate:
                    running.expected[progress.table] = progress.total_estimate

    async def cycle_finished(self, table: str, cursor: TableState, error: str | None) -> None:
        """A cycle of `table` ended: its pass finished (the cursor left the full pass), or
        failed, for the requests it ran for."""
        for running in list(self.running.values()):
            if table not in running.pending or table not in running.started:
                continue
            if error is not None:
                del self.running[running.request.id]
                message = f"table {table}: {error}"
                await store.mark_failed(
                    self.store, running.request.id, now=self.clock(), error=message
                )
                log.warning(
                    "resync_failed",
                    environment=self.environment,
                    request=running.request.id,
                    error=message,
                )
            elif cursor.phase not in FULL_PASSES:
                running.pending.discard(table)
                if not running.pending:
                    await self._done(running)

    async def _done(self, running: Running) -> None:
        self.running.pop(running.request.id, None)
        await store.mark_done(
            self.store,
            running.request.id,
            now=self.clock(),
            rows_done=running.rows_done,
            rows_expected=running.rows_expected,
        )
        log.info(
            "resync_done",
            environment=self.environment,
            request=running.request.id,
            rows=running.rows_done,
        )

    async def flush(self) -> None:
        """Write the figures of the running requests that changed since the last write."""
        for running in list(self.running.values()):
            figures = (running.rows_done, running.rows_expected)
            if figures != running.written:
                await store.mark_progress(
                    self.store,
                    running.request.id,
                    rows_done=figures[0],
                    rows_expected=figures[1],
                )
                running.written = figures
