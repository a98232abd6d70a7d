"""Store faults under `dvmirror run` (a subprocess, the HTTPS simulator, a real SQLite file).

* Another process holds the write lock: page commits wait out SQLite's busy timeout and retry
  (`store_busy_retry`); no table parks, and the mirror catches up once the lock goes.
* A data team's long read transaction: syncing goes on beside it (WAL), the WAL grows while the
  reader pins its snapshot, and `checkpoint_wal` empties it once the reader is gone.
* The disk fills up (a small tmpfs mounted by the test): the table parks with an error naming the
  database path, nothing is corrupt, and syncing resumes by itself once space is freed.
* A clean shutdown (SIGTERM) leaves no -wal/-shm behind.

`status --json` is run from another process all along and must answer every time.
The held lock runs with `pytest -m long tests/test_store_faults.py` (35 s, past the 30 s busy
timeout so the retry runs, and two minutes); the default run's test of a commit waiting out
another process's lock is tests/test_write_turns.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.store.connect import create_engine
from sync.store.dialects.sqlite_maintenance import checkpoint_wal, wal_size
from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, EnvSpec, churn, wait_until, write_config
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(600)]
SCENARIO = Path(__file__).parent / "scenarios" / "store_faults.toml"
ENV = "store_env"
TABLES = ("account", "contact")
REPORT = Path(os.environ.get("DVMIRROR_FAULT_REPORT", "/dev/null"))
CHURN_ROUNDS = 3  # commits beside the long reader: each one grows the WAL it pins

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN IMMEDIATE")  # a data team's write transaction on the mirror file
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.fixture(name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-store")) as ready:
        yield ready


class StatusPoller:
    """Runs `dvmirror status --json` from another process until stopped; keeps every failure."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runs = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            done = run_cli("--config", self.config, "status", "--json", timeout=120)
            self.runs += 1
            try:
                json.loads(done.stdout)
            except ValueError:
                self.failures.append(f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
            self._stop.wait(0.5)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(150)
        assert self.runs >= 2, "status --json never ran during the fault"
        assert not self.failures, self.failures


def converged(sim: dict[str, Any], database: Path) -> bool:
    return all(not compare.differences(sim, database, ENV, t) for t in TABLES)


def wait_converged(
    sim: dict[str, Any], database: Path, daemon: DaemonProcess, timeout: float
) -> None:
    def done() -> bool:
        if daemon.process.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.tail()}")
        return converged(sim, database)

    wait_until(done, timeout=timeout, every=1.0, what="the mirror to equal the source")


def integrity(database: Path) -> str:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def start(
    sim: dict[str, Any], directory: Path, logs: Path | None = None
) -> tuple[DaemonProcess, Path]:
    config = write_config(sim, directory, {ENV: EnvSpec(TABLES, page_size=200, interval="1s")})
    log = (logs or directory) / "daemon.log"
    return DaemonProcess.start(config, log), directory / "mirror.db"


def leftovers(database: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in database.parent.glob(database.name + "-*")}


def stop_cleanly(daemon: DaemonProcess, database: Path) -> str:
    """SIGTERM: exit 0, and the last connection's close leaves no -wal/-shm behind."""
    # The comparisons' sqlite3 connections close when collected: collect them, so the daemon's
    # close is the last one.
    gc.collect()
    assert daemon.stop() == 0, daemon.tail()
    left = leftovers(database)
    assert left == {}, left
    assert integrity(database) == "ok"
    return "after SIGTERM: no -wal/-shm"


def record(line: str) -> None:
    with REPORT.open("a") as out:
        out.write(line + "\n")


def parked_on(daemon: DaemonProcess, words: str) -> list[dict[str, Any]]:
    return [e for e in daemon.named("table_parked") if words in str(e.get("error"))]


@pytest.mark.parametrize(
    "hold",
    [
        pytest.param(35.0, id="35s", marks=pytest.mark.long),
        pytest.param(120.0, id="2min", marks=pytest.mark.long),
    ],
)
def test_a_write_lock_held_by_another_process_is_waited_out(
    sim: dict[str, Any], tmp_path: Path, hold: float
) -> None:
    daemon, database = start(sim, tmp_path)
    try:
        wait_converged(sim, database, daemon, 120)
        with StatusPoller(daemon.config):
            holder = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(database), str(hold)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "locked"
                for seed, table in enumerate(TABLES):
                    churn(sim, ENV, table, seed=100 + seed)
                assert holder.stdout.readline().strip() == "released"
            finally:
                holder.kill()
                holder.wait(30)
                if holder.stdout is not None:
                    holder.stdout.close()
            wait_converged(sim, database, daemon, 120)
        # Commits waited out the busy timeout and ran again; no write crashed or parked on it.
        retries = daemon.named("store_busy_retry")
        assert retries
        assert daemon.named("table_cycle_crashed") == []
        assert [e for e in daemon.named("table_parked") if "locked" in str(e)] == []
        leases = daemon.named("lease_lost")
        shutdown = stop_cleanly(daemon, database)
        record(
            f"lock {hold:g}s: {len(retries)} store_busy_retry, none parked, "
            f"{len(leases)} lease_lost (renewal blocked by the lock); {shutdown}"
        )
    finally:
        daemon.kill()


