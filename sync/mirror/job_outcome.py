"""Record how a table job ended: its park or its success, and its run's counts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.dataverse.seams import RequestTally
from sync.errors import AuthError, DvmirrorError, LeaseLostError
from sync.logs import get_logger
from sync.mirror.job_types import JobResult
from sync.store import checkpoints as state

log = get_logger("dvmirror.engine")


async def record_outcome(
    store: AsyncEngine,
    tally: RequestTally,
    environment: str,
    table: str,
    *,
    error: DvmirrorError | None,
    retry_in: float | None,
    now: datetime,
    run_id: int | None,
    attempts: int,
    tally_start: tuple[int, int, float],
    counts: tuple[int, int, int],
) -> JobResult:
    """Success clears the park, an error parks the table until the caller's next attempt
    (`retry_in` seconds; None when no retry is scheduled). `counts` are the job's pages,
    rows upserted and rows deleted; `tally_start` the table's request tally when it began."""
    pages, upserted, deleted = counts
    message = None if error is None else error.message
    if isinstance(error, LeaseLostError):  # not ours to write any more: not even the park
        log.warning("table_stopped_lease_lost", environment=environment, table=table)
        return JobResult(environment, table, False, message, pages=pages)
    try:
        if error is None:
            await state.record_success(store, environment, table, now=now)
        else:
            retry_at = None if retry_in is None else now + timedelta(seconds=retry_in)
            await state.record_error(
                store,
                environment,
                table,
                message or "",
                now=now,
                attempts=attempts,
                retry_at=retry_at,
            )
        if run_id is not None:
            requests, throttled, paused = tally.of(table)
            await state.finish_run(
                store,
                run_id,
                status="ok" if error is None else "failed",
                now=now,
                error=message,
                requests=requests - tally_start[0],
                throttled=throttled - tally_start[1],
                paused_seconds=paused - tally_start[2],
            )
    except LeaseLostError as exc:  # lost between the last page and this record
        log.warning("run_record_skipped", environment=environment, table=table, error=exc.message)
    except DvmirrorError as exc:  # the store failed (a full disk): one line, no traceback
        log.error("run_record_failed", environment=environment, table=table, error=exc.message)
    if error is not None:
        log.error("table_parked", environment=environment, table=table, error=message)
    return JobResult(
        environment,
        table,
        error is None,
        message,
        isinstance(error, AuthError),
        pages,
        upserted,
        deleted,
    )
