"""`dvmirror feed --env E --since N [--until M] --format jsonl|csv [--out DIR]`: the rows of a
closed commit interval `N < _dv_commit_seq <= M`.

What it writes is what a load applies: every mirror row of the environment whose last real change
has a number in the interval (its current values) and every `_dv_deletions` row in it. All of it
is read in one snapshot (PostgreSQL REPEATABLE READ, an SQLite read transaction), after reading M,
so nothing committed later is in it and nothing at or below M is missing. A change made after M
to a row the interval would have held moves that row to a later interval: loading the intervals
one after the other, applying each in `_dv_commit_seq` order (a row and a deletion of one id: the
higher number wins), gives the mirror.

Output:
- to stdout (jsonl only): one line per change, merged in commit order: `{"op": "upsert",
  "table", "seq", "row": {...}}` or `{"op": "delete", "table", "seq", "id", "observed_at",
  "reason"}`;
- with `--out DIR`: a folder `DIR/<env>-<N>-<M>/` holding `<table>.jsonl|csv` (the table's rows
  in commit order, one file per table that has any), `_dv_deletions.jsonl|csv` and
  `manifest.json` (the interval, the counts, and `metadata_tables`: those a commit of the
  interval rewrote, store.relabel). It is written under a temporary name and renamed when
  complete, so a folder that exists is whole.
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.errors import ConfigError
from sync.store.control import commits, deletions, mirror_columns
from sync.store.dialects import dialect_for
from sync.store.identifiers import quote_ident
from sync.store.layout import COMMIT_SEQ_COLUMN
from sync.store.metadata_tables import NAMES as METADATA_TABLES

Format = Literal["jsonl", "csv"]
DELETIONS_FILE = "_dv_deletions"
DELETION_COLUMNS = ("table", "id", "observed_at", COMMIT_SEQ_COLUMN, "reason")


def _plain(value: Any) -> Any:
    """orjson's fallback: exact decimals as strings (a float would round them), and the
    drivers' own uuid classes (asyncpg's) as text."""
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def json_line(document: Any) -> bytes:
    return orjson.dumps(document, default=_plain, option=orjson.OPT_UTC_Z) + b"\n"


def csv_cell(value: Any) -> str:
    """A CSV cell: empty for NULL, ISO-8601 for times, true/false, lists comma-joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Interval:
    """`since < _dv_commit_seq <= until` of one environment."""

    environment: str
    since: int
    until: int


@dataclass
class ExportSummary:
    environment: str
    since: int
    until: int
    rows: dict[str, int] = field(default_factory=dict)
    deletions: int = 0
    folder: Path | None = None
    # Metadata tables rewritten in the interval (their rows carry no number: copy them again).
    metadata_tables: list[str] = field(default_factory=list)

    def manifest(self, fmt: Format) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "since": self.since,
            "until": self.until,
            "interval": f"{self.since} < _dv_commit_seq <= {self.until}",
            "format": fmt,
            "rows": self.rows,
            "deletions": self.deletions,
            "metadata_tables": self.metadata_tables,
            "written_at": dt.datetime.now(dt.UTC).isoformat(),
        }


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One consistent read of the store for the whole export."""
    if dialect_for(engine).name == "postgresql":
        async with engine.connect() as conn:
            snap = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with snap.begin():
                await snap.exec_driver_sql("SET TRANSACTION READ ONLY")
                yield snap
        return
    # pysqlite defers BEGIN to the first write: begin by hand so the reads share one snapshot.
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("BEGIN")
        try:
            yield auto
        finally:
            await auto.exec_driver_sql("ROLLBACK")


async def _tables(conn: AsyncConnection, environment: str) -> list[str]:
    query = (
        select(mirror_columns.c.table_name)
        .where(mirror_columns.c.environment == environment)
        .distinct()
        .order_by(mirror_columns.c.table_name)
    )
    return [str(name) for name in (await conn.execute(query)).scalars()]


async def newest_seq(conn: AsyncConnection, environment: str) -> int:
    query = select(func.coalesce(func.max(commits.c.seq), 0)).where(
        commits.c.environment == environment
    )
    return int((await conn.execute(query)).scalar_one())


async def _metadata_changed(conn: AsyncConnection, interval: Interval) -> list[str]:
    """The metadata tables a commit of the interval names (store.relabel)."""
    query = (
        select(commits.c.table_name)
        .where(
            commits.c.environment == interval.environment,
            commits.c.seq > interval.since,
            commits.c.seq <= interval.until,
            commits.c.table_name.in_(METADATA_TABLES),
        )
        .distinct()
        .order_by(commits.c.table_name)
    )
    return [str(name) for name in (await conn.execute(query)).scalars()]


async def _table_rows(
    conn: AsyncConnection, interval: Interval, table: str
) -> AsyncIterator[tuple[list[str], Sequence[Any]]]:
    """(column names, row) of the table's rows in the interval, in commit order."""
    ref = dialect_for(conn).table_ref(interval.environment, table)
    seq = quote_ident(COMMIT_SEQ_COLUMN)
    sql = f"SELECT * FROM {ref} WHERE {seq} > :since AND {seq} <= :until ORDER BY {seq}"  # noqa: S608
    binds = {"since": interval.since, "until": interval.until}
    result = await conn.stream(text(sql), binds)
    names = list(result.keys())
    async for row in result:
        yield names, tuple(row)


async def _deletion_rows(
    conn: AsyncConnection, interval: Interval
) -> AsyncIterator[tuple[Any, ...]]:
    seq = deletions.c[COMMIT_SEQ_COLUMN]
    query = (
        select(*(deletions.c[name] for name in DELETION_COLUMNS))
        .where(
            deletions.c.environment == interval.environment,
            seq > interval.since,
            seq <= interval.until,
        )
        .order_by(seq, deletions.c.seq)
    )
    async for row in await conn.stream(query):
        yield tuple(row)


