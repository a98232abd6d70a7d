"""Data teams read the SQLite mirror with their own tools while dvmirror writes it.

The defect these tests keep out: `prepare_sqlite_file` used to open and close the database file
every time an engine was created. Closing any descriptor of a file drops every POSIX lock the
process holds on it, SQLite's shared lock included, so a process with open connections (the
demo runs the daemon and opens engines of its own beside it) vanished from the lock table; the
next reader in another process to close took itself for the last connection, checkpointed past
the daemon and deleted -wal and -shm under it. The daemon then committed to a deleted WAL
(commits no other process saw), other processes started a new one, and readers could read pages
half-checkpointed ("database disk image is malformed", seen twice in tests/test_demo_verify.py).

* a second engine in the writer's process leaves the writer's WAL in place for everyone
  (deterministic: fails without the fix);
* prepare_sqlite_file creates a new file 0600 and leaves an existing one alone;
* e2e: the daemon (in-process, with the demo's own engines beside it) resyncs while a reader
  process runs integrity checks and full scans (tests/reader_stress.py); the long variant
  (`-m long`) repeats it with churn, four readers and long read transactions.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.errors import ConfigError
from sync.store.connect import create_engine
from sync.store.dialects.sqlite import prepare_sqlite_file
from tests.reader_safety import SCENARIO, stress
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

READ_AND_CLOSE = (
    "import sqlite3, sys\n"
    "c = sqlite3.connect(sys.argv[1], timeout=30)\n"
    "print(c.execute('SELECT count(*) FROM t').fetchone()[0])\n"
    "c.close()\n"
)


def _other_process_count(db: Path) -> int:
    """count(*) read by a data team's process that opens, reads and closes."""
    result = subprocess.run(
        [sys.executable, "-c", READ_AND_CLOSE, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout)


def _sidecars(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name + "-"))


async def test_a_second_engine_in_the_writers_process_keeps_its_wal_for_everyone(
    tmp_path: Path,
) -> None:
    """The writer's engine holds connections (WAL mode keeps a shared lock per process); a
    second engine on the same file in that process, then a reader process that closes, must
    leave -wal and -shm in place, and every later commit of the writer must be seen outside."""
    db = tmp_path / "mirror.db"
    url = f"sqlite+aiosqlite:///{db}"
    writer = create_engine(url)
    try:
        async with writer.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        assert _sidecars(db) == ["mirror.db-shm", "mirror.db-wal"]
        beside = create_engine(url)  # as the demo counts rows beside its daemon
        async with beside.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
        await beside.dispose()
        assert _other_process_count(db) == 1  # opens, reads, closes: not the last connection
        assert _sidecars(db) == ["mirror.db-shm", "mirror.db-wal"]
        for value in range(2, 5):
            async with writer.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": value})
        assert _other_process_count(db) == 4
        with sqlite3.connect(db) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        await writer.dispose()


def test_prepare_sqlite_file_creates_a_private_file_and_leaves_an_existing_one_alone(
    tmp_path: Path,
) -> None:
    new = tmp_path / "data" / "mirror.db"
    prepare_sqlite_file(new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(new.parent.stat().st_mode) == 0o700
    existing = tmp_path / "kept.db"
    existing.write_bytes(b"x")
    existing.chmod(0o640)
    before = existing.stat()
    prepare_sqlite_file(existing)
    after = existing.stat()
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )
    with pytest.raises(ConfigError, match=r"cannot write the database file .*store\.url"):
        prepare_sqlite_file(tmp_path / "data")  # a directory


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-readers")) as ready:
        yield ready


def _assert_clean(result: Any) -> None:
    assert result.writer_exit == 0
    assert result.readers and all(r["iterations"] > 0 for r in result.readers), result.readers
    assert result.errors == [], sorted(set(result.errors))[:10]
    assert result.wal_missing == 0  # the writer's -wal was never deleted under it
    assert result.integrity == "ok"
    assert result.differences == []


@pytest.mark.slow
@pytest.mark.usefixtures("no_ca_env")
def test_a_reader_beside_resyncs_sees_a_consistent_mirror(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """The demo test's pattern: the daemon, with the demo's engines of its own beside it,
    resyncs both tables twice while one other process at a time (the reader, the resync CLI)
    opens and closes: the reader's quick/integrity checks and its read transactions over every
    mirror table (table against index) never fail, its closes never count as the last
    connection (the WAL stays), and the mirror ends equal to its source."""
    _assert_clean(stress(sim, tmp_path, modes=("checks",), resyncs=2))


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("no_ca_env")
def test_readers_stress_through_many_resyncs_with_churn(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """Four readers (three checking, one holding read transactions across the writer's commits,
    whose snapshot must not move) through many resyncs with source churn in between, then the
    demo's one-reader pattern again."""
    rounds = int(os.environ.get("DVMIRROR_READER_STRESS_ROUNDS", "12"))
    _assert_clean_churned(
        stress(
            sim,
            tmp_path / "four",
            modes=("checks", "checks", "checks", "long"),
            resyncs=rounds,
            churn=True,
            budget=600,
        ),
        rounds,
    )
    alone = stress(sim, tmp_path / "alone", modes=("checks",), resyncs=rounds, budget=300)
    _assert_clean(alone)
    assert alone.resyncs == rounds


def _assert_clean_churned(result: Any, rounds: int) -> None:
    assert result.resyncs == rounds
    assert result.writer_exit == 0
    assert result.errors == [], sorted(set(result.errors))[:10]
    assert result.wal_missing == 0
    assert result.integrity == "ok"
