"""`dvmirror bench --scenario latency|throttled|store|cpu|FILE [--postgres URL]`: dvmirror backfill
against a plain reader, and into PostgreSQL against into SQLite.

One run, one simulator (sync.bench.world builds its scenario), parts measured one after the
other, each with its own application user, so no part eats another's service-protection budget:

- *tables*: a plain concurrent reader (sync.bench.reader: one nextLink chain per table, all at
  once, writing nothing) is the reference for `dvmirror backfill` of the same tables;
- *big table* (when the scenario has a second environment): its one table read by one plain
  chain, against `dvmirror backfill` of it (which reads key ranges concurrently when the table
  is above `split_rows`).

With `--postgres URL` each part gets one more side: `dvmirror backfill` of the same tables into
a fresh PostgreSQL database on that server (sync.bench.postgres: created for the side, dropped
at the end), as its own application user, right after the backfill into SQLite. Both backfills
are the same command with the same configuration but for `[store] url` and the user, each into
an empty store (migrations included); the table adds their ratio, PostgreSQL ÷ SQLite.

With two CPUs or more the simulator runs on one and the client side (this process, which
hosts the plain reader, and the dvmirror children) on the others, for every side alike
(sync.bench.cores), so that a side that works locally does not also take the simulator's CPU.

`dvmirror backfill` is the real command line in a child process, with a generated
configuration and a fresh data directory; its seconds are the child's wall time, start-up,
migrations and discovery included. For each side the bench prints rows, seconds, rows/s, the
ratio to the part's reference, the share of the ceiling the simulator's limits allow (sustained
full pages: a read shorter than the window can burst above it), requests, peak concurrency,
429s and Retry-After violations (the simulator's /stats for that user), dvmirror's peak RSS,
and whether each mirror equals its source, column by column (sync.commands.demo_compare).
Exit 1 when a mirror differs, a read is short, dvmirror fails or any Retry-After was violated.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from sqlalchemy import text

from sync.bench.child import run_dvmirror
from sync.bench.cores import plan, running_on
from sync.bench.postgres import bench_databases
from sync.bench.reader import ReadResult, read_tables
from sync.bench.report import NOTES, PG_NOTE, render
from sync.bench.rounds import Round, median_round, reader_first, summary_lines
from sync.bench.side import POSTGRESQL, SQLITE, Side
from sync.bench.world import (
    MIRROR_APP,
    POSTGRES_APP,
    READER_APP,
    Part,
    World,
    build_world,
    mirror_config,
    sqlite_url,
)
from sync.commands.demo_compare import compare_table
from sync.errors import ExitCode
from sync.simulator.process import start_simulator, stop_simulator
from sync.store.connect import create_engine
from sync.store.dialects import dialect_for
from sync.store.layout import TableSchema

T = TypeVar("T")


def say(console: Any, line: str) -> None:
    """A progress line, printed as it is (no rich markup: names have brackets)."""
    console.print(line, markup=False, highlight=False)


async def admin(ready: Mapping[str, Any], path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{ready['admin_url']}{path}") as response,
    ):
        return await response.json()


async def admin_post(ready: Mapping[str, Any], path: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{ready['admin_url']}{path}") as response,
    ):
        response.raise_for_status()


async def user_stats(ready: Mapping[str, Any], environment: str, client_id: str) -> dict[str, Any]:
    """The simulator's counters for one application user in one environment."""
    for entry in (await admin(ready, "/stats"))["users"]:
        if entry["environment"] == environment and entry["client_id"] == client_id:
            return dict(entry)
    return {}


async def with_progress(
    work: Awaitable[T],
    *,
    ready: Mapping[str, Any],
    side: Side,
    client_id: str,
    console: Any,
    every: float,
) -> T:
    """Await `work`, printing the rows the simulator served to that user every `every` s."""
    started = time.monotonic()

    async def report() -> None:
        while True:
            await asyncio.sleep(every)
            served = (await user_stats(ready, side.part.environment, client_id)).get(
                "rows_served", 0
            )
            say(
                console,
                f"  … {side.name}: {served:,} rows served for a table of {side.part.rows:,}"
                f" (key-only pages count too) after {time.monotonic() - started:.0f} s",
            )

    ticker = asyncio.create_task(report())
    try:
        return await work
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await ticker


