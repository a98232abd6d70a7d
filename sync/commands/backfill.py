"""`dvmirror backfill [--env E] [--table T]`: every selected table to the end of its full load.

Rerunning resumes from each table's last committed page (each key range's, for a big table read
as parallel ranges). The tables of an environment run concurrently (`table_concurrency`,
default all) and take their requests from that application user's governor; environments run
concurrently too. A failing table is parked with its error while the others go on.
The command holds the store's writer lock (SQLite: one writer process, store.writer_lock) and
the leases of its environments (PostgreSQL: a daemon that holds one makes it refuse, exit 2).
Exit code: 0 ok, 1 a table failed, 2 the store or an environment is in use,
3 authentication/authorization failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.commands.named_table import confirm_named, refused_without_asking
from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.errors import AuthError, ConfigError, DvmirrorError, ExitCode
from sync.logs import get_logger
from sync.mirror.discovery import resolve_tables
from sync.mirror.fetch import ExactClient
from sync.mirror.job import TableJob
from sync.mirror.job_types import JobResult, PageProgress, Until
from sync.mirror.metadata_refresh import RefreshAfterReads
from sync.mirror.relationships import with_relationships
from sync.mirror.runner import run_job
from sync.runtime.leases import command_leases
from sync.runtime.looplag import LoopLagWatch
from sync.runtime.wiring import Wiring
from sync.store import checkpoints as state
from sync.store.open import open_store
from sync.store.writer_lock import single_writer

log = get_logger("dvmirror.backfill")


class RateColumn(ProgressColumn):
    """rows/s of a task (rich's own speed column formats bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


def make_progress(console: Any) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>10,.0f} rows"),
        RateColumn(),
        TextColumn("{task.fields[pages]} pages"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@dataclass(frozen=True)
class Selection:
    tenant: Tenant
    environment: Environment
    tables: tuple[str, ...] | None  # None: "all", listed from metadata at run time
    named: bool = False  # one table named with --table: no N:N tables beside it


def select(config: Config, env: str | None, table: str | None) -> list[Selection]:
    """The environments and tables a command covers; unknown names are usage errors."""
    chosen: list[Selection] = []
    for tenant, environment in config.environments():
        if env is not None and environment.name != env:
            continue
        tables = environment.fixed_tables
        if table is not None:
            refused = refused_without_asking(environment, table)
            if refused is not None:
                raise ConfigError(refused)
            tables = (table,)  # the rest is checked against the source: confirm_tables
        chosen.append(Selection(tenant, environment, tables, named=table is not None))
    if not chosen:
        known = ", ".join(e.name for _, e in config.environments())
        raise ConfigError(f"no environment named {env!r} (known: {known})")
    return chosen


async def confirm_tables(wiring: Wiring, chosen: Iterable[Selection]) -> None:
    """Refuse (ConfigError) a `--table` an environment does not mirror, before any write."""
    for selection in chosen:
        if selection.named and selection.tables:
            tenant, environment = selection.tenant, selection.environment
            client = wiring.client(tenant, environment, wiring.governor(tenant, environment))
            async with client:
                await confirm_named(client, environment, selection.tables[0])


def exit_code(results: Iterable[JobResult]) -> int:
    results = list(results)
    if any(r.auth_failed for r in results):
        return ExitCode.AUTH
    return ExitCode.OK if all(r.ok for r in results) else ExitCode.FAILURES


async def _environment(
    wiring: Wiring,
    store: AsyncEngine,
    chosen: Selection,
    *,
    until: Until,
    command: str,
    reconcile_every: timedelta | None,
    progress: Progress,
) -> list[JobResult]:
    tenant, environment = chosen.tenant, chosen.environment
    # This process is now the environment's writer: runs a killed one left "running" end here.
    await state.close_stale_runs(store, environment.name, now=datetime.now(UTC))
    client = wiring.client(tenant, environment, wiring.governor(tenant, environment))
    results: list[JobResult] = []
    async with client:
        try:
            if chosen.tables is not None:
                tables = chosen.tables
            else:
                found = await resolve_tables(client, environment.url, environment.tables)
                for warning in found.warnings:
                    log.warning("table_not_mirrored", environment=environment.name, reason=warning)
                tables = found.tables
            if not chosen.named:  # and the intersect tables of their N:N
                tables, _ = await with_relationships(client, store, environment, tables)
        except DvmirrorError as exc:
            return [
                JobResult(environment.name, "*", False, exc.message, isinstance(exc, AuthError))
            ]
        # The environment's tables run concurrently (a latency-bound service rewards it); the
        # governor still caps the requests in flight for the application user.
        slots = asyncio.Semaphore(environment.table_concurrency or max(1, len(tables)))
        # The Synapse-style metadata tables of the tables that ran (sync.mirror.metadata_refresh),
        # read as soon as every table has made its last read.
        metadata = RefreshAfterReads(
            client,
            store,
            environment=environment.name,
            environment_url=environment.url,
            tables=tables if environment.metadata_tables else [],
        )

        async def one(table: str) -> JobResult:
            async with slots:
                return await _table(
                    client,
                    store,
                    environment,
                    table,
                    until=until,
                    command=command,
                    reconcile_every=reconcile_every,
                    progress=progress,
                    on_reads_over=metadata.reads_over(table),
                )

        try:
            results.extend(await asyncio.gather(*(one(table) for table in tables)))
            ran = [r.table for r in results if r.ok]
            results += await metadata.results(ran, now=datetime.now(UTC))
        finally:
            await metadata.cancel()
    return results


async def _table(
    client: ExactClient,
    store: AsyncEngine,
    environment: Environment,
    table: str,
    *,
    until: Until,
    command: str,
    reconcile_every: timedelta | None,
    progress: Progress,
    on_reads_over: Callable[[], None] | None = None,
) -> JobResult:
    task = progress.add_task(f"{environment.name}/{table}", total=None, pages=0)
    job = TableJob(
        store=store,
        client=client,
        environment=environment,
        table=table,
        command=command,
        reconcile_every=reconcile_every,
        on_page=_advance(progress, task),
        on_reads_over=on_reads_over,
    )
    result = await run_job(job, until=until)
    progress.update(task, total=progress.tasks[task].completed)
    if not result.ok:
        progress.update(task, description=f"{environment.name}/{table} [red]parked")
    return result


def _advance(progress: Progress, task: TaskID) -> Callable[[PageProgress], None]:
    def on_page(page: PageProgress) -> None:
        shown = progress.tasks[task]
        pages = shown.fields.get("pages", 0) + 1
        if shown.total is None and page.total_estimate and page.phase in ("backfill", "resync"):
            progress.update(task, total=page.total_estimate)
        progress.update(task, advance=page.rows, pages=pages)

    return on_page


async def run_tables(
    config: Config,
    *,
    env: str | None,
    table: str | None,
    console: Any,
    until: Until,
    command: str,
    reconcile_every: timedelta | None,
) -> int:
    """Run the selected tables to `until` with progress bars; return the exit code."""
    chosen = select(config, env, table)
    with single_writer(config.store_url, command):
        store = await open_store(config)
        wiring = Wiring(config, store)
        names = [c.environment.name for c in chosen]
        ttl = config.settings.daemon.lease_seconds
        try:
            await confirm_tables(wiring, chosen)
            async with command_leases(store, names, ttl, command=command) as stores:
                with make_progress(console) as progress:
                    async with LoopLagWatch() as lag:
                        batches = await asyncio.gather(
                            *(
                                _environment(
                                    wiring,
                                    stores[c.environment.name],
                                    c,
                                    until=until,
                                    command=command,
                                    reconcile_every=reconcile_every,
                                    progress=progress,
                                )
                                for c in chosen
                            )
                        )
        finally:
            await wiring.close()
            await store.dispose()
    # The loop's worst stall: a 429 read late can let a request out inside its window.
    log.info("event_loop_lag", **lag.summary.as_dict())
    results = [r for batch in batches for r in batch]
    for result in results:
        if not result.ok:
            # Errors quote the service and the store: never read as rich markup.
            line = f"{result.environment}/{result.table}: {result.error}"
            console.print(Text(line, style="red"))
    return exit_code(results)


async def run_backfill(config: Config, *, env: str | None, table: str | None, console: Any) -> int:
    """`dvmirror backfill`: full load of each selected table; rerunning resumes."""
    return await run_tables(
        config,
        env=env,
        table=table,
        console=console,
        until="backfill",
        command="backfill",
        reconcile_every=None,
    )
