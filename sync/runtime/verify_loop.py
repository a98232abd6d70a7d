"""The daemon's verification: every `verify_interval` (default 24 h, 0 = off) each environment
group verifies its tables (sync.verify) without repairing, records each table in
dv_verify_runs and sets `dvmirror_verify_mismatch_rows{environment,table}`.

A mismatch is looked at again after the table's next delta cycle (`CycleSignals`), so a row that
changed while verify ran is not reported. The next run is due `verify_interval` after the last
recorded one, so restarts do not verify more often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment
from sync.errors import DvmirrorError
from sync.governor.gate import TenantBudget
from sync.logs import get_logger
from sync.mirror.fetch import ExactClient
from sync.runtime.metrics import Metrics
from sync.store.verify_runs import latest_query
from sync.verify.runner import VerifyRequest, verify_environment

log = get_logger("dvmirror.verify")


class CycleSignals:
    """Per table, an event set when its next cycle completes."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, table: str) -> asyncio.Event:
        return self._events.setdefault(table, asyncio.Event())

    def cycle_done(self, table: str) -> None:
        self._event(table).set()
        self._events[table] = asyncio.Event()

    async def next_cycle(self, table: str, *, patience: float) -> None:
        """Until the table's next cycle completes, or `patience` seconds (a parked table)."""
        try:
            await asyncio.wait_for(self._event(table).wait(), timeout=patience)
        except TimeoutError:
            log.info("verify_recheck_without_cycle", table=table, waited=patience)


async def _last_run(store: AsyncEngine, environment: str) -> datetime | None:
    async with store.connect() as conn:
        rows = (await conn.execute(latest_query())).all()
    moments = [r.finished_at for r in rows if r.environment == environment and r.finished_at]
    if not moments:
        return None
    last: datetime = max(moments)
    return last if last.tzinfo else last.replace(tzinfo=UTC)


async def _wait(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; True when stopping was asked meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def run_verify_loop(
    *,
    store: AsyncEngine,
    client: ExactClient,
    environment: Environment,
    tables: Callable[[], Sequence[str]],  # the tables mirrored now (rules are rediscovered)
    budget: TenantBudget | None,
    metrics: Metrics | None,
    cycles: CycleSignals,
    stopping: asyncio.Event,
) -> None:
    interval = environment.verify_interval
    if interval <= 0:
        return
    try:
        last = await _last_run(store, environment.name)
    except DvmirrorError:
        last = None
    now = datetime.now(UTC)
    # The first run waits one interval from start, or until the last recorded one is due.
    delay = interval if last is None else interval - (now - last).total_seconds()
    while not await _wait(stopping, delay):
        request = VerifyRequest(
            store=store,
            client=client,
            environment=environment,
            tables=tuple(tables()),
            catch_up=partial(cycles.next_cycle, patience=2 * environment.interval + 60),
            budget=budget,
        )
        try:
            reports = await verify_environment(request)
        except DvmirrorError as exc:
            log.warning("verify_failed", environment=environment.name, error=exc.message)
            reports = []
        for report in reports:
            if metrics is not None:
                metrics.verify_finished(environment.name, report.table, report.unrepaired)
            log.info(
                "verify_finished",
                environment=environment.name,
                table=report.table,
                outcome=report.outcome,
                mismatch_rows=report.unrepaired,
            )
        delay = interval
