"""The parallel key-range full pass of one big table (where to cut: sync.mirror.keyranges).

1. **Split.** With change tracking, a key-only change-tracking read (`$select=<pk>`, `Prefer:
   odata.track-changes`) walks the table; the deltaLink on its last page is the token the mirror
   replays from, taken *before* any range reads a row. (Change tracking refuses `$filter` and
   `$orderby`, so the ranges themselves cannot carry it.) Without change tracking, a key-only
   read in key order; the pass's start becomes the watermark. Every `step`-th key is sampled and
   the ranges cut at the sample's quantiles. The ranges, the token and the pass's start commit in
   one transaction. Each key page before it commits the scan's progress (its next link, the
   pass's start, the sample so far: store.key_scans), so a crash resumes the scan at its last
   committed page and cuts the same ranges; at most the page in flight is read again.
2. **Ranges.** Each range is its own chain `$filter=<pk> gt A and <pk> le B&$orderby=<pk>`, with
   its own checkpoint in dv_key_ranges committed with each of its pages, so a restart resumes
   every range at its last committed page. All ranges take their request slots from the
   environment's governor, like every other request of that application user.
3. **Close.** After the last range, one transaction sweeps the rows the pass did not see (a
   resync), counts the mirror, stores the delta token (or the watermark) and deletes the
   ranges. The caller then replays the changes since the token (rows changed, created or deleted
   while the ranges ran; upserts are idempotent), which makes the mirror exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.sql.expression import Executable

from sync.dataverse.odata import check_link
from sync.errors import DeltaTokenExpired, HostileResponseError, TableError
from sync.logs import get_logger
from sync.mirror import cursor as cur
from sync.mirror.job import TableJob
from sync.mirror.job_types import stamp
from sync.mirror.keyranges import KeyRange, KeySample, range_count, range_params
from sync.mirror.page import DecodedPage
from sync.store import checkpoints as state
from sync.store import key_ranges, key_scans
from sync.store.checkpoints import TableState
from sync.store.leases import token_stamp
from sync.store.writer import PageCounts, PageWrite, commit_page

log = get_logger("dvmirror.ranges")


async def run_ranges(job: TableJob, stopping: asyncio.Event | None = None) -> bool:
    """Run the table's ranged full pass. True when it is complete (the cursor then stands at the
    start of the delta replay), False when `stopping` ended it between pages."""
    stopping = stopping or asyncio.Event()
    if not job.ranges and not await _split(job, stopping):
        return False
    pending = [r for r in job.ranges if not r.done]
    if pending and not await _run_all(job, pending, stopping):
        return False
    await _close(job)
    return True


def _checked(job: TableJob, url: str, page: DecodedPage) -> None:
    """Links stay in the environment and never loop; no tombstones (no delta answer here)."""
    origin, table = job.environment.origin, job.table
    for link in (page.next_link, page.delta_link):
        if link is not None:
            check_link(link, origin, table=table)
    if page.next_link == url:
        raise HostileResponseError(
            f"table {table}: paging loop (the same nextLink twice)", table=table
        )
    if page.deleted_ids:
        raise HostileResponseError(
            f"table {table}: deleted entries outside a delta answer", table=table
        )


async def _split(job: TableJob, stopping: asyncio.Event) -> bool:
    """Scan the keys, cut the ranges and store them with the pass's start and delta token.
    Each key page commits the scan's progress, so a crash resumes it at the last committed
    page; False when `stopping` ended the scan between pages (the progress stays stored)."""
    assert job.schema is not None
    schema, env = job.schema, job.environment
    tracked = schema.change_tracking
    stored = await key_scans.load(job.store, env.name, job.table)
    if stored is not None and stored.tracked == tracked:
        started, wanted, url = stored.started_at, stored.ranges, stored.next_link
        sample = KeySample.resume(stored.step, stored.seen, stored.keys)
        log.info("key_scan_resumed", environment=env.name, table=job.table, keys=sample.seen)
    else:
        started = job.clock()
        expected = job.total_estimate or 0
        wanted = range_count(expected, workers=env.range_workers, page_size=env.page_size)
        sample = KeySample(expected, wanted)
        params = [("$select", schema.primary_key)]
        if not tracked:
            params.append(("$orderby", f"{schema.primary_key} asc"))
        url = cur.collection_url(env.url, schema.entity_set, params)
        log.info("key_scan_started", environment=env.name, table=job.table, ranges=wanted)
    resumed = stored is not None and stored.tracked == tracked
    while True:
        try:
            page = await job.fetch(cur.Request("keys", url, tracked))
        except DeltaTokenExpired:
            if not resumed:
                raise
            # The stored link outlived its tracking position (the scan waited past retention,
            # or the org expired the table's tokens): scan again from the start.
            log.warning("key_scan_link_expired", environment=env.name, table=job.table)
            await key_scans.forget(job.store, env.name, job.table)
            return await _split(job, stopping)
        _checked(job, url, page)
        sample.add(cur.valid_keys(page.rows, schema.primary_key, job.table))
        if page.next_link is None:
            break
        url = page.next_link
        scan = key_scans.KeyScanState(
            url, tracked, started, wanted, sample.step, sample.seen, tuple(sample.keys)
        )
        progress = _fixed([key_scans.progress(env.name, job.table, scan)])
        await _commit(job, PageWrite(synced_at=stamp(job.clock())), progress)
        if stopping.is_set():
            return False
    if tracked and page.delta_link is None:
        raise TableError(
            f"table {job.table}: the last page of a change-tracking key scan carried no deltaLink",
            table=job.table,
        )
    cursor = TableState(
        phase="resync" if job.cursor.phase == "resync" else "backfill",
        delta_link=cur.with_select(page.delta_link, schema.select) if page.delta_link else None,
        signpost=None if tracked else cur.iso(started),
        resync_started_at=job.cursor.resync_started_at or started,
        last_reconcile=job.cursor.last_reconcile,
    )
    ranges = [key_ranges.RangeState(r.number, r.lower, r.upper) for r in sample.cut(wanted)]
    now = job.clock()
    statements = [
        *state.checkpoint_statements(env.name, job.table, cursor, now=now, pages=0),
        *key_ranges.create(env.name, job.table, ranges, now=now),
        key_scans.progress(env.name, job.table, None),
    ]
    await _commit(job, PageWrite(synced_at=stamp(now)), lambda _: statements)
    job.cursor, job.ranges, job.split = cursor, ranges, False
    log.info(
        "key_ranges_planned",
        environment=env.name,
        table=job.table,
        ranges=len(ranges),
        keys_scanned=sample.seen,
        sampled=len(sample.keys),
    )
    return True


async def _run_all(
    job: TableJob, pending: list[key_ranges.RangeState], stopping: asyncio.Event
) -> bool:
    """Run the pending ranges at once. On the first failure the others stop after their page
    in flight (nothing is cut mid-commit) and the failure is raised."""
    halt = asyncio.Event()

    async def watch_stop() -> None:
        await stopping.wait()
        halt.set()

    watcher = asyncio.create_task(watch_stop())
    chains = [asyncio.create_task(_chain(job, r, halt)) for r in pending]
    try:
        await asyncio.wait(chains, return_when=asyncio.FIRST_EXCEPTION)
        halt.set()
        await asyncio.wait(chains)
    finally:
        watcher.cancel()
        for chain in chains:
            chain.cancel()
        await asyncio.gather(watcher, *chains, return_exceptions=True)
    for chain in chains:
        if not chain.cancelled() and chain.exception() is not None:
            raise chain.exception()  # type: ignore[misc]
    return all(chain.result() for chain in chains)


async def _chain(job: TableJob, stored: key_ranges.RangeState, halt: asyncio.Event) -> bool:
    """One range to its end (True) or until `halt` (False), one committed page at a time."""
    assert job.schema is not None
    schema, env = job.schema, job.environment
    key_range = KeyRange(stored.number, stored.lower, stored.upper)
    url = stored.next_link or cur.collection_url(
        env.url, schema.entity_set, range_params(schema, key_range)
    )
    while not halt.is_set():
        page = await job.fetch(cur.Request("rows", url, False))
        _checked(job, url, page)
        now = job.clock()
        synced = stamp(cur.synced_at(job.cursor, now))
        link = page.next_link

        def checkpoint(
            counts: PageCounts, now: datetime = now, link: str | None = link
        ) -> list[Executable]:
            return [
                *state.checkpoint_statements(
                    env.name,
                    job.table,
                    job.cursor,
                    now=now,
                    upserted=counts.upserted,
                    run_id=job.run_id,
                ),
                key_ranges.range_checkpoint(
                    env.name,
                    job.table,
                    key_range.number,
                    next_link=link,
                    rows=counts.upserted,
                    now=now,
                ),
            ]

        counts = await _commit(job, PageWrite(rows=page.tuples, synced_at=synced), checkpoint)
        job.page_committed(job.cursor.phase, counts, cycle_done=False)
        if link is None:
            return True
        url = link
    return False


async def _close(job: TableJob) -> None:
    """Sweep, count, store the token (or watermark) and drop the ranges: one transaction."""
    assert job.schema is not None
    env, ranged = job.environment, job.cursor
    if job.schema.change_tracking:
        final = TableState("delta", None, ranged.delta_link, last_reconcile=ranged.last_reconcile)
    else:  # a full pass is also a key reconciliation
        final = TableState(
            "watermark", watermark=ranged.signpost, last_reconcile=ranged.resync_started_at
        )
    now = job.clock()
    started = ranged.resync_started_at
    write = PageWrite(
        sweep_before=stamp(started) if started else None, synced_at=stamp(now), count_rows=True
    )

    def checkpoint(counts: PageCounts) -> list[Executable]:
        return [
            *state.checkpoint_statements(
                env.name,
                job.table,
                final,
                now=now,
                deleted=counts.deleted,
                pages=0,
                row_count=counts.row_count,
                run_id=job.run_id,
            ),
            key_ranges.clear(env.name, job.table),
        ]

    counts = await _commit(job, write, checkpoint)
    job.cursor, job.ranges, job.reconcile = final, [], False
    log.info("ranged_pass_done", environment=env.name, table=job.table, rows=counts.row_count)


def _fixed(statements: list[Executable]) -> Callable[[PageCounts], Sequence[Executable]]:
    """A page's checkpoint that does not depend on what the page wrote."""
    return lambda _: statements


async def _commit(
    job: TableJob, write: PageWrite, checkpoint: Callable[[PageCounts], Sequence[Executable]]
) -> PageCounts:
    assert job.layout is not None
    stamp = token_stamp(job.store, job.environment.name, job.table)
    return await commit_page(
        job.store,
        job.layout.writer,
        write,
        observed_at=write.synced_at,
        checkpoint=lambda counts: [*checkpoint(counts), *stamp],
    )
