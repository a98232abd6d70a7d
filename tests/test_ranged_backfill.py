"""A big table's backfill runs as parallel primary-key ranges: the mirror equals the source,
also when rows change during the ranges, and a SIGKILL resumes every range where it stopped.

The configuration lowers `split_rows` so that tables of a few thousand rows split; everything
else (the CLI, the simulator over HTTPS, SQLite) is what users run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import clean_env, run_cli
from tests.mirror_compare import _store_url, database_of  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "ranges.toml"
REPO = Path(__file__).resolve().parents[1]
PAGE_SIZE = 100
WORKERS = 4
TABLES = {
    "ranged_env": ("account", "new_project"),
    "churn_env": ("account", "new_project"),
    "kill_env": ("opportunity",),
    "keyscan_env": ("opportunity",),
}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-ranges")) as ready:
        yield ready


def write_config(
    sim: dict[str, Any],
    directory: Path,
    env: str,
    store_url: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Path:
    """A configuration for one environment: small pages, split above 500 rows, 4 ranges."""
    store_url = store_url or f"sqlite+aiosqlite:///{directory / 'mirror.db'}"
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    (found,) = [e for t in sim["tenants"] for e in t["environments"] if e["name"] == env]
    tenant = sim["tenants"][0]
    tables = ", ".join(f'"{t}"' for t in TABLES[env])
    path = directory / "dvmirror.toml"
    path.write_text(
        f'{app}\n[store]\nurl = "{store_url}"\n'
        f'[daemon]\ndata_dir = "{directory}"\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        f'[[tenants.environments]]\nname = "{env}"\nurl = "{found["url"]}"\n'
        f"tables = [{tables}]\npage_size = {page_size}\nsplit_rows = 500\n"
        f"range_workers = {WORKERS}\n"
    )
    return path


def query(database: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """`database`: a test's directory (its mirror.db) or a PostgreSQL store URL."""
    if isinstance(database, Path) and database.is_dir():
        database = database / "mirror.db"
    return compare.query(database, sql)


def converged(sim: dict[str, Any], database: Path | str, env: str) -> None:
    if isinstance(database, Path) and database.is_dir():
        database = database / "mirror.db"
    for table in TABLES[env]:
        compare.assert_converged(sim, database, env, table)


