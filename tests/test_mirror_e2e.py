"""The mirror engine end to end: the simulator over real HTTPS, real MSAL, and each test on both
stores: a real SQLite file and a real (throwaway) PostgreSQL database."""

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
from tests import mirror_compare as compare
from tests.cli import clean_env
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "mirror.toml"
REPO = Path(__file__).resolve().parents[1]
PAGE_SIZE = 50
TABLES = {
    "hard_env": ("account", "contact", "new_project"),
    "soft_env": ("account", "new_project"),
    "hostile_env": ("account", "contact"),
    "kill_env": ("opportunity",),
}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-mirror")) as ready:
        yield ready


def write_config(
    sim: dict[str, Any], directory: Path, envs: tuple[str, ...], store_url: str
) -> Config:
    """A configuration for some of the simulator's environments, with a small page size."""
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    lines = [
        app,
        f'[store]\nurl = "{store_url}"\n',
        f'[daemon]\ndata_dir = "{directory}"\n',
    ]
    for tenant in sim["tenants"]:
        lines.append(
            f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        )
        for env in tenant["environments"]:
            if env["name"] not in envs:
                continue
            tables = ", ".join(f'"{t}"' for t in TABLES[env["name"]])
            lines.append(
                f'[[tenants.environments]]\nname = "{env["name"]}"\nurl = "{env["url"]}"\n'
                f"tables = [{tables}]\npage_size = {PAGE_SIZE}\n"
            )
            if env["name"] == "soft_env":
                for table in TABLES["soft_env"]:
                    lines.append(
                        f'[tenants.environments.table_options.{table}]\ndeletes = "soft"\n'
                    )
    path = directory / "dvmirror.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ=clean_env())


def run(coro: Any) -> int:
    return int(asyncio.run(coro))


def backfill(config: Config) -> tuple[int, str]:
    out = StringIO()
    code = run(run_backfill(config, env=None, table=None, console=Console(file=out, width=150)))
    return code, out.getvalue()


def sync_once(config: Config) -> tuple[int, str]:
    out = StringIO()
    code = run(run_sync_once(config, console=Console(file=out, width=150)))
    return code, out.getvalue()


def mirror_rows(config: Config, env: str, table: str) -> dict[str, dict[str, Any]]:
    rows = compare.mirror_rows(database_of(config.store_url), env, table)
    assert rows is not None, f"{env}/{table}: no mirror table"
    return rows


def assert_converged(sim: dict[str, Any], config: Config, env: str, table: str) -> None:
    """The mirror equals the source, column by column; soft-deleted rows left aside."""
    compare.assert_converged(sim, database_of(config.store_url), env, table)


def churn(sim: dict[str, Any], env: str, table: str, seed: int, **counts: int) -> None:
    body = {"creates": 7, "updates": 9, "deletes": 5, "seed": seed} | counts
    admin(sim, "POST", f"/environments/{env}/tables/{table}/churn", body)


