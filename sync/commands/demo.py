"""`dvmirror demo`: the daemon against the built-in simulator, with churn, in about 30 seconds.

It starts the simulator's demo scenario (2 tenants, 3 environments), runs the real daemon
against it while the simulator's data changes, shows live progress, then lets every table
catch up, checks each mirror against the simulator's own rows, prints the status table and
where the mirror database is, and exits 0 when everything converged.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from sync.commands.demo_compare import Comparison, compare_table
from sync.commands.status import run_status
from sync.config.loading import load_config
from sync.config.model import Config
from sync.mirror.job_types import PageProgress
from sync.runtime.daemon import Daemon
from sync.simulator.process import start_simulator, stop_simulator
from sync.store.connect import create_engine
from sync.store.dialects import dialect_for

CHURN_EVERY = 2.0
CATCH_UP_LIMIT = 60.0


class DemoProgress:
    """Rows mirrored per table, fed by the daemon's page callback."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], int] = defaultdict(int)
        self.deleted: dict[tuple[str, str], int] = defaultdict(int)
        self.pages: dict[tuple[str, str], int] = defaultdict(int)
        self.phase: dict[tuple[str, str], str] = {}
        self.churned = 0

    def on_page(self, page: PageProgress) -> None:
        key = (page.environment, page.table)
        self.rows[key] += page.rows
        self.deleted[key] += page.deleted
        self.pages[key] += 1
        self.phase[key] = page.phase

    def render(self, daemon: Daemon, elapsed: float, duration: float, stage: str) -> Group:
        table = Table(title=f"dvmirror demo — {stage}", expand=False)
        for column in ("environment", "table", "phase", "rows upserted", "deleted", "pages"):
            justify: JustifyMethod = "right" if column[0] in "rdp" else "left"
            table.add_column(column, justify=justify, overflow="fold")  # wrap, never cut ids
        for (env, name), rows in sorted(self.rows.items()):
            key = (env, name)
            table.add_row(
                env,
                name,
                self.phase.get(key, ""),
                f"{rows:,}",
                f"{self.deleted[key]:,}",
                str(self.pages[key]),
            )
        governors = []
        if daemon.scheduler is not None:
            for name, item in sorted(daemon.scheduler.groups.items()):
                snap = item.group.governor.snapshot()
                throttled = sum(snap.get("throttled", {}).values())
                governors.append(
                    f"{name}: {snap.get('requests', 0)} requests, {throttled} throttled, "
                    f"concurrency {snap.get('concurrency_limit')}"
                )
        footer = Text(
            f"{elapsed:4.0f}s / {duration:.0f}s · churn batches sent: {self.churned}\n"
            + "\n".join(governors),
            style="dim",
        )
        return Group(table, footer)


async def churn(ready: dict[str, Any], progress: DemoProgress, stop: asyncio.Event) -> None:
    """Create, update and delete rows in random tables while the daemon runs."""
    targets = [
        (env["name"], table)
        for tenant in ready["tenants"]
        for env in tenant["environments"]
        for table in env["tables"]
    ]
    rng = random.Random(7)
    async with aiohttp.ClientSession(base_url=ready["admin_url"]) as session:
        while not stop.is_set():
            env, table = rng.choice(targets)
            body = {"creates": 5, "updates": 10, "deletes": 2, "seed": rng.randrange(1 << 30)}
            async with session.post(
                f"/environments/{env}/tables/{table}/churn", json=body
            ) as response:
                response.raise_for_status()
            progress.churned += 1
            try:
                async with asyncio.timeout(CHURN_EVERY):
                    await stop.wait()
            except TimeoutError:
                continue


async def source_count(ready: dict[str, Any], env: str, table: str) -> int:
    async with (
        aiohttp.ClientSession(base_url=ready["admin_url"]) as session,
        session.get(f"/environments/{env}/tables/{table}/rows") as response,
    ):
        response.raise_for_status()
        return sum(1 for line in (await response.read()).splitlines() if line.strip())