async def measure_reader(
    ready: Mapping[str, Any], world: World, part: Part, *, console: Any, every: float
) -> tuple[Side, dict[str, TableSchema]]:
    chains = "one chain" if len(part.tables) == 1 else f"{len(part.tables)} chains at once"
    side = Side(part, f"plain reader ({chains})")
    say(console, f"[{part.title}] {side.name} …")
    cpu_started = time.process_time()  # this process: the reader runs in it
    result, schemas = await with_progress(
        read_tables(
            ready,
            environment=part.environment,
            tables=[name for name, _ in part.tables],
            client_id=READER_APP,
            page_size=world.page_size,
        ),
        ready=ready,
        side=side,
        client_id=READER_APP,
        console=console,
        every=every,
    )
    side.cpu_seconds = time.process_time() - cpu_started
    side.rows, side.seconds = result.total, result.seconds
    side.stats = await user_stats(ready, part.environment, READER_APP)
    side.active_seconds = await since_first_arrival(
        ready, part.environment, READER_APP, result.ended
    )
    side.check = _reader_check(part, result, side.failures)
    say(console, f"[{part.title}] {side.name}: {side.rows:,} rows in {side.seconds:.1f} s")
    return side, schemas


def _reader_check(part: Part, result: ReadResult, failures: list[str]) -> str:
    short = [
        f"{t} {result.rows.get(t, 0):,}/{rows:,}"
        for t, rows in part.tables
        if result.rows.get(t, 0) != rows
    ]
    if short:
        failures.append(f"the plain reader read too few or too many rows: {', '.join(short)}")
        return "SHORT: " + ", ".join(short)
    return "every row read"


async def measure_dvmirror(
    ready: Mapping[str, Any],
    world: World,
    part: Part,
    reference: Side | None,
    directory: Path,
    *,
    store_url: str,
    store: str,
    client_id: str,
    console: Any,
    every: float,
    max_seconds: float,
) -> Side:
    how = "" if part.split_rows is None else f", split_rows {part.split_rows:,}"
    side = Side(part, f"dvmirror backfill → {store}{how}", reference=reference, store=store)
    directory.mkdir(parents=True)
    config = directory / "dvmirror.toml"
    config.write_text(
        mirror_config(
            ready,
            part,
            directory / "data",
            page_size=world.page_size,
            store_url=store_url,
            client_id=client_id,
        ),
        encoding="utf-8",
    )
    say(console, f"[{part.title}] {side.name} …")
    args = ["--config", str(config), "--log-level", "warning", "backfill"]
    child = await with_progress(
        run_dvmirror(
            [*args, "--env", part.environment],
            log=directory / "output.log",
            max_seconds=max_seconds,
        ),
        ready=ready,
        side=side,
        client_id=client_id,
        console=console,
        every=every,
    )
    ended = time.monotonic()
    side.child, side.seconds, side.cpu_seconds = child, child.seconds, child.cpu_seconds
    side.stats = await user_stats(ready, part.environment, client_id)
    side.active_seconds = await since_first_arrival(ready, part.environment, client_id, ended)
    if child.returncode != 0:
        side.failures.append(
            f"dvmirror backfill exited with {child.returncode}:\n{child.log_tail()}"
        )
    say(console, f"[{part.title}] {side.name}: exit {child.returncode} after {side.seconds:.1f} s")
    return side


async def since_first_arrival(
    ready: Mapping[str, Any], environment: str, client_id: str, ended: float
) -> float | None:
    """Seconds from the user's first request at the simulator to `ended` (time.monotonic())."""
    try:
        log = await admin(ready, f"/environments/{environment}/arrivals?client_id={client_id}")
    except aiohttp.ClientError:
        return None
    arrivals = log.get("arrivals") or []
    return ended - min(arrivals) if arrivals else None


