"""Data teams' readers beside a writing dvmirror, as separate processes (tests/test_sqlite_readers*).

`python -m tests.reader_stress writer CONFIG [--second-engine]` runs the daemon in-process (as
`dvmirror demo` does); with `--second-engine` the process also opens engines of its own on the
same file every half second, through the demo's `mirror_count` (an engine per call, beside the
daemon's), as the demo's catch-up does. It stops on SIGTERM.

`python -m tests.reader_stress reader DB --out FILE --mode checks|long` is a data team's reader
using Python's sqlite3 until `FILE.stop` exists, then writes a JSON summary to FILE:
  * checks: connect, `PRAGMA quick_check` (every 5th time `integrity_check`), one read
    transaction that scans every mirror table and compares count(*) by table and by its
    `_dv_commit_seq` index, then close (each close is the "last connection?" check of SQLite);
  * long: one read transaction held for about a second across several scans, whose snapshot
    must not change while the writer commits (and keeps the WAL from being checkpointed), then
    close and start again.
Every error is recorded (type and first line) and the reader carries on with a new connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any


def mirror_tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%\\_\\_%' ESCAPE '\\'"
    )
    return sorted(r[0] for r in rows)


def scan(conn: sqlite3.Connection, table: str) -> tuple[int, int]:
    """(rows read by a full scan, count(*) through the commit-seq index) in this snapshot; a
    table without that index (the metadata tables) is counted twice by scanning."""
    scanned = sum(1 for _ in conn.execute(f'SELECT * FROM "{table}"'))
    index = f"ix_{table}_dv_commit_seq"
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (index,))
    if found.fetchone() is None:
        return scanned, int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    by_index = conn.execute(
        f'SELECT count(*) FROM "{table}" INDEXED BY "{index}" WHERE "_dv_commit_seq" IS NOT NULL'
    ).fetchone()[0]
    nulls = conn.execute(
        f'SELECT count(*) FROM "{table}" WHERE "_dv_commit_seq" IS NULL'
    ).fetchone()[0]
    return scanned, int(by_index) + int(nulls)


def check_once(db: Path, number: int) -> None:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        pragma = "integrity_check" if number % 5 == 0 else "quick_check"
        result = [r[0] for r in conn.execute(f"PRAGMA {pragma}")]
        if result != ["ok"]:
            raise AssertionError(f"{pragma}: {result[:3]}")
        conn.execute("BEGIN")
        for table in mirror_tables(conn):
            scanned, indexed = scan(conn, table)
            if scanned != indexed:
                raise AssertionError(f"{table}: {scanned} rows scanned, {indexed} in its index")
        conn.execute("COMMIT")
    finally:
        conn.close()


def long_once(db: Path) -> None:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN")
        tables = mirror_tables(conn)
        first = {t: scan(conn, t) for t in tables}
        for _ in range(4):
            time.sleep(0.25)
            again = {t: scan(conn, t) for t in tables}
            if again != first:
                raise AssertionError(
                    f"the snapshot changed inside one transaction: {first} {again}"
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


def reader(db: Path, out: Path, mode: str) -> None:
    stop = out.with_name(out.name + ".stop")
    summary: dict[str, Any] = {"mode": mode, "iterations": 0, "errors": [], "wal_missing": 0}
    number = 0
    while not stop.exists():
        number += 1
        if not db.with_name(db.name + "-wal").exists():  # the writer keeps it while it runs
            summary["wal_missing"] += 1
        try:
            if mode == "checks":
                check_once(db, number)
            else:
                long_once(db)
            summary["iterations"] += 1
        except (sqlite3.Error, AssertionError) as exc:
            first = (str(exc).splitlines() or [""])[0]
            summary["errors"].append(f"{type(exc).__name__}: {first}")
            time.sleep(0.05)
    out.write_text(json.dumps(summary))


async def writer(config_path: Path, second_engine: bool) -> int:
    from sync.commands.demo import mirror_count
    from sync.config.loading import load_config
    from sync.runtime.daemon import Daemon

    config = load_config(config_path)
    daemon = Daemon(config)  # handles SIGTERM itself
    task = asyncio.create_task(daemon.run())
    tables = [(env.name, t) for _, env in config.environments() for t in env.tables]
    # As the demo's catch-up does (every second until the counts match): count every mirror
    # table through engines of its own, beside the daemon's, for as long as it runs.
    while second_engine and not task.done():
        for env, table in tables:
            await mirror_count(config, env, table)
        await asyncio.wait([task], timeout=0.5)
    return await task


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reader_stress")
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("writer")
    w.add_argument("config", type=Path)
    w.add_argument("--second-engine", action="store_true")
    r = sub.add_parser("reader")
    r.add_argument("db", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--mode", choices=("checks", "long"), default="checks")
    args = parser.parse_args(argv)
    if args.role == "writer":
        return asyncio.run(writer(args.config, args.second_engine))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    reader(args.db, args.out, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