async def mirror_count(config: Config, env: str, table: str) -> int | None:
    """Rows in the mirror table; None while its first cycle has not created it yet."""
    engine = create_engine(config.store_url)
    try:
        async with engine.connect() as conn:
            name = dialect_for(engine).table_ref(env, table)
            try:
                result = await conn.execute(text(f"SELECT count(*) FROM {name}"))  # noqa: S608
            except (OperationalError, ProgrammingError):  # no such table: not synced yet
                return None
            return int(result.scalar_one())
    finally:
        await engine.dispose()


async def compare(config: Config, ready: dict[str, Any]) -> list[tuple[str, str, int, int | None]]:
    rows = []
    for tenant in ready["tenants"]:
        for env in tenant["environments"]:
            for table in env["tables"]:
                rows.append(
                    (
                        env["name"],
                        table,
                        await source_count(ready, env["name"], table),
                        await mirror_count(config, env["name"], table),
                    )
                )
    return rows


async def run_demo(
    console: Console, *, directory: Path, duration: float = 30.0, console_port: int | None = None
) -> int:
    """Run the whole demo; 0 when every mirror matches its source at the end.

    With `console_port` (0: any free port), the web console runs beside the daemon, and after
    the check both stay up, printing the URL and who to sign in as, until Ctrl-C."""
    if directory.exists():
        shutil.rmtree(directory)
    console.print(f"[bold]dvmirror demo[/]: starting the built-in simulator in {directory}")
    process, ready = await start_simulator("demo", directory / "simulator")
    try:
        return await _with_simulator(console, ready, duration, console_port)
    finally:
        await stop_simulator(process)


async def _with_simulator(
    console: Console, ready: dict[str, Any], duration: float, console_port: int | None
) -> int:
    sidecars: list[Any] = []
    if console_port is None:
        config = load_config(ready["config_file"])
    else:
        from sync.commands.console import console_sidecar
        from sync.commands.demo_console import pick_port, write_console_config

        port = pick_port(console_port)
        config = load_config(write_console_config(Path(ready["config_file"]), port))
        sidecars.append(console_sidecar)
    environments = sum(len(t["environments"]) for t in ready["tenants"])
    console.print(
        f"simulated Dataverse: {len(ready['tenants'])} tenants, {environments} environments; "
        f"mirror: {config.store_url.removeprefix('sqlite+aiosqlite:///')}"
    )
    progress = DemoProgress()
    daemon = Daemon(config, on_page=progress.on_page, handle_signals=False, sidecars=sidecars)
    stop_churn = asyncio.Event()
    started = time.monotonic()
    daemon_task = asyncio.create_task(daemon.run())
    churn_task = asyncio.create_task(churn(ready, progress, stop_churn))
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while (elapsed := time.monotonic() - started) < duration and not daemon_task.done():
                live.update(progress.render(daemon, elapsed, duration, "syncing with churn"))
                await asyncio.sleep(0.25)
            stop_churn.set()
            await churn_task
            if daemon_task.done() and sidecars:
                daemon_task.result()  # the console could not start: its one-line error
            converged = await _catch_up(
                config, ready, daemon, progress, live=live, duration=duration
            )
        if sidecars:
            code = await _report(console, config, ready, converged)
            await _serve_console(console, config, ready, daemon_task)
            return code
    finally:
        stop_churn.set()
        daemon.request_stop("demo finished")
        await asyncio.gather(daemon_task, churn_task, return_exceptions=True)
    return await _report(console, config, ready, converged)


