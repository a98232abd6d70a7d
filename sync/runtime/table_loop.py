"""One table's loop in an environment group: a cycle, its outcome, the wait for the next one.

A failing cycle parks the table with a growing backoff; a resync request cuts the wait (and a
cycle between pages) short; a lost lease stops the whole group (`EnvironmentGroup.lease_lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sync.errors import AuthError, DvmirrorError, LeaseLostError
from sync.logs import get_logger
from sync.mirror import cursor as cur
from sync.mirror.fetch import ExactClient
from sync.mirror.job import TableJob
from sync.mirror.job_types import PageProgress
from sync.mirror.runner import run_cycle
from sync.runtime.resync import pass_is_current
from sync.runtime.timing import FIRST_RUN_SPREAD, backoff_delay, first_delay, next_delay
from sync.runtime.waiting import set_when_any
from sync.store import checkpoints as state
from sync.store.requests import start_full_pass

if TYPE_CHECKING:
    from sync.runtime.environment_group import EnvironmentGroup

log = get_logger("dvmirror.scheduler")


class TableLoop:
    """The loop of one table of `group`, reading through `client`; the group's state is shared."""

    def __init__(self, group: EnvironmentGroup, client: ExactClient, table: str) -> None:
        self.group = group
        self.client = client
        self.table = table

    async def run(self) -> None:
        """One table forever: a cycle (one page at a time), then wait for the next one."""
        client, table = self.client, self.table
        attempts = 0
        # Spread first cycles, but never wait longer than one interval for the first one.
        spread = min(FIRST_RUN_SPREAD, self.group.environment.interval)
        if await self._sleep(table, first_delay(self.group.rng, spread)):
            return
        while not self.group.stopping.is_set() and table in self.group.active_tables:
            try:
                await self._start_requested_pass(table)
            except LeaseLostError as exc:
                self.group.lease_lost(exc)
                return
            except DvmirrorError as exc:  # the cycle runs as it stands; the next one tries again
                log.warning("resync_pass_not_started", table=table, error=exc.message)
            completed = False

            def page_done(page: PageProgress) -> None:
                nonlocal completed
                completed = completed or page.cycle_done
                self._page_done(page)

            job = TableJob(
                store=self.group.store,
                client=client,
                environment=self.group.environment,
                table=table,
                command="run",
                reconcile_every=timedelta(seconds=self.group.environment.reconcile_interval),
                on_page=page_done,
            )
            async with self.group.table_slots:
                error = await self._cycle(job)
            if isinstance(error, LeaseLostError):
                # Not parked: that would be a write, and the environment is not ours any more.
                await job.cancel_prefetch()
                self.group.lease_lost(error)
                return
            if error is None and self.group.stopping.is_set():
                # Interrupted between pages: the checkpoint is committed; resume next start.
                with contextlib.suppress(LeaseLostError):
                    await asyncio.shield(job.interrupt())
                return
            if error is None and not completed and self.group.resync.wake(table).is_set():
                # Cut between pages for a resync request: its full pass starts at once.
                with contextlib.suppress(LeaseLostError):
                    await job.interrupt()
                continue
            attempts, delay = await self._finish_cycle(job, error, attempts)
            if self.group.stopping.is_set():
                return
            if await self._sleep(table, delay):
                return

    async def _finish_cycle(
        self, job: TableJob, error: DvmirrorError | None, attempts: int
    ) -> tuple[int, float]:
        """Record the cycle's outcome (a failure parks the table), for its resync requests too;
        the attempts so far and the delay before the next cycle."""
        table = job.table
        # The retry is decided before the outcome is stored, so status shows what will happen.
        retry_in = (
            None
            if error is None
            else backoff_delay(self.group.timing, attempts + 1, self.group.rng)
        )
        result = await job.finish(error, retry_in=retry_in)
        if self.group.metrics is not None:
            self.group.metrics.table_run_finished(self.group.name, table, ok=result.ok)
            self.group.metrics.table_parked(self.group.name, table, not result.ok)
            # A token renewal refused mid-run (a secret revoked under the daemon) is a
            # token failure as much as one at sign-in.
            if isinstance(error, AuthError):
                self.group.metrics.token_failure(self.group.tenant.name, error)
        if result.ok:
            attempts = 0
            self.group.status.failing_tables.pop(table, None)
            self.group.cycles.cycle_done(table)
            delay = next_delay(self.group.timing, self.group.rng)
        else:
            attempts += 1
            self.group.status.failing_tables[table] = (result.error or "failed")[:300]
            delay = (
                retry_in if retry_in is not None else next_delay(self.group.timing, self.group.rng)
            )
            log.warning("table_retry_scheduled", table=table, retry_in=round(delay, 1))
        try:
            await self.group.resync.cycle_finished(table, job.cursor, result.error)
        except LeaseLostError as exc:
            self.group.lease_lost(exc)
        except DvmirrorError as exc:
            log.warning("resync_record_failed", table=table, error=exc.message)
        return attempts, delay

    async def _start_requested_pass(self, table: str) -> None:
        """A resync request waits for this table: store a full-pass cursor (the one an expired
        delta token gives), unless the table is in a pass started for the request already (a
        takeover resumes it)."""
        self.group.resync.wake(table).clear()
        since = self.group.resync.since(table)
        if since is None:
            return
        now = datetime.now(UTC)
        stored = await state.ensure(self.group.store, self.group.name, table, now=now)
        if not pass_is_current(stored.cursor, since):
            await start_full_pass(
                self.group.store,
                self.group.name,
                table,
                cur.expired(stored.cursor, now=now),
                now=now,
            )
            log.info("resync_pass_started", environment=self.group.name, table=table)
        self.group.resync.pass_started(table)

    async def _sleep(self, table: str, seconds: float) -> bool:
        """Wait `seconds` before the table's next cycle, less when a resync request wants it
        (a parked table is un-parked for the pass). True when stopping."""
        wake = self.group.resync.wake(table)
        if not wake.is_set() and not self.group.stopping.is_set():
            waits = [asyncio.ensure_future(e.wait()) for e in (self.group.stopping, wake)]
            try:
                await asyncio.wait(
                    waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiting in waits:
                    waiting.cancel()
        return self.group.stopping.is_set()

    async def _cycle(self, job: TableJob) -> DvmirrorError | None:
        """Run pages until the cycle ends or the group is told to stop."""
        self.group.status.busy_tables.add(job.table)
        halt = asyncio.Event()  # the group stops, or a resync request wants this table now
        relay = asyncio.create_task(
            set_when_any(halt, self.group.stopping, self.group.resync.wake(job.table))
        )
        try:
            return await run_cycle(job, until="cycle", stopping=halt)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            self.group.status.busy_tables.discard(job.table)

    def _page_done(self, page: PageProgress) -> None:
        self.group.resync.page(page)
        if self.group.metrics is not None:
            self.group.metrics.page_committed(
                page.environment, page.table, upserted=page.rows, deleted=page.deleted
            )
        if self.group.on_page is not None:
            self.group.on_page(page)
