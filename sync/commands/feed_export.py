"""`dvmirror feed … --format jsonl|csv [--out DIR]`: the changed rows of a closed interval.

The interval is `N < _dv_commit_seq <= M` (M: `--until`, or the newest number, read first). What
is written, per table with a commit in it, in number order:

- jsonl: one object per change, `{"seq", "table", "op": "upsert", "row": {every column}}` or
  `{"seq", "table", "op": "delete", "id"}`; to stdout, or with `--out` one file per table;
- csv (needs `--out`): per table `<env>__<table>.<N>-<M>.csv` (every column, a header line) and,
  when it deleted rows, `<env>__<table>.deletions.<N>-<M>.csv` (`_dv_commit_seq`, `id`).

Files are written under a temporary name and renamed when complete, so a reader never sees half
a file; `M` is printed last (to stderr when the rows go to stdout): the next load starts there.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.feed_rows import deleted_in, rows_in, tables_in

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class Interval:
    """`since < _dv_commit_seq <= until` of one environment."""

    environment: str
    since: int
    until: int

    def file(self, out: Path, table: str, fmt: str, part: str = "") -> Path:
        return out / f"{self.environment}__{table}{part}.{self.since}-{self.until}.{fmt}"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: a float would round money and big numbers
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, UUID):  # asyncpg's own UUID subclass, which orjson does not take
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__}")


def _json_line(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, default=_default, option=orjson.OPT_APPEND_NEWLINE)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, UUID):
        return str(value)
    return str(value)


async def _changes(
    engine: AsyncEngine, interval: Interval, table: str
) -> AsyncIterator[tuple[int, str, Any]]:
    """(number, "delete" | "upsert", id or row) of one table, in number order (at one number a
    deletion before a row: a key deleted and created again)."""
    env, since, until = interval.environment, interval.since, interval.until
    async with engine.connect() as conn:
        gone = await deleted_in(conn, env, table, since, until)
        at = 0
        async for row in rows_in(conn, env, table, since, until):
            seq = int(row["_dv_commit_seq"])
            while at < len(gone) and gone[at][0] <= seq:
                yield gone[at][0], "delete", gone[at][1]
                at += 1
            yield seq, "upsert", row
        for seq, id_ in gone[at:]:
            yield seq, "delete", id_


class _Atomic:
    """A file written under a temporary name and renamed into place when complete."""

    def __init__(self, path: Path, *, binary: bool) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.handle: IO[Any] = (
            self.partial.open("wb") if binary else self.partial.open("w", newline="")
        )

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        self.handle.close()
        self.partial.unlink(missing_ok=True)


async def export(
    engine: AsyncEngine,
    interval: Interval,
    *,
    fmt: str,
    out: Path | None,
    write: Callable[[bytes], None] | None = None,
) -> list[Path]:
    """Write the interval's changes; the files written (none for stdout)."""
    async with engine.connect() as conn:
        tables = await tables_in(conn, interval.environment, interval.since, interval.until)
    written: list[Path] = []
    for table in tables:
        if fmt == "csv":
            assert out is not None
            written += await _csv_files(engine, interval, table, out)
        elif out is not None:
            written.append(await _jsonl_file(engine, interval, table, out))
        else:
            emit = write or sys.stdout.buffer.write
            async for change in _changes(engine, interval, table):
                emit(_json_line(_change(table, *change)))
    return written


def _change(table: str, seq: int, op: str, value: Any) -> dict[str, Any]:
    what = {"row": value} if op == "upsert" else {"id": value}
    return {"seq": seq, "table": table, "op": op} | what


async def _jsonl_file(engine: AsyncEngine, interval: Interval, table: str, out: Path) -> Path:
    target = _Atomic(interval.file(out, table, "jsonl"), binary=True)
    try:
        async for change in _changes(engine, interval, table):
            target.handle.write(_json_line(_change(table, *change)))
    except BaseException:
        target.discard()
        raise
    target.commit()
    return target.path


async def _csv_files(engine: AsyncEngine, interval: Interval, table: str, out: Path) -> list[Path]:
    rows = _Atomic(interval.file(out, table, "csv"), binary=False)
    gone = _Atomic(interval.file(out, table, "csv", ".deletions"), binary=False)
    counts = {"upsert": 0, "delete": 0}
    try:
        row_writer, gone_writer = csv.writer(rows.handle), csv.writer(gone.handle)
        gone_writer.writerow(["_dv_commit_seq", "id"])
        header: list[str] | None = None
        async for seq, op, value in _changes(engine, interval, table):
            counts[op] += 1
            if op == "delete":
                gone_writer.writerow([seq, value])
                continue
            if header is None:
                header = list(value)
                row_writer.writerow(header)
            row_writer.writerow([_csv_value(value[name]) for name in header])
    except BaseException:
        rows.discard()
        gone.discard()
        raise
    written = []
    for part, count in ((rows, counts["upsert"]), (gone, counts["delete"])):
        if count:
            part.commit()
            written.append(part.path)
        else:
            part.discard()
    return written
