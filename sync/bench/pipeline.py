"""Pipeline benchmark: prints figures, measured in one run (ratios, not absolute times).

1. Local pipeline (no network, no throttling): page bytes → decode (exact decimals) → typed
   tuples → one transaction per page through the real writer (SQLAlchemy async + aiosqlite),
   divided by a plain `sqlite3` `executemany` upsert of the same tuples into a table of the
   same shape (same DDL, same upsert statement), one transaction per page too, with the
   connection settings read back from our store's engine (WAL, synchronous, cache size, …), so
   the ratio measures our pipeline's overhead, not different durability. The two sides
   alternate for a few rounds; the median ratio is reported. Aim: ≥ 0.7.
2. Peak RSS of a child process backfilling a large table from the simulator over HTTPS
   (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`). Aim: < 250 MB, bounded by page size.
   Runs only when `rss_rows` > 0 and the simulator can be started.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.sql.expression import Executable

from sync.mirror.decode_workers import DecodePool
from sync.mirror.fetch import decode_rows
from sync.mirror.job_types import stamp
from sync.mirror.page import DecodedPage, decode_page
from sync.mirror.rowshape import RowShaper
from sync.mirror.typemap import build_schema
from sync.store.checkpoints import TableState, checkpoint_statements, ensure
from sync.store.connect import create_engine
from sync.store.dialects.sqlite import SqliteTable, create_table_sql
from sync.store.layout import TableSchema
from sync.store.migrate import upgrade
from sync.store.mirror_tables import ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page

PAGE = 5000
ENVIRONMENT = "bench"
FORMATTED = "@OData.Community.Display.V1.FormattedValue"
LOOKUP = "@Microsoft.Dynamics.CRM.lookuplogicalname"
BENCH_POOL = DecodePool()  # the bench's own decode worker (as a command's Wiring owns one)


def bench_schema() -> TableSchema:
    """An account-like table: text, memo, integers, money, double, choices, lookups, dates."""

    def attr(name: str, kind: str, type_name: str = "") -> dict[str, Any]:
        return {
            "LogicalName": name,
            "AttributeType": kind,
            "AttributeTypeName": {"Value": type_name or f"{kind}Type"},
            "IsValidForRead": True,
            "IsValidODataAttribute": True,
            "AttributeOf": None,
        }

    attributes = [
        attr("accountid", "Uniqueidentifier"),
        attr("name", "String"),
        attr("accountnumber", "String"),
        attr("telephone1", "String"),
        attr("description", "Memo"),
        attr("numberofemployees", "Integer"),
        attr("revenue", "Money"),
        attr("address1_latitude", "Double"),
        attr("donotemail", "Boolean"),
        attr("industrycode", "Picklist"),
        attr("statecode", "State"),
        attr("parentaccountid", "Lookup"),
        attr("ownerid", "Owner"),
        attr("createdon", "DateTime"),
        attr("modifiedon", "DateTime"),
    ]
    entity = {
        "LogicalName": "account",
        "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid",
        "ChangeTrackingEnabled": True,
    }
    return build_schema(entity, attributes, table="account")


def bench_pages(rows: int, seed: int = 7) -> list[bytes]:
    """Page bodies as the Web API would send them (annotations included)."""
    rng = random.Random(seed)
    pages: list[bytes] = []
    for start in range(0, rows, PAGE):
        value = []
        for i in range(start, min(rows, start + PAGE)):
            value.append(
                {
                    "@odata.etag": f'W/"{100000 + i}"',
                    "accountid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "name": f"Contoso Traders {i}",
                    "accountnumber": f"AC-{i:08d}",
                    "telephone1": f"+1-555-{i % 10000:04d}",
                    "description": "Quarterly review.\nfollow-up pricing renewal",
                    "numberofemployees": i % 5000,
                    "revenue": round(rng.uniform(1e4, 1e8), 2) if i % 10 else None,
                    "address1_latitude": round(rng.uniform(-90, 90), 5),
                    "donotemail": bool(i % 2),
                    "industrycode": 3,
                    "industrycode" + FORMATTED: "Consulting",
                    "statecode": 0,
                    "statecode" + FORMATTED: "Active",
                    "_parentaccountid_value": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "_parentaccountid_value" + LOOKUP: "account",
                    "_ownerid_value": "00000001-0000-4000-8000-000000000001",
                    "_ownerid_value" + LOOKUP: "systemuser",
                    "createdon": "2024-03-01T10:00:00Z",
                    "modifiedon": "2024-03-02T11:30:00Z",
                }
            )
        pages.append(orjson.dumps({"@odata.context": "bench", "value": value}))
    return pages


async def _decode(shaper: RowShaper, body: bytes) -> DecodedPage:
    # ExactClient's path for a large body: its decoder (decode_rows) in a worker thread.
    page = await asyncio.to_thread(decode_rows, BENCH_POOL, shaper, body)
    if page is None:
        raise RuntimeError("a benchmark page is not JSON")
    return page


async def _pipeline(db: Path, schema: TableSchema, pages: Sequence[bytes]) -> float:
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await upgrade(engine)
        now = datetime.now(UTC)
        layout = await ensure_mirror(engine, ENVIRONMENT, schema, soft=False, now=now)
        await ensure(engine, ENVIRONMENT, schema.table, now=now)
        shaper = RowShaper(schema)
        state = TableState("backfill", resync_started_at=now)
        started = time.perf_counter()
        # As the engine does: decode off the loop, the next page while this one commits.
        upcoming = asyncio.ensure_future(_decode(shaper, pages[0]))
        for number in range(len(pages)):
            page = await upcoming
            if number + 1 < len(pages):
                upcoming = asyncio.ensure_future(_decode(shaper, pages[number + 1]))
            synced = stamp(datetime.now(UTC))
            state = TableState("backfill", next_link=f"page-{number}", resync_started_at=now)

            def checkpoint(counts: PageCounts, state: TableState = state) -> list[Executable]:
                return checkpoint_statements(
                    ENVIRONMENT, schema.table, state, now=now, upserted=counts.upserted
                )

            await commit_page(
                engine,
                layout.writer,
                PageWrite(rows=page.tuples, synced_at=synced),
                observed_at=synced,
                checkpoint=checkpoint,
            )
        return time.perf_counter() - started
    finally:
        await engine.dispose()


# The connection settings that change what SQLite does per commit; the plain side copies them.
STORE_PRAGMAS = ("journal_mode", "synchronous", "cache_size", "temp_store", "foreign_keys")


async def store_pragmas(db: Path) -> dict[str, str]:
    """The settings our store's engine gives its SQLite connections (read back, not assumed)."""
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with engine.connect() as conn:
            return {
                name: str((await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one())
                for name in STORE_PRAGMAS
            }
    finally:
        await engine.dispose()


def _plain(
    db: Path,
    schema: TableSchema,
    batches: Sequence[list[tuple[Any, ...]]],
    sql: str,
    pragmas: dict[str, str],
) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name}={value}")
        actual = {name: str(conn.execute(f"PRAGMA {name}").fetchone()[0]) for name in pragmas}
        if actual != pragmas:
            raise RuntimeError(f"plain sqlite3 settings {actual} differ from the store's {pragmas}")
        layout = [(c.name, c.sql_type) for c in schema.columns]
        conn.execute(create_table_sql("plain", schema.primary_key, layout))
        started = time.perf_counter()
        for rows in batches:
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


