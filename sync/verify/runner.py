"""One environment's verification: level 1 estimate, level 2 exact range counts, level 3
key/version diff, the recheck after a delta cycle, and `--repair`.

Every source request goes through the environment's governed client; the run stops (outcome
"stopped") while less than 10% of the tenant's daily request budget is left. Repairs go through
the store's page writer (`commit_page`), one transaction per URL-sized chunk; ghosts are logged
in `_dv_deletions` with reason `verify`. Each table's result is a row of `dv_verify_runs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment
from sync.errors import DvmirrorError
from sync.governor.gate import TenantBudget
from sync.logs import get_logger
from sync.mirror.discovery import discover_table
from sync.mirror.fetch import ExactClient
from sync.mirror.job_types import stamp
from sync.mirror.keyranges import KeyRange, sql_order_key
from sync.mirror.rowshape import RowShaper
from sync.store.control import verify_runs
from sync.store.layout import TableSchema
from sync.store.mirror_tables import MirrorLayout, ensure_mirror
from sync.store.writer import PageWrite, commit_page, write_control
from sync.verify import mirror_side, source
from sync.verify.plan import Diff, budget_low, diff, halve, level1_flagged, ranges_from, settled

log = get_logger("dvmirror.verify")

CatchUp = Callable[[str], Awaitable[None]]
GHOST_CHUNK = 500
REPAIR_ROUNDS = 3


class BudgetLow(Exception):
    """Less than 10% of the daily request budget is left: stop verifying."""


@dataclass
class TableReport:
    environment: str
    table: str
    started_at: datetime
    level: int = 1
    outcome: str = "match"  # match | approximate | mismatch | repaired | stopped | failed
    estimate: int | None = None
    mirror_rows: int | None = None
    changed_24h: int = 0
    ranges: int = 0
    found: Diff = field(default_factory=Diff)
    repaired: int = 0
    requests: int = 0
    measured: source.Measured = field(default_factory=source.Measured)
    detail: str | None = None
    # Known once the table is discovered: without change tracking, the mirror learns of a
    # deletion only at its reconcile (a key scan every `reconcile_interval`), so verify's ghosts
    # are rows deleted since the last one, not damage.
    change_tracking: bool | None = None
    reconcile_interval: float | None = None

    @property
    def unrepaired(self) -> int:
        return self.found.rows - self.repaired if self.outcome != "failed" else 0


@dataclass
class VerifyRequest:
    store: AsyncEngine
    client: ExactClient
    environment: Environment
    tables: Sequence[str]
    exact: bool = False
    repair: bool = False
    catch_up: CatchUp | None = None
    budget: TenantBudget | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


async def budget_is_low(budget: TenantBudget | None) -> bool:
    if budget is None:
        return False
    await budget.wait_until()  # loads the shared counter (what other processes spent counts)
    return budget_low(budget.core.used, budget.core.limit)


STOPPED = "stopped: less than 10% of the daily request budget is left"


class TableVerifier:
    def __init__(self, request: VerifyRequest, table: str, estimate: int | None) -> None:
        self.request = request
        self.table = table
        env = request.environment
        self.report = TableReport(env.name, table, request.clock(), estimate=estimate)
        self.schema: TableSchema | None = None
        self.layout: MirrorLayout | None = None
        self.mirror: mirror_side.MirrorTable | None = None

    async def check_budget(self) -> None:
        if await budget_is_low(self.request.budget):
            raise BudgetLow

    async def prepare(self) -> None:
        req = self.request
        options = req.environment.options_for(self.table)
        self.schema = await discover_table(
            req.client, req.environment.url, self.table, columns=options.columns
        )
        soft = options.deletes == "soft"
        if req.repair:  # only a repair writes rows: the mirror table must fit the schema
            self.layout = await ensure_mirror(
                req.store,
                req.environment.name,
                self.schema,
                soft=soft,
                now=req.clock(),
                history=options.history,
            )
        self.mirror = mirror_side.MirrorTable(
            req.environment.name, self.table, self.schema.primary_key, soft
        )
        self.report.change_tracking = self.schema.change_tracking
        self.report.reconcile_interval = req.environment.reconcile_interval

    async def run(self) -> TableReport:
        report, req = self.report, self.request
        before = req.client.tally.of(self.table)[0]
        try:
            await self.check_budget()
            await self.prepare()
            await self.levels()
        except BudgetLow:
            report.outcome = "stopped"
            report.detail = STOPPED
        except DvmirrorError as exc:
            report.outcome, report.detail = "failed", exc.message
        report.requests = req.client.tally.of(self.table)[0] - before
        return report

    async def levels(self) -> None:
        report, req = self.report, self.request
        assert self.mirror is not None
        report.mirror_rows = await mirror_side.live_rows(req.store, self.mirror)
        since = req.clock() - timedelta(hours=24)
        report.changed_24h = await mirror_side.changed_since(req.store, self.mirror, since)
        flagged = level1_flagged(report.estimate, report.mirror_rows, report.changed_24h)
        if not req.exact and not flagged:
            report.outcome = "approximate"
            return
        report.level = 2
        differing = await self.count_ranges()
        if req.exact or differing:
            report.level = 3
            await self.diff_ranges(differing if not req.exact else None)
        if report.found.rows:
            await self.recheck()
        if report.found.rows and req.repair:
            await self.repair()
        if report.found.rows == 0:
            report.outcome = "match"
        else:
            report.outcome = "repaired" if report.repaired == report.found.rows else "mismatch"

    async def count_ranges(self) -> list[KeyRange]:
        """Level 2: every range's exact count on both sides; the ranges that differ."""
        req, schema, mirror = self.request, self.schema, self.mirror
        assert schema is not None
        assert mirror is not None
        bounds, counts = await mirror_side.range_bounds(req.store, mirror)
        pending = list(zip(ranges_from(bounds), counts, strict=True))
        self.all_ranges: list[KeyRange] = []
        differing: list[KeyRange] = []
        while pending:
            key_range, mirrored = pending.pop(0)
            await self.check_budget()
            counted = await source.range_count(req.client, req.environment.url, schema, key_range)
            if counted is None:  # over 50,000 rows in the source: count its halves
                inner = sorted(
                    await mirror_side.range_versions(req.store, mirror, key_range),
                    key=sql_order_key,
                )
                halves = halve(key_range, inner)
                if halves is None:
                    differing.append(key_range)
                    self.all_ranges.append(key_range)
                    continue
                for half in halves:
                    rows = len(await mirror_side.range_versions(req.store, mirror, half))
                    pending.insert(0, (half, rows))
                continue
            self.all_ranges.append(key_range)
            if counted != mirrored:
                differing.append(key_range)
        self.report.ranges = len(self.all_ranges)
        return differing

    async def diff_ranges(self, only: list[KeyRange] | None) -> None:
        """Level 3: keys and versions of each range (every range under --exact)."""
        req, schema, mirror = self.request, self.schema, self.mirror
        assert schema is not None
        assert mirror is not None
        self.first_source: dict[str, int | None] = {}
        for key_range in only if only is not None else self.all_ranges:
            await self.check_budget()
            theirs = await source.range_versions(
                req.client, req.environment.url, schema, key_range, self.report.measured
            )
            ours = await mirror_side.range_versions(req.store, mirror, key_range)
            found = diff(theirs, ours)
            self.report.found.extend(found)
            self.first_source.update({k: theirs.get(k) for k in found.all_keys()})
        if self.report.measured.key_rows:
            await source.full_page_cost(
                req.client, req.environment.url, schema, self.report.measured
            )

    async def look_again(self, keys: list[str]) -> tuple[Diff, dict[str, int | None]]:
        req, schema, mirror = self.request, self.schema, self.mirror
        assert schema is not None
        assert mirror is not None
        theirs = await source.versions_of(
            req.client, req.environment.url, schema, keys, self.report.measured
        )
        ours = await mirror_side.versions_of(req.store, mirror, keys)
        return diff(theirs, ours), theirs

    async def recheck(self) -> None:
        """A key that changed after verify started is looked at again after the next delta
        cycle; only what still differs, at the version first seen, is reported."""
        catch_up = self.request.catch_up
        if catch_up is None:
            return
        first = self.report.found
        await catch_up(self.table)
        again, now = await self.look_again(first.all_keys())
        standing, moving = settled(first, self.first_source, again, now)
        if moving:  # changed while we looked: one more cycle, then report what differs
            await catch_up(self.table)
            last, _ = await self.look_again(moving)
            standing.extend(last)
        self.report.found = standing

    async def repair(self) -> None:
        """Refetch missing and stale rows, delete ghosts; one transaction per chunk. A row that
        changes again at the source meanwhile is repaired again (at most REPAIR_ROUNDS)."""
        found = self.report.found
        pending = found
        for _ in range(REPAIR_ROUNDS):
            await self.repair_once(pending)
            pending, _ = await self.look_again(pending.all_keys())
            if not pending.rows:
                break
        self.report.repaired = found.rows - pending.rows

    async def repair_once(self, found: Diff) -> None:
        req, schema, layout = self.request, self.schema, self.layout
        assert schema is not None
        assert layout is not None
        shaper = RowShaper(schema)
        refetch = [*found.missing, *found.stale]
        written = 0
        for chunk in await source.rows_of(req.client, req.environment.url, shaper, refetch):
            now = stamp(req.clock())
            await commit_page(
                req.store,
                layout.writer,
                PageWrite(rows=chunk, synced_at=now),
                observed_at=now,
                checkpoint=lambda _counts: [],
            )
            written += len(chunk)
        for start in range(0, len(found.ghost), GHOST_CHUNK):
            now = stamp(req.clock())
            chunk_ids = found.ghost[start : start + GHOST_CHUNK]
            await commit_page(
                req.store,
                layout.writer,
                PageWrite(deleted_ids=chunk_ids, synced_at=now, deletion_reason="verify"),
                observed_at=now,
                checkpoint=lambda _counts: [],
            )
        log.info(
            "verify_repaired",
            environment=req.environment.name,
            table=self.table,
            refetched=written,
            ghosts_deleted=len(found.ghost),
        )


