"""History mode on a table too wide for PostgreSQL's rows (the scenario of
tests/test_pg_wide_e2e.py), through the real CLI from the simulator over HTTPS: a backfill
killed with SIGKILL and run again, churn with a column added at the source, and an idle sync.
The history's open versions always equal the mirror row for row and column for column, read
through the views `<table>__wide` and `<table>__history__wide`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import clean_env, run_cli
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401
from tests.test_pg_wide_e2e import ENV, SCENARIO, TABLE, columns_of

pytestmark = [
    pytest.mark.usefixtures("no_ca_env"),
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]
KEY = f"{TABLE}id"
# Columns that differ between a mirror row and its open version by design: when the row was
# last seen (a touch), its deletion mark, its commit number.
NOT_COMPARED = {"_dv_synced_at", "_dv_deleted_at", "_dv_commit_seq"}


@pytest.fixture(name="sim")
def _sim(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path / "sim") as ready:
        yield ready


def write_config(sim: dict[str, Any], directory: Path, store_url: str) -> Path:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    tenant = sim["tenants"][0]
    env = next(e for e in tenant["environments"] if e["name"] == ENV)
    path = directory / "dvmirror.toml"
    path.write_text(
        f'{app}\n[store]\nurl = "{store_url}"\n\n[daemon]\ndata_dir = "{directory}"\n\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n\n'
        f'[[tenants.environments]]\nname = "{ENV}"\nurl = "{env["url"]}"\n'
        f'tables = ["{TABLE}"]\npage_size = 10\n\n'
        f"[tenants.environments.table_options.{TABLE}]\nhistory = true\n"
    )
    return path


def cli(config: Path, *args: str) -> None:
    result = run_cli("--config", config, *args, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def versions(pg_url: str) -> list[tuple[str, int, str, bool]]:
    found = compare.query(
        pg_url,
        f'SELECT {KEY}::text, _dv_version, _dv_op, _dv_valid_to IS NULL FROM "{ENV}".'
        f'"{TABLE}__history"',
    )
    return sorted((str(k), int(v), str(op), bool(o)) for k, v, op, o in found)


def assert_history_equals_the_mirror(
    pg_url: str, *, values: bool = True
) -> list[tuple[str, int, str, bool]]:
    """One open version per key, one row per version, and the open versions hold exactly the
    mirror's rows (with `values`: every column, through the views)."""
    rows = versions(pg_url)
    opened = [r for r in rows if r[3]]
    assert len({r[0] for r in opened}) == len(opened)
    assert len({r[:3] for r in rows}) == len(rows)
    live = compare.query(pg_url, f'SELECT count(*) FROM "{ENV}"."{TABLE}"')[0][0]
    assert len([r for r in opened if r[2] == "upsert"]) == live
    if not values:
        return rows
    shared = [c for c in columns_of(pg_url, f"{TABLE}__wide") if c not in NOT_COMPARED]
    assert set(shared) <= set(columns_of(pg_url, f"{TABLE}__history__wide"))
    select = ", ".join(f'"{c}"' for c in shared)
    mirror = f'SELECT {select} FROM "{ENV}"."{TABLE}__wide"'
    history = (
        f'SELECT {select} FROM "{ENV}"."{TABLE}__history__wide" '
        "WHERE _dv_valid_to IS NULL AND _dv_op = 'upsert'"
    )
    for a, b in ((mirror, history), (history, mirror)):
        assert compare.query(pg_url, f"SELECT count(*) FROM ({a} EXCEPT {b}) AS d")[0][0] == 0
    return rows


def test_a_wide_tables_history_survives_sigkill_drift_and_replays(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    config = write_config(sim, tmp_path, pg_url)
    process = subprocess.Popen(
        ["dvmirror", "--config", str(config), "backfill"],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, pages = time.monotonic() + 60, 0
    while pages < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        try:
            found = compare.query(pg_url, "SELECT pages FROM dv_sync_state")
        except Exception:  # not migrated yet
            continue
        pages = found[0][0] if found else 0
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert 2 <= pages < 6, "the backfill was not caught in the middle"
    cli(config, "backfill")
    rows = assert_history_equals_the_mirror(pg_url)
    assert len(rows) == 60 and all(r[3] for r in rows)  # one version per row
    physical = columns_of(pg_url, f"{TABLE}__history")
    assert "_dv_overflow" in physical and len(physical) <= 1600

    # Columns added at the source (no room left in the rows: they join both overflows), churn.
    columns = f"/environments/{ENV}/tables/{TABLE}/columns"
    added = ["new_measured_at", "new_measured_cost", "new_measured_note"]
    for name, kind in zip(added, ("DateTime", "Money", "Memo"), strict=True):
        admin(sim, "POST", columns, {"name": name, "type": kind})
    body = {"creates": 5, "updates": 10, "deletes": 3, "seed": 4}
    admin(sim, "POST", f"/environments/{ENV}/tables/{TABLE}/churn", body)
    cli(config, "sync", "--once")
    after = assert_history_equals_the_mirror(pg_url)
    new = {r[:3] for r in after} - {r[:3] for r in rows}
    assert sum(1 for r in new if r[2] == "delete") == 3
    assert sum(1 for r in new if r[2] == "upsert") >= 10  # creates, updates (a deleted one too)
    assert set(added) <= set(columns_of(pg_url, f"{TABLE}__history__wide"))
    filled = compare.query(
        pg_url,
        f'SELECT count(*) FROM "{ENV}"."{TABLE}__history__wide" '
        "WHERE new_measured_cost IS NOT NULL AND _dv_valid_to IS NULL",
    )
    assert filled[0][0] > 0

    # A ghost: a mirror row the source never had (its deletion never reached the delta). The
    # next start's catch-up gives it a version (the sync is otherwise idle); `verify --repair`
    # deletes it and closes the version.
    ghost = "0000abcd-0000-4000-8000-000000000000"
    compare.query(
        pg_url,
        f'INSERT INTO "{ENV}"."{TABLE}" ({KEY}, "_dv_version", "_dv_synced_at", "_dv_commit_seq") '
        f'SELECT ?::uuid, 1, now(), max("_dv_commit_seq") + 1000 FROM "{ENV}"."{TABLE}"',
        ghost,
    )
    cli(config, "sync", "--once")
    # Nothing changed at the source: nothing changes in the history, but the ghost's version.
    ghostly = [r for r in versions(pg_url) if r[0] == ghost]
    assert ghostly == [(ghost, 1, "upsert", True)]
    assert [r for r in versions(pg_url) if r[0] != ghost] == after
    result = run_cli("--config", config, "verify", "--exact", "--repair", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ghostly = [r for r in versions(pg_url) if r[0] == ghost]
    assert ghostly == [(ghost, 1, "delete", True), (ghost, 1, "upsert", False)]
    assert_history_equals_the_mirror(pg_url, values=False)