def test_a_long_reader_keeps_its_snapshot_while_syncing_goes_on(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    daemon, database = start(sim, tmp_path)
    try:
        wait_converged(sim, database, daemon, 120)
        before = wal_size(database)
        with StatusPoller(daemon.config):
            reader = sqlite3.connect(database, isolation_level=None, timeout=60)
            try:
                reader.execute("BEGIN")  # a data team's long read transaction
                seen = reader.execute(f'SELECT count(*) FROM "{ENV}__account"').fetchone()[0]
                peak = before
                for round_ in range(CHURN_ROUNDS):
                    churn(sim, ENV, "account", seed=200 + round_, creates=150, updates=400)
                    wait_converged(sim, database, daemon, 120)  # syncing goes on beside it
                    peak = max(peak, wal_size(database))
                # The reader still sees its snapshot, and it pins the WAL: no checkpoint can
                # empty it yet.
                again = reader.execute(f'SELECT count(*) FROM "{ENV}__account"').fetchone()[0]
                assert again == seen
                assert peak > before
                pinned = asyncio.run(checkpoint(database))
                assert pinned is not None and not pinned.complete
            finally:
                reader.execute("COMMIT")
                reader.close()
            # The daemon's own read transactions (it keeps syncing) can pin the WAL for a
            # moment too: once the long reader is gone, a checkpoint completes within a few tries.
            for _ in range(20):
                done = asyncio.run(checkpoint(database))
                if done is not None and done.complete:
                    break
                time.sleep(0.25)
            assert done is not None and done.complete, done
            # Truncated; the daemon keeps syncing (1 s interval), so its next commit may already
            # have put a frame or two back by the time the size is read.
            assert done.wal_bytes_after <= 16 * 4096 < done.wal_bytes_before, done
        shutdown = stop_cleanly(daemon, database)
        record(
            f"long reader: WAL {before} B before, peak {peak} B ({peak / 2**20:.1f} MiB) during "
            f"{CHURN_ROUNDS} churn rounds; checkpoint_wal with the reader open: complete={pinned.complete}; "
            f"after it ended: {done.wal_bytes_before} B -> {done.wal_bytes_after} B; {shutdown}"
        )
    finally:
        daemon.kill()


async def checkpoint(database: Path) -> Any:
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        return await checkpoint_wal(engine)
    finally:
        await engine.dispose()


@pytest.fixture(name="small_disk")
def _small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs the test mounts (root), or skip saying why."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small filesystem (tmpfs)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """A file that takes all but about `leave` bytes of the filesystem."""
    filler = directory / "filler"
    stat = os.statvfs(directory)
    size = stat.f_bavail * stat.f_frsize - leave
    with filler.open("wb") as out:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            out.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
    return filler


def test_a_full_disk_parks_the_table_and_syncing_resumes_when_space_is_freed(
    sim: dict[str, Any], small_disk: Path
) -> None:
    data = small_disk / "data"
    data.mkdir(mode=0o700)
    filler = fill(small_disk, leave=1536 * 1024)  # room for the control tables, not the mirror
    daemon, database = start(sim, data, logs=small_disk.parent)
    try:
        with StatusPoller(daemon.config):
            wait_until(
                lambda: parked_on(daemon, "disk full"),
                timeout=180,
                every=0.5,
                what="a table parked on the full disk",
            )
            parked = parked_on(daemon, "disk full")[0]
            assert f"disk full at {database}" in parked["error"]
            assert "free space" in parked["error"]
            assert daemon.process.poll() is None
            assert integrity(database) == "ok"
            assert not converged(sim, database)
            filler.unlink()  # space is freed: no restart
            wait_converged(sim, database, daemon, 180)
        assert "Traceback" not in daemon.log_path.read_text()
        record(f"disk full: parked with {parked['error']!r}; resumed by itself after freeing")
        record("disk full: " + stop_cleanly(daemon, database))
        assert converged(sim, database)
    finally:
        daemon.kill()
