"""The table runner every command shares: `backfill`, `sync --once` and the daemon's `run`.

`run_cycle(job, until=...)` prepares a table job and advances it to the end of its cycle (or of
its full load), one committed page at a time, stopping between pages when `stopping` is set. A
big table's full pass runs as parallel key ranges (sync.mirror.ranged), followed by the replay
of the changes made meanwhile. Errors come back as a value, so the caller decides what a failure
means (a command parks the table and reports; the daemon parks it and schedules a retry).
"""

from __future__ import annotations

import asyncio

from sync.errors import DvmirrorError
from sync.logs import get_logger, mask_text
from sync.mirror.job import TableJob
from sync.mirror.job_types import JobResult, Until
from sync.mirror.ranged import run_ranges

log = get_logger("dvmirror.runner")


async def run_cycle(
    job: TableJob, *, until: Until = "cycle", stopping: asyncio.Event | None = None
) -> DvmirrorError | None:
    """Prepare `job` and run it to `until`; the error that stopped it, or None."""
    stop = stopping or asyncio.Event()
    try:
        await job.prepare()
        if until == "backfill" and not job.needs_backfill:
            return None
        replay = False
        while not stop.is_set():
            if job.ranged:
                if not await run_ranges(job, stop):
                    return None
                replay = True  # the changes made while the ranges ran, from the token taken first
                continue
            if not await job.step():
                break
            if job.needs_backfill and job.cursor.next_link is None:
                await job.plan_ranges()  # a full pass starts over (an expired delta token)
            if until == "backfill" and not replay and not job.needs_backfill:
                break
    except DvmirrorError as exc:  # parks this table (StoreError, AuthError too); others go on
        return exc
    except Exception as exc:  # a bug (or an untranslated library error) parks this table only
        log.exception("table_cycle_crashed", environment=job.environment.name, table=job.table)
        return DvmirrorError(
            f"unexpected {type(exc).__name__}: {mask_text(str(exc))}",
            environment=job.environment.name,
            table=job.table,
        )
    return None


async def run_job(job: TableJob, *, until: Until = "cycle") -> JobResult:
    """Run one table to `until` and record the outcome (a one-off command's whole job)."""
    error = await run_cycle(job, until=until)
    return await job.finish(error)