def logged(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a command's stderr."""
    lines = (line for line in stderr.splitlines() if line.startswith("{"))
    return [json.loads(line) for line in lines]


def churn(sim: dict[str, Any], env: str, table: str, seed: int, **counts: int) -> None:
    admin(sim, "POST", f"/environments/{env}/tables/{table}/churn", {"seed": seed, **counts})


def test_big_tables_backfill_as_parallel_ranges_and_equal_the_source(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """Both a change-tracked and an untracked table split into 4 ranges read at once; the
    mirror equals the source column by column, and later cycles follow the stored token."""
    config = write_config(sim, tmp_path, "ranged_env")
    result = run_cli("--config", config, "backfill", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.count("key_ranges_planned") == 2, result.stderr[-3000:]
    assert query(tmp_path, "SELECT count(*) FROM dv_key_ranges") == [(0,)]  # closed
    phases = dict(query(tmp_path, "SELECT table_name, phase FROM dv_sync_state"))
    assert phases == {"account": "delta", "new_project": "watermark"}
    converged(sim, tmp_path, "ranged_env")
    # The ranges were in flight together (one chain keeps one request in flight).
    assert user_stats(sim, "ranged_env")["max_concurrency"] >= WORKERS

    churn(sim, "ranged_env", "account", 5, creates=20, updates=30, deletes=15)
    churn(sim, "ranged_env", "new_project", 6, creates=20, updates=30)
    result = run_cli("--config", config, "sync", "--once", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "key_ranges_planned" not in result.stderr  # incremental: no new full pass
    converged(sim, tmp_path, "ranged_env")


def test_rows_changed_during_a_ranged_backfill_end_up_exact(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """Rows are updated, created and deleted while the ranges run. The delta token was taken
    before the first range, so replaying it makes the mirror equal the source (both stores)."""
    config = write_config(sim, tmp_path, "churn_env", store_url)
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "backfill"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    rounds = 0
    stop = threading.Event()

    def keep_churning() -> None:
        nonlocal rounds
        while not stop.is_set():
            rounds += 1
            churn(sim, "churn_env", "account", rounds, creates=4, updates=8, deletes=3)
            churn(sim, "churn_env", "new_project", rounds, creates=3, updates=6)
            time.sleep(0.05)

    churner = threading.Thread(target=keep_churning)
    churner.start()
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        stop.set()
        churner.join()
    assert process.returncode == 0, stderr[-3000:]
    assert stderr.count("key_ranges_planned") == 2, stderr[-3000:]
    assert rounds >= 10, "the churn did not overlap the backfill"
    # What changed after the backfill's own replay is the next cycle's work, as always.
    result = run_cli("--config", config, "sync", "--once", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    converged(sim, database_of(store_url), "churn_env")


def test_sigkill_mid_ranges_resumes_every_range_where_it_stopped(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """SIGKILL while the ranges run, rerun: no new key scan, every range goes on from its own
    checkpoint (each row committed once), at most one page per range fetched again."""
    config = write_config(sim, tmp_path, "kill_env", store_url)
    database = database_of(store_url)
    admin(sim, "POST", "/stats/reset", {})
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "backfill"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    progress: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            progress = query(database, "SELECT range_no, pages, done, rows FROM dv_key_ranges")
        except Exception:  # not migrated yet (no such table), in either store
            continue
        if sum(1 for _, pages, *_ in progress if pages >= 2) >= 2:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert len(progress) == WORKERS, progress
    committed = sum(pages for _, pages, *_ in progress)
    assert 4 <= committed < 4000 // PAGE_SIZE, "the ranges were not caught in the middle"

    # status shows the ranged pass and how far it got
    shown = run_cli("--config", config, "status", "--json")
    (entry,) = json.loads(shown.stdout)["environments"][0]["tables"]
    assert entry["phase"] == "backfill"
    assert entry["ranges"] == {"done": sum(done for *_, done, _ in progress), "total": WORKERS}
    assert f"/{WORKERS} ranges" in run_cli("--config", config, "status").stdout

    served_before = user_stats(sim, "kill_env")["rows_served"]
    result = run_cli("--config", config, "backfill", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "key_scan_started" not in result.stderr  # the stored ranges were resumed
    compare.assert_converged(sim, database, "kill_env", "opportunity")
    (upserted,) = query(database, "SELECT rows_upserted FROM dv_sync_state")[0]
    assert upserted == 4000  # every row committed exactly once over both runs
    served_after = user_stats(sim, "kill_env")["rows_served"] - served_before
    # Rows the rerun read: the ranges' remaining rows plus at most one page per range again.
    committed_rows = sum(rows for *_, rows in progress)
    assert served_after <= 4000 - committed_rows + WORKERS * PAGE_SIZE, (
        served_after,
        committed_rows,
    )


def test_sigkill_mid_key_scan_resumes_the_scan_at_its_last_committed_key_page(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """SIGKILL once two key pages (of five: 25000 keys, 5000 a page) are committed, rerun: the
    scan goes on from its stored next link (at most the page in flight is read again), cuts
    the ranges from the stored sample plus the rest, and the mirror equals the source."""
    config = write_config(sim, tmp_path, "keyscan_env", store_url, page_size=1000)
    database = database_of(store_url)
    admin(sim, "POST", "/stats/reset", {})
    process = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "backfill"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    # The third key page was asked for (its second continuation): the second one is committed.
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if user_stats(sim, "keyscan_env")["continuations"] >= 2:
                break
        except KeyError:  # no request from this user yet
            pass
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    settle = time.monotonic() + 10  # the page in flight at the kill is served to nobody
    while user_stats(sim, "keyscan_env")["in_flight"] and time.monotonic() < settle:
        time.sleep(0.05)
    before = user_stats(sim, "keyscan_env")
    assert 2 <= before["continuations"] < 5, "the key scan was not caught in the middle"
    assert query(database, "SELECT count(*) FROM dv_key_ranges") == [(0,)]
    ((progress,),) = query(database, "SELECT key_scan FROM dv_sync_state")

    result = run_cli("--config", config, "backfill", timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = user_stats(sim, "keyscan_env")
    # The rerun read the remaining keys and then every row once (the ranges): the key pages
    # committed before the kill (two or more, 10000+ keys) are not read again, only the one
    # in flight at the kill (its link is where the stored scan goes on).
    keys_read = after["rows_served"] - before["rows_served"] - 25000
    assert keys_read <= 25000 - 10000, (before, after)
    assert after["continuations_repeated"] <= 1, (before, after)
    committed_keys = json.loads(progress)["seen"]
    assert committed_keys >= 10000 and keys_read == 25000 - committed_keys, progress
    events = {e["event"]: e for e in logged(result.stderr)}
    assert "key_scan_started" not in events, result.stderr[-2000:]
    # Resumed with the keys of the committed pages (two or more), not from the first key.
    assert 10000 <= events["key_scan_resumed"]["keys"] < 25000, events["key_scan_resumed"]
    planned = events["key_ranges_planned"]
    assert (planned["ranges"], planned["keys_scanned"]) == (WORKERS, 25000), planned
    compare.assert_converged(sim, database, "keyscan_env", "opportunity")
    assert query(database, "SELECT rows_upserted, key_scan FROM dv_sync_state") == [(25000, None)]


def test_sigterm_during_the_key_scan_stops_it_between_key_pages(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """`dvmirror run` asked to stop mid key scan ends after the key page in flight: exit 0,
    the scan's progress stored, no ranges cut yet (the next start resumes the scan)."""
    config = write_config(sim, tmp_path, "keyscan_env", page_size=1000)
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nshutdown_grace = "60s"\n')
    )
    admin(sim, "POST", "/stats/reset", {})
    daemon = subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "run"],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if user_stats(sim, "keyscan_env")["continuations"] >= 1:
                break
        except KeyError:  # no request from this user yet
            pass
        time.sleep(0.02)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr[-3000:]
    assert user_stats(sim, "keyscan_env")["continuations"] < 4, "the scan went on to its end"
    assert query(tmp_path, "SELECT count(*) FROM dv_key_ranges") == [(0,)]
    ((progress,),) = query(tmp_path, "SELECT key_scan FROM dv_sync_state")
    assert progress is not None and json.loads(progress)["seen"] >= 10000, progress

    # The org expires the table's change-tracking tokens before the next start: the stored
    # scan's link (an initial tracked read under way) is refused with 0x80044352. The scan
    # starts again from the first key instead of parking the table.
    admin(sim, "POST", "/environments/keyscan_env/tables/opportunity/expire-delta-tokens", {})
    result = run_cli("--config", config, "backfill", timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    events = {e["event"]: e for e in logged(result.stderr)}
    assert "key_scan_link_expired" in events, result.stderr[-2000:]
    assert "key_scan_started" in events, result.stderr[-2000:]
    assert events["key_ranges_planned"]["keys_scanned"] == 25000, events["key_ranges_planned"]
    compare.assert_converged(sim, tmp_path / "mirror.db", "keyscan_env", "opportunity")
    assert query(tmp_path, "SELECT key_scan, parked_until FROM dv_sync_state") == [(None, None)]


def test_daemon_runs_ranges_stops_between_pages_on_sigterm_and_resumes(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """`dvmirror run` uses the same runner: a big table's first cycle runs as ranges; SIGTERM
    lets the in-flight pages commit and exits 0 with the ranges stored; the next start resumes
    them (no new key scan) and reaches change tracking with a mirror equal to the source."""
    config = write_config(sim, tmp_path, "kill_env")
    text = config.read_text().replace(
        "[daemon]\n", '[daemon]\nmetrics_listen = "127.0.0.1:0"\nshutdown_grace = "60s"\n'
    )
    config.write_text(
        text.replace('tables = ["opportunity"]', 'tables = ["opportunity"]\ninterval = "1h"')
    )

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(config), "run"],
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ranges() -> list[tuple[Any, ...]]:
        try:
            return query(tmp_path, "SELECT range_no, pages, done FROM dv_key_ranges")
        except sqlite3.OperationalError:
            return []

    daemon = start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and daemon.poll() is None:
        if sum(1 for _, pages, _ in ranges() if pages >= 1) >= 2:
            break
        time.sleep(0.05)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=90)
    assert daemon.returncode == 0, stderr[-3000:]
    stopped = ranges()
    assert len(stopped) == WORKERS and not all(done for *_, done in stopped), stopped
    assert query(tmp_path, "SELECT phase FROM dv_sync_state") == [("backfill",)]

    daemon = start()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and daemon.poll() is None:
            if query(tmp_path, "SELECT phase FROM dv_sync_state") == [("delta",)]:
                break
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=90)
    assert daemon.returncode == 0, stderr[-3000:]
    assert "key_scan_started" not in stderr  # resumed, not started over
    assert ranges() == []
    compare.assert_converged(sim, tmp_path / "mirror.db", "kill_env", "opportunity")