@dataclass(frozen=True)
class LocalFigures:
    """Seconds per round for each side (same rows, alternating order), and the shared settings."""

    rows: int
    pipeline_seconds: tuple[float, ...]
    plain_seconds: tuple[float, ...]
    pragmas: dict[str, str]

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(p / q for p, q in zip(self.plain_seconds, self.pipeline_seconds, strict=True))

    @property
    def ratio(self) -> float:
        """The median of the per-round ratios (one noisy round does not decide)."""
        return statistics.median(self.ratios)

    def rate(self, seconds: Sequence[float]) -> float:
        return self.rows / statistics.median(seconds)


def measure_local(rows: int, workdir: Path, *, rounds: int = 3) -> LocalFigures:
    """Time both sides `rounds` times, alternating which goes first, on fresh database files."""
    schema = bench_schema()
    pages = bench_pages(rows)
    shaper = RowShaper(schema)
    batches = [decode_page(body, shaper).tuples for body in pages]
    upsert = SqliteTable.build(
        "x", "x", schema.primary_key, [c.name for c in schema.columns], soft=False
    ).upsert_sql(stamp(datetime.now(UTC)), 1)
    upsert = upsert.replace('"x__x"', '"plain"')  # the table, and its name in the upsert's CASE
    pragmas = asyncio.run(store_pragmas(workdir / "settings.db"))
    # The bench's own data (pages, pre-decoded tuples) would otherwise be rescanned by the
    # collector during both sides' runs; a daemon holds one page or two, not the whole table.
    gc.collect()
    gc.freeze()
    pipeline: list[float] = []
    plain: list[float] = []
    try:
        BENCH_POOL.start()  # a daemon starts its decode worker once, not once per round
        for number in range(rounds):
            for side in ("plain", "pipeline") if number % 2 == 0 else ("pipeline", "plain"):
                db = workdir / f"{side}-{number}.db"
                if side == "plain":
                    plain.append(_plain(db, schema, batches, upsert, pragmas))
                else:
                    pipeline.append(asyncio.run(_pipeline(db, schema, pages)))
                for leftover in workdir.glob(f"{side}-{number}.db*"):
                    leftover.unlink()
    finally:
        BENCH_POOL.shutdown()
        gc.unfreeze()
    return LocalFigures(rows, tuple(pipeline), tuple(plain), pragmas)


