"""History mode end to end: the simulator over real HTTPS, real MSAL, on a SQLite file and on a
throwaway PostgreSQL database. A backfill, churn (hard and soft deletes), a column added at the
source mid-run, an idle sync, an expired delta token's full resync, and a backfill killed with
SIGKILL and run again: the history always ends as one version per change, with exactly the
mirror's live rows as its open versions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sync.commands.backfill import run_backfill
from sync.commands.sync_once import run_sync_once
from sync.config.loading import load_config
from sync.config.model import Config
from tests.cli import clean_env, run_cli
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "history.toml"
REPO = Path(__file__).resolve().parents[1]
PAGE_SIZE = 20
KEYS = {"account": "accountid", "contact": "contactid", "opportunity": "opportunityid"}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-history")) as ready:
        yield ready


def suffix(store_url: str) -> str:
    return "pg" if store_url.startswith("postgresql") else "lite"


def write_config(
    sim: dict[str, Any], directory: Path, env: str, tables: dict[str, str], store_url: str
) -> Config:
    """`tables`: table → its extra table_options lines (history = true is always set)."""
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    lines = [app, f'[store]\nurl = "{store_url}"\n', f'[daemon]\ndata_dir = "{directory}"\n']
    for tenant in sim["tenants"]:
        lines.append(
            f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        )
        for found in tenant["environments"]:
            if found["name"] != env:
                continue
            names = ", ".join(f'"{t}"' for t in tables)
            lines.append(
                f'[[tenants.environments]]\nname = "{env}"\nurl = "{found["url"]}"\n'
                f"tables = [{names}]\npage_size = {PAGE_SIZE}\n"
            )
            for table, extra in tables.items():
                lines.append(
                    f"[tenants.environments.table_options.{table}]\nhistory = true\n{extra}"
                )
    path = directory / "dvmirror.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ=clean_env())


def backfill(config: Config) -> None:
    out = StringIO()
    console = Console(file=out, width=150)
    code = asyncio.run(run_backfill(config, env=None, table=None, console=console))
    assert code == 0, out.getvalue()


def sync_once(config: Config) -> None:
    out = StringIO()
    code = asyncio.run(run_sync_once(config, console=Console(file=out, width=150)))
    assert code == 0, out.getvalue()


def ref(config: Config, env: str, table: str) -> str:
    if config.store_url.startswith("postgresql"):
        return f'"{env}"."{table}"'
    return f'"{env}__{table}"'


def history(config: Config, env: str, table: str) -> list[tuple[str, int, str, bool]]:
    """(id, version, op, open) of every history row."""
    sql = (
        f"SELECT {KEYS[table]}, _dv_version, _dv_op, _dv_valid_to IS NULL "
        f"FROM {ref(config, env, table + '__history')}"
    )
    found = query(database_of(config.store_url), sql)
    return sorted((str(k), int(v), str(op), bool(is_open)) for k, v, op, is_open in found)


def live(config: Config, env: str, table: str) -> dict[str, int]:
    sql = (
        f"SELECT {KEYS[table]}, _dv_version FROM {ref(config, env, table)} "
        "WHERE _dv_deleted_at IS NULL"
    )
    return {str(k): int(v) for k, v in query(database_of(config.store_url), sql)}


def assert_history_fits(config: Config, env: str, table: str) -> list[tuple[str, int, str, bool]]:
    """One open version per key; the open upserts are exactly the mirror's live rows (same
    versions); no version recorded twice."""
    rows = history(config, env, table)
    opened = [r for r in rows if r[3]]
    assert len({r[0] for r in opened}) == len(opened)
    assert {r[0]: r[1] for r in opened if r[2] == "upsert"} == live(config, env, table)
    assert len({r[:3] for r in rows}) == len(rows)
    return rows


def churn(sim: dict[str, Any], env: str, table: str, seed: int, **counts: int) -> None:
    body = {"creates": 4, "updates": 6, "deletes": 3, "seed": seed} | counts
    admin(sim, "POST", f"/environments/{env}/tables/{table}/churn", body)


def test_history_follows_churn_drift_and_a_resync(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    env = f"hist_{suffix(store_url)}"
    config = write_config(
        sim, tmp_path, env, {"account": "", "contact": 'deletes = "soft"\n'}, store_url
    )
    backfill(config)
    for table in ("account", "contact"):
        rows = assert_history_fits(config, env, table)
        assert len(rows) == len(live(config, env, table)) > 50  # one version per row
        churn(sim, env, table, seed=1)
    admin(
        sim,
        "POST",
        f"/environments/{env}/tables/account/columns",
        {"name": "new_grade", "type": "String"},
    )
    churn(sim, env, "account", seed=2, creates=2, updates=8, deletes=0)
    sync_once(config)
    for table in ("account", "contact"):
        rows = assert_history_fits(config, env, table)
        # Each deletion the mirror saw (hard or soft) is a delete version; updates add versions.
        logged = query(
            database_of(config.store_url),
            'SELECT count(*) FROM "_dv_deletions" WHERE environment = ? AND "table" = ?',
            env,
            table,
        )
        assert sum(1 for r in rows if r[2] == "delete") == logged[0][0] > 0
        upserts = [r[0] for r in rows if r[2] == "upsert"]
        assert len(upserts) > len(set(upserts))
    # The column added at the source reached the history table with the new versions' values.
    graded = (
        f"SELECT count(*) FROM {ref(config, env, 'account__history')} WHERE new_grade IS NOT NULL"
    )
    [(count,)] = query(database_of(config.store_url), graded)
    assert count > 0
    before = {t: history(config, env, t) for t in ("account", "contact")}
    sync_once(config)  # nothing changed at the source: nothing changes in the history
    assert {t: history(config, env, t) for t in ("account", "contact")} == before
    # An expired token: a full resync reloads every row; only the rows deleted meanwhile add
    # versions (their deletions), none of the unchanged rows does.
    churn(sim, env, "account", seed=3, creates=0, updates=0, deletes=4)
    admin(sim, "POST", f"/environments/{env}/tables/account/expire-delta-tokens", {})
    sync_once(config)
    after = assert_history_fits(config, env, "account")
    added = {r[:3] for r in after} - {r[:3] for r in before["account"]}
    assert sorted(r[2] for r in added) == ["delete"] * 4
    assert len(after) == len(before["account"]) + 4
    # `verify --repair` writes through the same page path: the rows it restores or removes get
    # their versions, and the delta that brings the same changes later adds nothing.
    churn(sim, env, "contact", seed=4, creates=0, updates=2, deletes=2)
    prior = {r[:3] for r in history(config, env, "contact")}
    repaired = run_cli("--config", config.path, "verify", "--exact", "--repair", timeout=300)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    fixed = assert_history_fits(config, env, "contact")
    new = sorted(r[2] for r in {r[:3] for r in fixed} - prior)
    # Two deletions; an updated row may be one of them.
    assert new.count("delete") == 2 and 1 <= new.count("upsert") <= 2, new
    sync_once(config)
    assert history(config, env, "contact") == fixed


KILL_SCRIPT = """
import asyncio, sys
from io import StringIO
from rich.console import Console
from sync.commands.backfill import run_backfill
from sync.config.loading import load_config
config = load_config(sys.argv[1])
asyncio.run(run_backfill(config, env=None, table=None, console=Console(file=StringIO())))
"""


def test_sigkill_mid_backfill_leaves_no_duplicate_history(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    env = f"histkill_{suffix(store_url)}"
    config = write_config(sim, tmp_path, env, {"opportunity": ""}, store_url)
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(config.path)],
        cwd=REPO,
        env=clean_env({"PYTHONPATH": str(REPO)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = database_of(config.store_url)
    deadline, pages = time.monotonic() + 60, 0
    while pages < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            found = query(database, "SELECT pages FROM dv_sync_state")
        except Exception:  # not migrated yet, in either store
            continue
        pages = found[0][0] if found else 0
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert 4 <= pages < 30, "the backfill was not caught in the middle"
    backfill(config)
    rows = assert_history_fits(config, env, "opportunity")
    assert len(rows) == len(live(config, env, "opportunity")) == 600
