"""One table job: discovery → cursor → client → writer, one page per step.

`TableJob.prepare()` discovers the table, adapts the mirror (drift) and loads the checkpoint;
`TableJob.step()` fetches and commits exactly ONE page (rows + deletions + checkpoint in one
transaction) and says whether the current cycle has more pages. A scheduler can interleave the
steps of many tables; sync.mirror.runner drives it for every command, and sync.mirror.ranged
runs a big table's full pass as parallel key ranges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.config.tenants import Environment
from sync.dataverse.client import BodyHook
from sync.errors import DeltaTokenExpired, DvmirrorError
from sync.limits import MAX_PAGE_SIZE
from sync.logs import get_logger
from sync.mirror import cursor as cur
from sync.mirror.ahead import FetchAhead
from sync.mirror.discovery import discover_table, estimate_total
from sync.mirror.job_drift import fit_mirror
from sync.mirror.job_outcome import record_outcome
from sync.mirror.job_types import JobResult, PageClient, PageProgress, stamp, utcnow
from sync.mirror.keyranges import should_split
from sync.mirror.page import DecodedPage
from sync.mirror.rowshape import RowShaper
from sync.store import checkpoints as state
from sync.store import key_ranges, key_scans
from sync.store.layout import TableSchema
from sync.store.leases import token_stamp
from sync.store.mirror_tables import MirrorLayout
from sync.store.writer import PageCounts, PageWrite, commit_page

log = get_logger("dvmirror.engine")


class TableJob:
    """The sync of one table of one environment, advanced one page at a time."""

    def __init__(
        self,
        *,
        store: AsyncEngine,
        client: PageClient,
        environment: Environment,
        table: str,
        command: str = "sync",
        reconcile_every: timedelta | None = cur.DEFAULT_RECONCILE_EVERY,
        clock: Callable[[], datetime] = utcnow,
        on_page: Callable[[PageProgress], None] | None = None,
        on_reads_over: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.environment = environment
        self.table = table
        self.command = command
        self.options = environment.options_for(table)
        self.reconcile_every = reconcile_every
        self.clock = clock
        self.on_page = on_page
        # Told once, when this job will send no more data requests this run: its last page's
        # body has arrived (still to be decoded and committed), or the job ends.
        self._on_reads_over = on_reads_over
        self._last_read_arrived = False  # before the mirror is ready: told once it is
        self.schema: TableSchema | None = None
        self.layout: MirrorLayout | None = None
        self.cursor = cur.TableState()
        self.run_id: int | None = None
        self._tally_start: tuple[int, int, float] = (0, 0, 0.0)
        self.total_estimate: int | None = None
        self.pages = self.upserted = self.deleted = 0
        self.reconcile = False
        self.idle = False  # nothing to read this cycle (see prepare)
        self._attempts = 0
        # A parallel key-range full pass (sync.mirror.ranged): its stored ranges, or `split`
        # when one is to start (a big table whose full pass has not begun).
        self.ranges: list[key_ranges.RangeState] = []
        self.split = False
        self._counted: tuple[int | None] | None = None  # a row count taken beside discovery
        self._shapers: tuple[RowShaper, RowShaper] | None = None
        self._ahead = FetchAhead(self.fetch, environment.origin, on_last_body=self._last_body)

    @property
    def needs_backfill(self) -> bool:
        return self.cursor.phase in ("new", "backfill", "resync")

    @property
    def ranged(self) -> bool:
        """The full pass runs (or is to run) as parallel key ranges."""
        return self.needs_backfill and (bool(self.ranges) or self.split)

    async def prepare(self) -> None:
        """Discover the table, adapt the mirror to its schema, load the checkpoint."""
        now = self.clock()
        env = self.environment
        stored = await state.ensure(self.store, env.name, self.table, now=now)
        self.run_id = await state.start_run(self.store, env.name, self.table, self.command, now=now)
        self._tally_start = self.client.tally.of(self.table)
        self._attempts, self.total_estimate = stored.attempts, stored.total_estimate
        discovery = discover_table(self.client, env.url, self.table, columns=self.options.columns)
        if stored.cursor.phase in cur.FULL_PASSES | {"new"} and stored.cursor.next_link is None:
            # A full pass starts (or resumes its ranges): count the rows beside discovery.
            schema, counted = await asyncio.gather(
                discovery, estimate_total(self.client, env.url, self.table)
            )
            self._counted = (counted,)
        else:
            schema, self._counted = await discovery, None
        keys_schema = replace(schema, columns=schema.columns[:1])
        self._shapers = (RowShaper(schema), RowShaper(keys_schema, keep_rows=True))
        await self._first_page_early(stored.cursor, schema)
        layout, cursor, widened = await fit_mirror(
            self.store, env.name, self.table, schema, stored=stored, options=self.options, now=now
        )
        self.schema, self.layout, self.cursor = schema, layout, cursor
        await self.plan_ranges(widened=widened)
        if not schema.change_tracking and self.reconcile_every is not None:
            self.reconcile = cur.reconcile_due(cursor, now=now, every=self.reconcile_every)
        # An intersect table without change tracking has nothing to filter on: its full read
        # (keys only: its columns are its keys) runs every reconcile interval, not every cycle.
        self.idle = (
            schema.intersect
            and not schema.change_tracking
            and self.reconcile_every is not None
            and cursor.phase == "watermark"
            and cursor.next_link is None
            and not self.reconcile
        )
        if self._last_read_arrived:  # a new table's first page, read early, was its last
            self._reads_over()

    async def _first_page_early(self, stored: cur.TableState, schema: TableSchema) -> None:
        """A new table's first page is asked for now, read while its mirror is created and its
        checkpoint stored (the first step takes it: FetchAhead), unless its full pass is to
        split into key ranges. Any other state is planned once the mirror is ready."""
        if stored.phase != "new" or self._counted is None:
            return
        env = self.environment
        (total,) = self._counted
        split = should_split(
            total, split_rows=env.split_rows, workers=env.range_workers, page_size=env.page_size
        )
        if not split:
            first, _ = cur.plan(stored, schema, base_url=env.url, now=self.clock())
            await self._ahead.keep_or_start(first)

    async def plan_ranges(self, *, widened: bool = False) -> None:
        """Find a ranged pass under way, or decide whether a full pass about to start splits."""
        env, cursor = self.environment, self.cursor
        self.ranges, self.split = [], False
        if not self.needs_backfill:
            return
        self.ranges = await key_ranges.load(self.store, env.name, self.table)
        assert self.schema is not None
        tracked = self.schema.change_tracking
        if self.ranges and (
            cursor.resync_started_at is None or (tracked and cursor.delta_link is None)
        ):  # left by a pass that no longer stands (the mirror table was dropped): start afresh
            await key_ranges.forget(self.store, env.name, self.table)
            self.ranges = []
        if self.ranges:
            if widened:  # new columns: the ranges' next pages select them too
                select = self.schema.select
                self.ranges = [
                    replace(r, next_link=cur.with_select(r.next_link, select)) if r.next_link else r
                    for r in self.ranges
                ]
            return
        if cursor.next_link is not None:
            return  # a single chain under way goes on as one
        if self._counted is not None:
            (total,), self._counted = self._counted, None
        else:
            total = await estimate_total(self.client, env.url, self.table)
        if total is not None:
            self.total_estimate = total
            await state.set_total_estimate(
                self.store, env.name, self.table, total, now=self.clock()
            )
        self.split = should_split(
            total, split_rows=env.split_rows, workers=env.range_workers, page_size=env.page_size
        )
        if not self.split:  # a key scan left by a crash will not go on: a later one starts afresh
            await key_scans.forget(self.store, env.name, self.table)

    def page_committed(self, phase: str, counts: PageCounts, *, cycle_done: bool) -> None:
        """Count a committed page and report it (progress bars, metrics)."""
        self.pages += 1
        self.upserted += counts.upserted
        self.deleted += counts.deleted
        log.debug(
            "page_committed",
            environment=self.environment.name,
            table=self.table,
            phase=phase,
            upserted=counts.upserted,
            deleted=counts.deleted,
        )
        if self.on_page is not None:
            self.on_page(
                PageProgress(
                    self.environment.name,
                    self.table,
                    phase,
                    counts.upserted,
                    counts.deleted,
                    self.total_estimate,
                    cycle_done,
                )
            )

    def _last_body(self, request: cur.Request) -> None:
        """A page without a nextLink has arrived: it ends the cycle (cursor.advance), unless
        it ends a watermark pass that a reconciliation's key pass follows."""
        if not self.reconcile or request.kind == "keys":
            self._last_read_arrived = True
            if self.layout is not None:  # the mirror's columns are catalogued
                self._reads_over()

    def _reads_over(self) -> None:
        tell, self._on_reads_over = self._on_reads_over, None
        if tell is not None:
            tell()

    async def step(self) -> bool:
        """Fetch and commit one page. True while the current cycle has more pages."""
        if self.idle:
            return False
        assert self.schema is not None
        assert self.layout is not None
        assert self._shapers is not None
        schema, env = self.schema, self.environment
        now = self.clock()
        request, planned = cur.plan(self.cursor, schema, base_url=env.url, now=now)
        try:
            page = await self._page(request)
        except DeltaTokenExpired:
            log.warning("delta_token_expired", environment=env.name, table=self.table)
            self.cursor = cur.expired(self.cursor, now=now)
            await state.save_cursor(self.store, env.name, self.table, self.cursor, now=now)
            return True
        step = cur.advance(
            planned, request, page, schema, origin=env.origin, now=now, reconcile=self.reconcile
        )
        synced = stamp(cur.synced_at(planned, now))
        write = PageWrite(
            rows=page.tuples if request.kind != "keys" else (),
            deleted_ids=step.deleted_ids,
            keys_seen=step.keys_seen,
            sweep_before=stamp(step.sweep_before) if step.sweep_before else None,
            synced_at=synced,
            count_rows=step.cycle_done or step.full_pass_done,
        )

        def checkpoint(counts: PageCounts) -> list[Executable]:
            return [
                *state.checkpoint_statements(
                    env.name,
                    self.table,
                    step.state,
                    now=now,
                    upserted=counts.upserted,
                    deleted=counts.deleted,
                    row_count=counts.row_count,
                    run_id=self.run_id,
                ),
                *token_stamp(self.store, env.name, self.table),
            ]

        if step.cycle_done:
            await self.cancel_prefetch()  # a guess read from a page that ends the cycle
        else:  # the next page is fetched while this one commits
            upcoming, _ = cur.plan(step.state, schema, base_url=env.url, now=now)
            await self._ahead.keep_or_start(upcoming)
        self._ahead.committing = True
        try:
            counts = await commit_page(
                self.store, self.layout.writer, write, observed_at=synced, checkpoint=checkpoint
            )
        except BaseException:
            await self.cancel_prefetch()
            raise
        finally:
            self._ahead.committing = False
        self.cursor = step.state
        if step.full_pass_done or (step.cycle_done and not schema.change_tracking):
            self.reconcile = False
        self.page_committed(planned.phase, counts, cycle_done=step.cycle_done)
        return not step.cycle_done

    async def fetch(self, request: cur.Request, on_body: BodyHook | None = None) -> DecodedPage:
        """One page as `request` asks (keys only for a key request), in this table's shape.

        Key pages hold one short column, so they always ask for the largest page: a key scan
        of a big table is a few round trips, whatever `page_size` the table's rows use."""
        assert self._shapers is not None
        keys = request.kind == "keys"
        return await self.client.fetch_page(
            request.url,
            self._shapers[1] if keys else self._shapers[0],
            track_changes=request.track_changes,
            impersonate=self.options.impersonate,
            page_size=MAX_PAGE_SIZE if keys else self.environment.page_size,
            # Key pages, full row pages and delta pages of a table cost very differently.
            cost_class=f"{request.kind}:{self.table}",
            on_body=on_body,
        )

    async def _page(self, request: cur.Request) -> DecodedPage:
        return await self._ahead.page(request)

    async def cancel_prefetch(self) -> None:
        """Drop a page fetched ahead (the job stops, its plan changed or its commit failed)."""
        await self._ahead.cancel()

    async def interrupt(self) -> None:
        """Stop between pages (shutdown): the last checkpoint stands, the run is marked so."""
        await self.cancel_prefetch()
        self._reads_over()
        if self.run_id is not None:
            await state.finish_run(self.store, self.run_id, status="interrupted", now=self.clock())

    async def finish(
        self, error: DvmirrorError | None = None, *, retry_in: float | None = None
    ) -> JobResult:
        """Record the outcome: success clears the park, an error parks the table until the
        caller's next attempt (`retry_in` seconds; None when no retry is scheduled)."""
        await self.cancel_prefetch()
        self._reads_over()
        return await record_outcome(
            self.store,
            self.client.tally,
            self.environment.name,
            self.table,
            error=error,
            retry_in=retry_in,
            now=self.clock(),
            run_id=self.run_id,
            attempts=self._attempts,
            tally_start=self._tally_start,
            counts=(self.pages, self.upserted, self.deleted),
        )