def run_pipeline_bench(
    rows: int = 200_000, *, console: Any, rss_rows: int = 0, rounds: int = 3
) -> int:
    """Print the pipeline/plain ratio (and peak RSS of a simulator backfill when asked)."""
    with tempfile.TemporaryDirectory(prefix="dvmirror-bench-") as tmp:
        figures = measure_local(rows, Path(tmp), rounds=rounds)
    settings = " ".join(f"{k}={v}" for k, v in figures.pragmas.items())
    console.print(f"rows: {rows:,}  page size: {PAGE:,}  rounds: {rounds} (alternating order)")
    console.print(
        "pipeline: page bytes → exact decode + typed tuples (the decode worker process, the next "
        "page while this one commits) → one transaction per page: executemany upsert + "
        "checkpoint (SQLAlchemy async + aiosqlite)"
    )
    console.print(
        "plain:    sqlite3 executemany of the same tuples (decoded beforehand, untimed), same "
        "upsert statement, same STRICT table and primary key, one transaction per page, no "
        "checkpoint"
    )
    console.print(f"both:     {settings}")
    console.print(
        f"pipeline (decode → typed upsert → commit): {figures.rate(figures.pipeline_seconds):,.0f}"
        " rows/s (median)"
    )
    console.print(
        f"plain sqlite3 executemany upsert:          {figures.rate(figures.plain_seconds):,.0f}"
        " rows/s (median)"
    )
    per_round = ", ".join(f"{r:.2f}" for r in figures.ratios)
    console.print(f"ratio: {figures.ratio:.2f} (median of rounds: {per_round}; aim ≥ 0.70)")
    if rss_rows > 0:
        from sync.bench.rss import measure_backfill_rss

        peak = measure_backfill_rss(rss_rows, console=console)
        if peak is not None:
            console.print(
                f"peak RSS backfilling {rss_rows:,} rows: {peak.total_mb:.0f} MB (aim < 250 MB; "
                f"process {peak.parent_mb:.0f} MB + decode worker {peak.workers_mb:.0f} MB)"
            )
    return 0