async def record(store: AsyncEngine, report: TableReport, finished_at: datetime) -> None:
    """One row of dv_verify_runs for a table's run."""
    found = report.found
    statement = insert(verify_runs).values(
        environment=report.environment,
        table_name=report.table,
        started_at=report.started_at,
        finished_at=finished_at,
        level=report.level,
        outcome=report.outcome,
        source_estimate=report.estimate,
        mirror_rows=report.mirror_rows,
        ranges=report.ranges,
        missing=len(found.missing),
        ghost=len(found.ghost),
        stale=len(found.stale),
        repaired=report.repaired,
        requests=report.requests,
        detail=report.detail,
    )
    await write_control(store, [statement], environment=report.environment, table=report.table)


async def _estimates(request: VerifyRequest) -> dict[str, int]:
    env = request.environment
    try:
        return await source.record_counts(request.client, env.url, request.tables)
    except DvmirrorError as exc:
        log.warning("verify_estimate_failed", environment=env.name, error=exc.message)
        return {}


async def verify_environment(request: VerifyRequest) -> list[TableReport]:
    """Verify the environment's tables one after another; record each in dv_verify_runs. With
    less than 10% of the daily budget left, not even the estimate is asked: all are stopped."""
    env = request.environment
    low = await budget_is_low(request.budget)
    estimates = {} if low else await _estimates(request)
    reports = []
    for table in request.tables:
        if low:
            report = TableReport(env.name, table, request.clock(), outcome="stopped")
            report.detail = STOPPED
        else:
            report = await TableVerifier(request, table, estimates.get(table)).run()
        await record(request.store, report, request.clock())
        reports.append(report)
    return reports