async def check_mirror(
    ready: Mapping[str, Any], side: Side, schemas: Mapping[str, TableSchema], store_url: str
) -> None:
    """Count the mirror's rows and compare it with the source, column by column."""
    engine = create_engine(store_url)
    environment = side.part.environment
    try:
        values = 0
        problems: list[str] = []
        for table, _ in side.part.tables:
            name = dialect_for(engine).table_ref(environment, table)
            try:
                async with engine.connect() as conn:
                    count = (await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one()  # noqa: S608
            except Exception:  # noqa: BLE001 - no mirror table is a difference like any other
                count = 0
            side.rows += int(count)
            found = await compare_table(
                engine, ready["admin_url"], environment, table, key=schemas[table].primary_key
            )
            values += found.values
            problems += found.problems
    finally:
        await engine.dispose()
    if problems:
        side.failures.append("the mirror differs from its source: " + "; ".join(problems[:5]))
        side.check = f"DIFFERS ({len(problems)}+ problems)"
    else:
        side.check = f"equal ({values:,} values)"


async def run_side_by_side(
    scenario: str | Path,
    *,
    console: Any,
    rows_scale: float = 1.0,
    progress_every: float = 30.0,
    max_seconds: float = 4 * 3600,
    postgres: str | None = None,
    rounds_wanted: int = 1,
) -> int:
    """Run every part of the bench; print the figures. 0, or 1 if anything is wrong.

    With `postgres` (a PostgreSQL URL), each part also backfills into a fresh database on that
    server (sync.bench.postgres), dropped at the end. With `rounds_wanted` above 1, each part
    is measured that many times (sync.bench.rounds): the table shows the median round, every
    round is checked and counts for the exit code."""
    world = build_world(scenario, scale=rows_scale)
    _describe(world, console)
    sides: list[Side] = []  # the table's: the median round of each part
    failed: list[Side] = []  # every round's, for the exit code
    summaries: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        databases: dict[str, str] = {}  # part → URL of its fresh PostgreSQL database
        fresh_database = None
        if postgres is not None:
            fresh_database = await stack.enter_async_context(bench_databases(postgres))
            for part in world.parts:  # a server or privilege problem shows before any work
                databases[part.key] = await fresh_database(part.key)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dvmirror-bench-")))
        scenario_file = workdir / "scenario.toml"
        scenario_file.write_text(world.scenario_toml(), encoding="utf-8")
        split = plan()
        if split is not None:
            say(console, f"  {split.describe()}")
        with running_on(split.server if split else None):  # the simulator's threads inherit it
            process, ready = await start_simulator(scenario_file, workdir / "simulator")
        stack.enter_context(running_on(split.client if split else None))
        try:
            run = BenchRun(
                ready, world, workdir, console, progress_every, max_seconds, fresh_database
            )
            measured = [
                (part, await run.rounds_of(part, databases.get(part.key), rounds_wanted))
                for part in world.parts
            ]
            say(console, "comparing each mirror with its source, column by column …")
            for check in run.checks:  # dvmirror's rows are counted here
                await check()
            for part, read in measured:
                sides += read[median_round([Round(r) for r in read])]
                summaries += summary_lines(part.title, [Round(r) for r in read])
                failed += [s for r in read for s in r]
        finally:
            await stop_simulator(process)
    console.print(render(world, sides))
    for note in NOTES:
        say(console, note)
    if postgres is not None:
        say(console, PG_NOTE)
    for line in summaries:
        say(console, line)
    failures = [f"{s.part.title}, {s.name}: {f}" for s in failed for f in s.failures]
    failures += [
        f"{s.part.title}, {s.name}: {s.violations} Retry-After violations"
        for s in failed
        if s.violations
    ]
    failures += [
        f"{s.part.title}, {s.name}: {s.strict_violations} requests inside a Retry-After window"
        for s in failed
        if s.strict_violations and not s.violations and s.child is not None
    ]
    for failure in failures:
        say(console, f"FAILED: {failure}")
    return ExitCode.FAILURES if failures else ExitCode.OK


@dataclass
class BenchRun:
    """What every part's rounds share: the simulator, the work directory, the mirror checks
    to run once every round is measured."""

    ready: Mapping[str, Any]
    world: World
    workdir: Path
    console: Any
    every: float
    max_seconds: float
    fresh_database: Callable[[str], Awaitable[str]] | None  # --postgres: a new empty database
    checks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def rounds_of(self, part: Part, database: str | None, wanted: int) -> list[list[Side]]:
        """`wanted` rounds of `part`, each with fresh simulator counters and fresh stores."""
        rounds = []
        for number in range(1, wanted + 1):
            suffix = ""
            if wanted > 1:
                say(self.console, f"[{part.title}] round {number} of {wanted}")
                suffix = f"-round{number}"
            if number > 1:
                await admin_post(self.ready, "/stats/reset")  # this round's users start again
                if database is not None and self.fresh_database is not None:
                    database = await self.fresh_database(f"{part.key}_round{number}")
            first = reader_first(number)  # alternates: drift must not favour one side
            rounds.append(await self.round_of(part, suffix, database, reader_first=first))
        return rounds

    async def round_of(
        self, part: Part, suffix: str, database: str | None, *, reader_first: bool = True
    ) -> list[Side]:
        """The plain reader and dvmirror into SQLite (and PostgreSQL), in that order or, with
        `reader_first` false, dvmirror first: the simulator process serves every round, so
        whatever drifts in it over a run (its heap, the host's other load) must not always
        favour the same side."""
        stores = [(SQLITE, sqlite_url(self.workdir / f"{part.key}{suffix}" / "data"), MIRROR_APP)]
        if database is not None:
            stores.append((POSTGRESQL, database, POSTGRES_APP))
        if reader_first:
            reader, schemas = await self.reader_of(part)
            mirrors = [await self.mirror_of(part, suffix, s, reader) for s in stores]
        else:
            mirrors = [await self.mirror_of(part, suffix, s, None) for s in stores]
            reader, schemas = await self.reader_of(part)
        for index, (mirror, (_store, url, _client)) in enumerate(zip(mirrors, stores, strict=True)):
            mirror.reference = reader
            mirror.baseline = mirrors[0] if index else None
            self.checks.append(partial(check_mirror, self.ready, mirror, schemas, url))
        return [reader, *mirrors]

    async def reader_of(self, part: Part) -> tuple[Side, dict[str, TableSchema]]:
        return await measure_reader(
            self.ready, self.world, part, console=self.console, every=self.every
        )

    async def mirror_of(
        self, part: Part, suffix: str, store: tuple[str, str, str], reader: Side | None
    ) -> Side:
        kind, url, client_id = store
        name = part.key if kind == SQLITE else f"{part.key}-postgres"
        return await measure_dvmirror(
            self.ready,
            self.world,
            part,
            reader,
            self.workdir / f"{name}{suffix}",
            store_url=url,
            store=kind,
            client_id=client_id,
            console=self.console,
            every=self.every,
            max_seconds=self.max_seconds,
        )


def _describe(world: World, console: Any) -> None:
    say(
        console,
        f"dvmirror bench: scenario {world.name}, rows scale {world.scale:g}, "
        f"page size {world.page_size:,}",
    )
    for part in world.parts:
        limits = part.limits
        tables = ", ".join(f"{t} {rows:,}" for t, rows in part.tables)
        say(console, f"  {part.title}, environment {part.environment}: {tables} rows")
        say(
            console,
            f"    a full page takes {limits.execution_time(world.page_size):.2f} s of server time "
            f"({limits.base_ms:g} ms + {limits.per_row_ms:g} ms per row); per user "
            f"{limits.requests:,} requests and {limits.execution_seconds:,g} s of execution per "
            f"{limits.window:g} s, {limits.concurrency} concurrent: a ceiling of "
            f"{limits.ceiling_rows_per_second(world.page_size):,.0f} rows/s",
        )