def check_request(fmt: Format, out: Path | None) -> None:
    if fmt == "csv" and out is None:
        raise ConfigError(
            "feed: --format csv writes one file per table: give --out DIR (or use --format jsonl)"
        )
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"feed: --out {out} is a file, not a folder")


async def export_interval(
    engine: AsyncEngine,
    environment: str,
    *,
    since: int,
    until: int | None,
    fmt: Format,
    out: Path | None,
) -> ExportSummary:
    """Write the interval (see the module docstring); M = min(until, the newest number)."""
    async with snapshot(engine) as conn:
        newest = await newest_seq(conn, environment)
        upper = newest if until is None else min(until, newest)
        summary = ExportSummary(environment, since, upper)
        tables = await _tables(conn, environment)
        interval = Interval(environment, since, upper)
        summary.metadata_tables = await _metadata_changed(conn, interval)
        if out is None:
            await _to_stdout(conn, summary, tables, sys.stdout.buffer)
        elif upper > since:
            await _to_folder(conn, summary, tables, fmt, out)
    return summary


async def _to_folder(
    conn: AsyncConnection, summary: ExportSummary, tables: list[str], fmt: Format, out: Path
) -> None:
    interval = Interval(summary.environment, summary.since, summary.until)
    final = out / f"{interval.environment}-{interval.since}-{interval.until}"
    if final.exists():
        raise ConfigError(f"feed: {final} exists already: that interval was written")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{final.name}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    try:
        for table in tables:
            sink = _Sink(partial / f"{table}.{fmt}", fmt)
            await sink.fill(_table_rows(conn, interval, table))
            if sink.count:
                summary.rows[table] = sink.count
        sink = _Sink(partial / f"{DELETIONS_FILE}.{fmt}", fmt)
        await sink.fill((DELETION_COLUMNS, row) async for row in _deletion_rows(conn, interval))
        summary.deletions = sink.count
        (partial / "manifest.json").write_bytes(
            orjson.dumps(summary.manifest(fmt), option=orjson.OPT_INDENT_2) + b"\n"
        )
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary.folder = final


class _Sink:
    """One output file, opened on its first row (tables without rows get none)."""

    def __init__(self, path: Path, fmt: Format) -> None:
        self.path, self.fmt = path, fmt
        self.count = 0
        self._text: IO[str] | None = None
        self._binary: IO[bytes] | None = None
        self._csv: Any = None

    async def fill(self, rows: AsyncIterator[tuple[Sequence[str], Sequence[Any]]]) -> None:
        try:
            async for names, row in rows:
                self.write(names, row)
        finally:
            self.close()

    def write(self, names: Sequence[str], row: Sequence[Any]) -> None:
        if self._text is None and self._binary is None:
            if self.fmt == "csv":
                self._text = self.path.open("w", newline="", encoding="utf-8")
                self._csv = csv.writer(self._text)
                self._csv.writerow(names)
            else:
                self._binary = self.path.open("wb")
        if self._csv is not None:
            self._csv.writerow([csv_cell(v) for v in row])
        elif self._binary is not None:
            self._binary.write(json_line(dict(zip(names, row, strict=True))))
        self.count += 1

    def close(self) -> None:
        for handle in (self._text, self._binary):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()


def merged_by_seq(streams: Sequence[Sequence[tuple[int, int, bytes]]]) -> Iterator[bytes]:
    """Lines of several (seq, tiebreak, line) lists, each in seq order, merged (pure)."""
    for _, _, line in heapq.merge(*streams):
        yield line


STDOUT_WINDOW = 8  # commits merged in memory at a time (each at most one page of rows)


async def _to_stdout(
    conn: AsyncConnection, summary: ExportSummary, tables: list[str], out: IO[bytes]
) -> None:
    """Changes in commit order, a window of STDOUT_WINDOW numbers at a time: each table's rows
    and the deletions of the window are read (by the `_dv_commit_seq` indexes) and merged."""
    summary.rows = dict.fromkeys(tables, 0)
    low = summary.since
    while low < summary.until:
        window = Interval(summary.environment, low, min(low + STDOUT_WINDOW, summary.until))
        streams: list[list[tuple[int, int, bytes]]] = []
        for number, table in enumerate(tables):
            lines: list[tuple[int, int, bytes]] = []
            async for names, row in _table_rows(conn, window, table):
                values = dict(zip(names, row, strict=True))
                seq = int(values[COMMIT_SEQ_COLUMN])
                document = {"op": "upsert", "table": table, "seq": seq, "row": values}
                lines.append((seq, number, json_line(document)))
            summary.rows[table] += len(lines)
            streams.append(lines)
        streams.append(await _deletion_lines(conn, window))
        summary.deletions += len(streams[-1])
        for line in merged_by_seq(streams):
            out.write(line)
        low = window.until
    summary.rows = {table: n for table, n in summary.rows.items() if n}
    out.flush()


async def _deletion_lines(conn: AsyncConnection, window: Interval) -> list[tuple[int, int, bytes]]:
    lines = []
    async for table, key, observed_at, seq, reason in _deletion_rows(conn, window):
        document = {
            "op": "delete",
            "table": table,
            "seq": int(seq),
            "id": key,
            "observed_at": observed_at,
            "reason": reason,
        }
        # Before an upsert of the same number: that commit deleted the id, then wrote it again.
        lines.append((int(seq), -1, json_line(document)))
    return lines