async def _serve_console(
    console: Console, config: Config, ready: dict[str, Any], daemon_task: asyncio.Task[int]
) -> None:
    """Keep the daemon and its console up until Ctrl-C, saying where and as whom to sign in."""
    from sync.commands.demo_console import sign_in_lines, wait_for_interrupt

    assert config.console is not None
    console.print(
        f"\n[bold]Web console[/]: {config.console.public_url}  (sign in as any of these; "
        "the simulator's page lets you pick)",
        soft_wrap=True,
    )
    for line in sign_in_lines(ready):
        console.print(Text(f"  {line}"), soft_wrap=True, highlight=False)
    database = config.store_url.removeprefix("sqlite+aiosqlite:///")
    first_env = ready["tenants"][0]["environments"][0]["name"]
    verify = f"dvmirror --config {config.path} verify"
    for line in (
        "Meanwhile, in another terminal, check the mirror against the source:",
        f"  {verify} --exact",
        f"then `DELETE FROM {first_env}__account WHERE rowid <= 5` in {database} and",  # noqa: S608 - for the user to type
        f"  {verify} --repair",
        "hands the table to the daemon as a resync: `--exact` again shows the rows back.",
    ):
        console.print(Text(line), soft_wrap=True, highlight=False)
    console.print("The daemon keeps syncing. Press Ctrl-C to stop.", soft_wrap=True)
    interrupted = asyncio.create_task(wait_for_interrupt())
    await asyncio.wait({interrupted, daemon_task}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    console.print("stopping the daemon and the console")


async def _report(
    console: Console, config: Config, ready: dict[str, Any], converged: Comparison | None
) -> int:
    console.print()
    await run_status(config, as_json=False, console=console)
    database = config.store_url.removeprefix("sqlite+aiosqlite:///")
    first_env = ready["tenants"][0]["environments"][0]["name"]
    console.print(f"\nThe mirror is [bold]{database}[/]. Try:")
    # Money and Decimal columns hold exact decimal text in SQLite: CAST to sort or sum them.
    example = (  # for the user to type, not a query we run
        f"SELECT name, revenue, statecode__label, _dv_synced_at FROM {first_env}__account "  # noqa: S608
        "ORDER BY CAST(revenue AS REAL) DESC LIMIT 5"
    )
    console.print(f"  sqlite3 {database} \\\n    '{example}'", soft_wrap=True, highlight=False)
    if converged is None:
        console.print("[red]some tables did not catch up with the source in time")
        return 1
    if converged.problems:
        console.print("[red]the mirror differs from its source:", soft_wrap=True)
        for problem in converged.problems:
            console.print(Text(f"  {problem}"), soft_wrap=True, highlight=False)
        return 1
    console.print(
        f"[green]every mirror table matches its source, column by column "
        f"({converged.rows:,} rows, {converged.values:,} values compared).",
        soft_wrap=True,
    )
    return 0


async def _catch_up(
    config: Config,
    ready: dict[str, Any],
    daemon: Daemon,
    progress: DemoProgress,
    *,
    live: Live,
    duration: float,
) -> Comparison | None:
    """Give the daemon time to catch up after churn stops: once every row count matches, compare
    every table column by column (and keep waiting while values still differ). None when the
    counts never matched in time; otherwise the last comparison (its problems, if any)."""
    deadline = time.monotonic() + CATCH_UP_LIMIT
    last: Comparison | None = None
    while time.monotonic() < deadline:
        live.update(progress.render(daemon, duration, duration, "catching up"))
        counts = await compare(config, ready)
        if all(source == mirror for _, _, source, mirror in counts):
            last = await compare_columns(config, ready)
            if not last.problems:
                return last
        await asyncio.sleep(1.0)
    return last


async def compare_columns(config: Config, ready: dict[str, Any]) -> Comparison:
    """Every table of every environment against its source, column by column."""
    total = Comparison()
    engine = create_engine(config.store_url)
    try:
        for tenant in ready["tenants"]:
            for env in tenant["environments"]:
                for table in env["tables"]:
                    found = await compare_table(
                        engine, ready["admin_url"], env["name"], table, key=f"{table}id"
                    )
                    total.rows += found.rows
                    total.values += found.values
                    total.problems += found.problems
    finally:
        await engine.dispose()
    return total
