"""`dvmirror verify [--env E] [--table T] [--exact] [--repair] [--json]`: the mirror against
Dataverse (sync.verify): a day-old estimate first, exact counts per key range and a key/version
diff when needed (always under --exact), every mismatch looked at again after a delta cycle,
and with --repair the missing/stale rows refetched and the ghosts deleted.

Like `backfill`, the command holds the store's writer lock and its environments' leases (a
running daemon verifies by itself every `verify_interval`). Exit code: 0 every table matches (or
was repaired), 1 an unrepaired mismatch, a table that could not be verified or a run stopped for
the daily budget, 2 usage or the store in use, 3 authentication failed.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.commands.backfill import Selection, confirm_tables, select
from sync.commands.resync import os_user
from sync.config.model import Config
from sync.config.values import format_interval
from sync.errors import AuthError, ConfigError, DvmirrorError, ExitCode
from sync.mirror.discovery import resolve_tables
from sync.mirror.fetch import ExactClient
from sync.mirror.job import TableJob
from sync.mirror.relationships import with_relationships
from sync.mirror.runner import run_job
from sync.runtime.leases import command_leases
from sync.runtime.wiring import Wiring
from sync.store import checkpoints as state
from sync.store.audit import Actor
from sync.store.open import open_store
from sync.store.requests import request_resync
from sync.store.writer_lock import single_writer
from sync.verify.daemon_cycle import wait_for_cycle
from sync.verify.runner import TableReport, VerifyRequest, budget_is_low, verify_environment


def _catch_up(store: AsyncEngine, client: ExactClient, chosen: Selection) -> Any:
    async def cycle(table: str) -> None:
        job = TableJob(
            store=store,
            client=client,
            environment=chosen.environment,
            table=table,
            command="verify",
            reconcile_every=None,
        )
        result = await run_job(job, until="cycle")
        if not result.ok:
            raise DvmirrorError(
                f"table {table}: the delta cycle before the recheck failed: {result.error}"
            )

    return cycle


def _daemon_cycle(store: AsyncEngine, chosen: Selection) -> Any:
    environment = chosen.environment
    patience = 2 * environment.interval + 60

    async def cycle(table: str) -> None:
        await wait_for_cycle(store, environment.name, table, patience)

    return cycle


async def _environment(
    wiring: Wiring,
    store: AsyncEngine,
    chosen: Selection,
    *,
    exact: bool,
    repair: bool,
    beside_daemon: bool = False,
) -> list[TableReport] | str:
    tenant, environment = chosen.tenant, chosen.environment
    await state.close_stale_runs(store, environment.name, now=datetime.now(UTC))
    client = wiring.client(tenant, environment, wiring.governor(tenant, environment))
    async with client:
        try:
            tables = (
                chosen.tables
                or (await resolve_tables(client, environment.url, environment.tables)).tables
            )
            # And the N:N tables beside them (no metadata written here); not even that
            # discovery once less than a tenth of the day's budget is left (all stop then).
            if not chosen.named and not await budget_is_low(wiring.budget(tenant)):
                tables, _ = await with_relationships(client, None, environment, tables)
        except AuthError:
            raise
        except DvmirrorError as exc:
            return f"{environment.name}: {exc.message}"
        request = VerifyRequest(
            store=store,
            client=client,
            environment=environment,
            tables=tables,
            exact=exact,
            repair=repair,
            catch_up=_daemon_cycle(store, chosen)
            if beside_daemon
            else _catch_up(store, client, chosen),
            budget=wiring.budget(tenant),
        )
        return await verify_environment(request)


def _bytes_note(report: TableReport) -> str:
    measured = report.measured
    if not measured.key_rows or not measured.full_rows:
        return ""
    narrow = measured.key_bytes / measured.key_rows
    full = measured.full_bytes / measured.full_rows
    return (
        f"; key/version pages {narrow:,.0f} B/row = {narrow / full:.0%} of a full page's "
        f"{full:,.0f} B/row"
    )


REPAIR_HANDED_TO_DAEMON = (
    "a daemon holds the store: verifying read-only beside it; what differs is handed to the "
    "daemon as a resync (a full pass that rewrites the table and sweeps rows gone at the source)"
)
BESIDE_DAEMON = (
    "a daemon holds the store: verifying read-only beside it (mismatches are rechecked after "
    "its next cycle of each table)"
)


async def _hand_to_daemon(store: AsyncEngine, reports: list[TableReport]) -> list[str]:
    """Beside a daemon, `--repair` does not write the mirror itself: each table still
    mismatched after the daemon's next cycle gets a resync request, which the daemon holding
    the environment runs (a full pass ends with the sweep of rows gone at the source, and
    rewrites missing and stale rows). One line per request."""
    lines = []
    for report in reports:
        if report.outcome != "mismatch":
            continue
        queued = await request_resync(
            store, report.environment, report.table, actor=Actor(f"cli:verify:{os_user()}")
        )
        request = queued.request
        how = "queued" if queued.created else "already open:"
        lines.append(
            f"{report.environment}/{report.table}: {report.unrepaired} rows differ; {how} resync "
            f"#{request.id}; the daemon runs it (`dvmirror status` shows requested / running / "
            "done), then `dvmirror verify` confirms"
        )
    return lines


def describe(report: TableReport) -> str:
    """One line per table: the outcome with its figures."""
    where = f"{report.environment}/{report.table}"
    rows = f"{report.mirror_rows:,}" if report.mirror_rows is not None else "?"
    estimate = f"{report.estimate:,}" if report.estimate is not None else "unknown"
    if report.outcome == "failed":
        return f"{where}: could not verify: {report.detail}"
    if report.outcome == "stopped":
        return f"{where}: {report.detail}"
    if report.outcome == "approximate":
        return (
            f"{where}: approximately matches: {rows} mirror rows, Dataverse's estimate "
            f"{estimate} (a snapshot up to 24 h old; {report.changed_24h:,} rows changed in the "
            f"mirror in 24 h); --exact counts every range ({report.requests} requests)"
        )
    found = report.found
    counted = f"{report.ranges} key range(s) counted exactly"
    if report.level == 3:
        counted += ", keys and versions compared"
    figures = f"{rows} mirror rows, {counted}{_bytes_note(report)}, {report.requests} requests"
    if found.rows == 0:
        return f"{where}: match: {figures}"
    what = f"{len(found.missing)} missing, {len(found.ghost)} ghost, {len(found.stale)} stale"
    if report.outcome == "repaired":
        return f"{where}: repaired {report.repaired} rows ({what}): {figures}"
    left = report.unrepaired
    hint = "" if report.repaired else "; run `dvmirror verify --repair` to fix them"
    return f"{where}: MISMATCH {left} rows ({what}){hint}{_ghost_note(report)}: {figures}"


def _ghost_note(report: TableReport) -> str:
    """Why a table without change tracking has ghosts: they are not damage."""
    ghosts = len(report.found.ghost)
    if not ghosts or report.change_tracking is not False or report.repaired:
        return ""
    every = "?" if report.reconcile_interval is None else format_interval(report.reconcile_interval)
    return (
        f"; the {ghosts} ghost row(s) were deleted in Dataverse: {report.table} has no change "
        f"tracking, so the mirror learns of deletions at its reconcile (a key scan every {every}, "
        "`reconcile_interval`)"
    )


def as_json(report: TableReport) -> dict[str, Any]:
    found, measured = report.found, report.measured
    return {
        "environment": report.environment,
        "table": report.table,
        "outcome": report.outcome,
        "level": report.level,
        "approximate": report.outcome == "approximate",
        "source_estimate": report.estimate,
        "mirror_rows": report.mirror_rows,
        "changed_24h": report.changed_24h,
        "ranges": report.ranges,
        "missing": found.missing,
        "ghost": found.ghost,
        "stale": found.stale,
        "repaired": report.repaired,
        "requests": report.requests,
        "key_bytes": measured.key_bytes,
        "key_rows": measured.key_rows,
        "full_bytes": measured.full_bytes,
        "full_rows": measured.full_rows,
        "detail": report.detail,
        "change_tracking": report.change_tracking,
    }


def exit_code(reports: list[TableReport], problems: list[str]) -> int:
    if problems or any(r.outcome in ("mismatch", "failed", "stopped") for r in reports):
        return ExitCode.FAILURES
    return ExitCode.OK


async def run_verify(
    config: Config,
    *,
    env: str | None,
    table: str | None,
    exact: bool,
    repair: bool,
    json_output: bool,
    console: Any,
) -> int:
    chosen = select(config, env, table)
    names = [c.environment.name for c in chosen]
    # A repair needs the keys: the day-old estimate alone would let a table with a few rows
    # missing pass as "approximately matches" and nothing would be repaired.
    exact = exact or repair
    async with AsyncExitStack() as stack:
        beside_daemon = False
        try:
            stack.enter_context(single_writer(config.store_url, "verify"))
        except ConfigError:
            beside_daemon = True  # a daemon writes the store: verify reads beside it
        store = await open_store(config)
        stack.push_async_callback(store.dispose)
        wiring = Wiring(config, store)
        stack.push_async_callback(wiring.close)
        stores = dict.fromkeys(names, store)
        if not beside_daemon:
            try:
                stores = await stack.enter_async_context(
                    command_leases(
                        store, names, config.settings.daemon.lease_seconds, command="verify"
                    )
                )
            except ConfigError:
                beside_daemon = True
        await confirm_tables(wiring, chosen)
        if beside_daemon:
            console.print(Text(REPAIR_HANDED_TO_DAEMON if repair else BESIDE_DAEMON, style="dim"))
        batches = await asyncio.gather(
            *(
                _environment(
                    wiring,
                    stores[c.environment.name],
                    c,
                    exact=exact,
                    repair=repair and not beside_daemon,
                    beside_daemon=beside_daemon,
                )
                for c in chosen
            )
        )
        reports = [r for batch in batches if not isinstance(batch, str) for r in batch]
        handed = await _hand_to_daemon(store, reports) if repair and beside_daemon else []
    for line in handed:
        console.print(Text(line), soft_wrap=True)
    problems = [batch for batch in batches if isinstance(batch, str)]
    show(
        reports,
        problems,
        console,
        json_output=json_output,
        beside_daemon=beside_daemon,
        handed=bool(handed),
    )
    return exit_code(reports, problems)


def _tables(count: int) -> str:
    return f"{count} table" if count == 1 else f"{count} tables"


def show(
    reports: list[TableReport],
    problems: list[str],
    console: Any,
    *,
    json_output: bool,
    beside_daemon: bool,
    handed: bool = False,
) -> None:
    """The run's result: one JSON document, or a line per table and a summary."""
    if json_output:
        document = {"tables": [as_json(r) for r in reports], "problems": problems}
        console.print(Text(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()))
    else:
        for report in reports:
            style = "red" if report.outcome in ("mismatch", "failed", "stopped") else None
            console.print(Text(describe(report), style=style or ""))
        for problem in problems:
            console.print(Text(problem, style="red"))
        code = exit_code(reports, problems)
        if beside_daemon and not handed and any(r.outcome == "mismatch" for r in reports):
            console.print(
                Text("`dvmirror verify --repair` hands them to the daemon as resync requests")
            )
        total = sum(r.mirror_rows or 0 for r in reports)
        if code == ExitCode.OK and all(r.outcome == "match" for r in reports):
            console.print(Text(f"all tables match ({_tables(len(reports))}, {total:,} rows)"))
        elif code == ExitCode.OK:
            console.print(Text(f"no mismatch left ({_tables(len(reports))}, {total:,} rows)"))
