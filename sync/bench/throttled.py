"""`dvmirror bench --scenario FILE`: throughput under service protection, governed vs naive.

Starts the built-in simulator, then reads the first environment's first table twice, each
time for `duration` seconds, with the simulator's protection windows and counters reset in
between (each client starts from an empty window):

- governed: `workers` concurrent scans through one shared governor (the way the daemon reads);
- naive: one worker that just sleeps Retry-After on a 429 and tries again.

At the deadline neither client sends anything new (the governor is closed; the naive loop
stops), requests already sent finish, and their rows count. rows/s is the rows read divided by
the wall time from the first request to the last response. For each client it prints that,
the ratio to the ceiling the simulator computes from its limits, 429s per 1,000 requests, and
violations (requests sent inside a Retry-After window; must be 0 for the governed client).
A benchmark prints figures; it is not a timed test.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.table import Table

from sync.config.model import Config, Environment, Tenant, load_config
from sync.dataverse.auth import TokenProviders
from sync.dataverse.client import DataverseClient, ssl_context
from sync.dataverse.odata import api_url, collection_url, request_headers
from sync.governor.gate import Governor, GovernorClosedError
from sync.logs import configure_logging
from sync.simulator.process import start_simulator, stop_simulator


@dataclass(frozen=True)
class RunFigures:
    name: str
    rows: int
    seconds: float
    requests: int
    throttled: int
    violations: int
    ceiling: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.rows_per_second / self.ceiling if self.ceiling else 0.0

    @property
    def throttled_per_1000(self) -> float:
        return 1000.0 * self.throttled / self.requests if self.requests else 0.0


async def run_bench(
    scenario_path: Path,
    *,
    console: Any,
    duration: float = 45.0,
    workers: int = 8,
    log_level: str | None = "warning",
) -> int:
    """Run both clients against a fresh simulator; print the figures. 0 if no violations.

    `log_level` configures logging for the process (warnings only by default, so throttling
    events don't drown the table); None leaves it as it is.
    """
    if log_level is not None:
        configure_logging(log_level)
    with tempfile.TemporaryDirectory(prefix="dvmirror-bench-") as state_dir:
        process, ready = await start_simulator(scenario_path, Path(state_dir))
        try:
            results = await bench(ready, duration=duration, workers=workers)
        finally:
            await stop_simulator(process)
    console.print(render(results))
    return 0 if results[0].violations == 0 else 1


async def bench(ready: dict[str, Any], *, duration: float, workers: int) -> list[RunFigures]:
    config = load_config(ready["config_file"], {})
    tenant, environment = config.environments()[0]
    table = environment.tables[0] if environment.tables != "all" else "account"
    providers = TokenProviders(config)
    async with aiohttp.ClientSession() as admin:
        await _admin(admin, ready, "POST", "/stats/reset")
        governed_rows, seconds = await governed_run(
            config, providers, tenant, environment, table, duration, workers
        )
        governed = await _figures(admin, ready, environment, "governed", governed_rows, seconds)
        await _admin(admin, ready, "POST", "/stats/reset")
        naive_rows, seconds = await naive_run(
            config, providers, tenant, environment, table, duration
        )
        naive = await _figures(admin, ready, environment, "naive", naive_rows, seconds)
    return [governed, naive]


async def entity_set_of(client: DataverseClient, table: str) -> str:
    document = await client.get(
        api_url(
            client.environment.url,
            f"EntityDefinitions(LogicalName='{table}')?$select=EntitySetName",
        )
    )
    return str(document["EntitySetName"])


async def governed_run(  # noqa: PLR0917 - a benchmark step, called once
    config: Config,
    providers: TokenProviders,
    tenant: Tenant,
    environment: Environment,
    table: str,
    duration: float,
    workers: int,
) -> tuple[int, float]:
    """`workers` full scans in a loop, sharing one governor, until `duration` passes."""
    governor = Governor(environment.name, cap=environment.max_concurrency or 52)
    app = config.app_for(tenant)
    async with DataverseClient(
        tenant, environment, providers.for_tenant(tenant), governor, ca_bundle=app.ca_bundle
    ) as client:
        entity_set = await entity_set_of(client, table)
        url = collection_url(environment.url, entity_set)
        started = time.monotonic()
        rows = 0

        async def worker() -> None:
            nonlocal rows
            with contextlib.suppress(GovernorClosedError):
                while True:
                    async for page in client.pages(url, table=table):
                        rows += len(page.rows)

        async def close_at_deadline() -> None:
            await asyncio.sleep(duration)
            governor.close()  # nothing new leaves; requests already sent finish and count

        closer = asyncio.create_task(close_at_deadline())
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            closer.cancel()
        return rows, time.monotonic() - started


async def naive_run(  # noqa: PLR0917 - a benchmark step, called once
    config: Config,
    providers: TokenProviders,
    tenant: Tenant,
    environment: Environment,
    table: str,
    duration: float,
) -> tuple[int, float]:
    """One worker that sleeps Retry-After on a 429 and otherwise never slows down."""
    app = config.app_for(tenant)
    tokens = providers.for_tenant(tenant)
    scope = f"{environment.url}/.default"
    connector = aiohttp.TCPConnector(ssl=ssl_context(app.ca_bundle))
    headers = request_headers(page_size=environment.page_size)
    rows = 0
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        probe = Governor("naive-metadata")
        async with DataverseClient(
            tenant, environment, tokens, probe, ca_bundle=app.ca_bundle
        ) as c:
            first = collection_url(environment.url, await entity_set_of(c, table))
        started = time.monotonic()
        deadline = started + duration
        url: str | None = first
        while time.monotonic() < deadline:
            token = await tokens.token(scope)
            async with session.get(
                url or first, headers={**headers, "Authorization": f"Bearer {token}"}
            ) as response:
                body = await response.read()
                if response.status == 429:
                    retry_after = float(response.headers.get("Retry-After", "1"))
                    await asyncio.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))
                    continue
                if response.status != 200:
                    continue
            with contextlib.suppress(orjson.JSONDecodeError):
                document = orjson.loads(body)
                rows += len(document.get("value", []))
                url = document.get("@odata.nextLink")
    return rows, time.monotonic() - started


async def _admin(
    session: aiohttp.ClientSession, ready: dict[str, Any], method: str, path: str
) -> Any:
    async with session.request(method, f"{ready['admin_url']}{path}") as response:
        return await response.json()


async def _figures(  # noqa: PLR0917 - internal helper
    session: aiohttp.ClientSession,
    ready: dict[str, Any],
    environment: Environment,
    name: str,
    rows: int,
    seconds: float,
) -> RunFigures:
    stats = await _admin(session, ready, "GET", "/stats")
    entry = next(
        u
        for u in stats["users"]
        if u["environment"] == environment.name and u["client_id"] == ready["client_id"]
    )
    ceiling = entry.get("ceiling_rows_per_second_observed_page") or entry["ceiling_rows_per_second"]
    return RunFigures(
        name=name,
        rows=rows,
        seconds=seconds,
        requests=int(entry["requests"]),
        throttled=int(entry.get("throttled_total", 0)),
        violations=int(entry["violations"]),
        ceiling=float(ceiling),
    )


def render(results: list[RunFigures]) -> Table:
    """One row per figure, one column per client: fits an 80-column terminal."""
    table = Table(title="dvmirror bench")
    table.add_column("figure")
    for r in results:
        table.add_column(r.name, justify="right")
    figures: list[tuple[str, Any]] = [
        ("rows", lambda r: f"{r.rows:,}"),
        ("seconds", lambda r: f"{r.seconds:.1f}"),
        ("rows/s", lambda r: f"{r.rows_per_second:,.0f}"),
        ("ceiling rows/s", lambda r: f"{r.ceiling:,.0f}"),
        ("ratio", lambda r: f"{r.ratio:.2f}"),
        ("requests", lambda r: f"{r.requests:,}"),
        ("429s", lambda r: f"{r.throttled:,}"),
        ("429s per 1,000", lambda r: f"{r.throttled_per_1000:.1f}"),
        ("violations", lambda r: f"{r.violations}"),
    ]
    for label, show in figures:
        table.add_row(label, *(show(r) for r in results))
    return table