def test_backfill_churn_new_column_then_sync_converges(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """Backfill, churn (creates, updates, deletes, a new column), sync --once: mirrors equal the
    source in both delete modes, the non-change-tracked table included."""
    config = write_config(sim, tmp_path, ("hard_env", "soft_env"), store_url)
    assert backfill(config)[0] == 0
    for env in ("hard_env", "soft_env"):
        for table in TABLES[env]:
            assert_converged(sim, config, env, table)
            churn(sim, env, table, seed=3)
    # Both stores run against one simulator: each adds a column of its own.
    new_column = "new_score_pg" if store_url.startswith("postgresql") else "new_score"
    admin(
        sim,
        "POST",
        "/environments/hard_env/tables/account/columns",
        {"name": new_column, "type": "Decimal"},
    )
    churn(sim, "hard_env", "account", seed=4, creates=3, updates=40, deletes=0)
    projects_before = set(mirror_rows(config, "hard_env", "new_project"))
    code, output = sync_once(config)
    assert code == 0, output
    for env in ("hard_env", "soft_env"):
        for table in TABLES[env]:
            assert_converged(sim, config, env, table)
    assert any(
        r.get(new_column) is not None for r in compare.source_rows(sim, "hard_env", "account")
    )
    soft = mirror_rows(config, "soft_env", "account")
    assert 0 < sum(1 for r in soft.values() if r["_dv_deleted_at"] is not None) <= 5
    [(logged,)] = query(
        database_of(config.store_url),
        'SELECT count(*) FROM "_dv_deletions" WHERE environment = ? AND "table" = ?',
        "hard_env",
        "new_project",
    )
    assert logged == len(projects_before - set(mirror_rows(config, "hard_env", "new_project")))
    assert logged > 0


def test_expired_delta_token_resyncs_without_ghosts(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """An expired delta token turns into a full resync that also removes rows gone meanwhile."""
    config = write_config(sim, tmp_path, ("hard_env",), store_url)
    assert backfill(config)[0] == 0
    churn(sim, "hard_env", "contact", seed=21, creates=4, updates=6, deletes=8)
    admin(sim, "POST", "/environments/hard_env/tables/contact/expire-delta-tokens", {})
    code, output = sync_once(config)
    assert code == 0, output
    assert_converged(sim, config, "hard_env", "contact")
    [(phase,)] = query(
        database_of(config.store_url),
        "SELECT phase FROM dv_sync_state WHERE environment = 'hard_env' AND table_name = 'contact'",
    )
    assert phase == "delta"


HOSTILE = {
    "malformed_json": "not JSON",
    "missing_key": "has no contactid",
    "wrong_type": "got str",
    "unsafe_attribute": "not a safe identifier",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_page_parks_only_its_table(
    sim: dict[str, Any], tmp_path: Path, kind: str, store_url: str
) -> None:
    """A hostile page parks its table with a clear error, writes nothing, and the others go on."""
    config = write_config(sim, tmp_path, ("hostile_env",), store_url)
    assert backfill(config)[0] == 0
    before = mirror_rows(config, "hostile_env", "contact")
    churn(sim, "hostile_env", "contact", seed=31)
    churn(sim, "hostile_env", "account", seed=32)
    admin(sim, "POST", "/environments/hostile_env/tables/contact/hostile", {"kind": kind})
    try:
        code, output = sync_once(config)
    finally:
        admin(sim, "POST", "/environments/hostile_env/tables/contact/hostile", {"kind": None})
    assert code == 1, output
    assert mirror_rows(config, "hostile_env", "contact") == before
    assert_converged(sim, config, "hostile_env", "account")
    [(error,)] = query(
        database_of(config.store_url),
        "SELECT last_error FROM dv_sync_state WHERE table_name = 'contact'",
    )
    assert HOSTILE[kind] in error
    assert sync_once(config)[0] == 0
    assert_converged(sim, config, "hostile_env", "contact")


KILL_SCRIPT = """
import asyncio, sys
from io import StringIO
from rich.console import Console
from sync.commands.backfill import run_backfill
from sync.config.loading import load_config
config = load_config(sys.argv[1])
asyncio.run(run_backfill(config, env=None, table=None, console=Console(file=StringIO())))
"""


def test_sigkill_mid_backfill_resumes_fetching_at_most_one_page_again(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """SIGKILL in the middle of a backfill, rerun: same mirror, at most one page fetched twice."""
    config = write_config(sim, tmp_path, ("kill_env",), store_url)
    admin(sim, "POST", "/stats/reset", {})
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(config.path)],
        cwd=REPO,
        env=clean_env({"PYTHONPATH": str(REPO)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = database_of(config.store_url)
    deadline = time.monotonic() + 60
    pages = 0
    while pages < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        try:
            found = query(database, "SELECT pages FROM dv_sync_state")
        except Exception:  # not migrated yet (no such table), in either store
            continue
        pages = found[0][0] if found else 0
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert 5 <= pages < 40, "the backfill was not caught in the middle"
    first = user_stats(sim, "kill_env")["requests"]
    assert backfill(config)[0] == 0
    assert_converged(sim, config, "kill_env", "opportunity")
    total = user_stats(sim, "kill_env")["requests"]
    pages_needed = 2000 // PAGE_SIZE  # the last page carries the delta link
    metadata_per_run = 5  # entity, attributes, date-time cast, total record count, its N:N
    # After the run, the metadata tables' casts (sync.mirror.metadata_refresh): one per
    # attribute type opportunity has, and its ManyToOneRelationships.
    metadata_tables = 10
    assert total <= pages_needed + 1 + 2 * metadata_per_run + metadata_tables, (first, total)
