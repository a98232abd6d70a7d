"""`tables` rules end to end: the simulator over real HTTPS and MSAL, the real `dvmirror`
command line. `dvmirror tables --env E` prints the resolved list with the reasons, a backfill
mirrors exactly that list, and a table removed from the solution drops out at the next
resolution (its mirror kept)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.store.metadata_tables import NAMES as METADATA_TABLES
from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env")]
SCENARIO = Path(__file__).parent / "scenarios" / "table_rules.toml"
RULES = (
    'tables = { include = ["account", "new_*", "opportunity"], exclude = ["new_inspection"], '
    'solutions = ["ContosoSales", "NoSuchSolution"] }'
)


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-rules")) as ready:
        yield ready


def write_config(sim: dict[str, Any], directory: Path, tables: str) -> Path:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    (tenant,) = sim["tenants"]
    (env,) = tenant["environments"]
    path = directory / "dvmirror.toml"
    path.write_text(
        f'{app}\n[store]\nurl = "sqlite+aiosqlite:///{directory / "mirror.db"}"\n'
        f'[daemon]\ndata_dir = "{directory}"\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        f'[[tenants.environments]]\nname = "{env["name"]}"\nurl = "{env["url"]}"\n{tables}\n'
    )
    return path


def mirror_tables(directory: Path) -> set[str]:
    with sqlite3.connect(directory / "mirror.db") as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'rules_env__%'")
        names = {name.removeprefix("rules_env__") for (name,) in rows}
    return names - set(METADATA_TABLES)  # the environment's metadata tables (optionsetmetadata…)


def test_tables_command_and_backfill_follow_the_rules(sim: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, RULES)
    checked = run_cli("--config", config, "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert "include account, new_*, opportunity; exclude new_inspection" in checked.stdout

    listed = run_cli("--config", config, "tables", "--env", "rules_env")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[:4] == [
        "rules_env: 3 table(s) mirrored",
        "  account",
        "  contact",
        "  new_project  (watermark: no change tracking)",
    ]
    assert "  new_inspection: excluded by 'new_inspection'" in lines
    assert "  new_person: private table (IsPrivate)" in lines
    assert "  opportunity: virtual table (its rows live in an external source)" in lines
    assert "warning: solution 'NoSuchSolution' does not exist in this environment" in lines

    migrated = run_cli("--config", config, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    loaded = run_cli("--config", config, "backfill", "--env", "rules_env")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    assert mirror_tables(tmp_path) == {"account", "contact", "new_project"}
    # The named virtual table is said out loud in the run's log, one line.
    assert "opportunity" in loaded.stderr and "virtual table" in loaded.stderr

    # Removing contact from the solution: the next resolution leaves it out, no restart.
    admin(sim, "POST", "/environments/rules_env/solutions/ContosoSales", {"remove": "contact"})
    try:
        again = run_cli("--config", config, "tables", "--env", "rules_env")
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[:3] == [
            "rules_env: 2 table(s) mirrored",
            "  account",
            "  new_project  (watermark: no change tracking)",
        ]
    finally:
        admin(sim, "POST", "/environments/rules_env/solutions/ContosoSales", {"add": "contact"})
    assert "contact" in mirror_tables(tmp_path)  # its mirror is kept


def test_a_listed_table_that_cannot_be_mirrored_is_named(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path, 'tables = ["account", "opportunity", "new_person"]')
    listed = run_cli("--config", config, "tables", "--env", "rules_env")
    assert listed.returncode == 0, listed.stderr
    warnings = [line for line in listed.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: opportunity is listed in tables (and read as listed), but: virtual table "
        "(its rows live in an external source)",
        "warning: new_person is listed in tables (and read as listed), but: private table "
        "(IsPrivate)",
    ]


def test_bad_rules_are_one_line_and_exit_2(sim: dict[str, Any], tmp_path: Path) -> None:
    config = write_config(sim, tmp_path, 'tables = { include = ["Bad Name"] }')
    checked = run_cli("--config", config, "config", "check")
    assert checked.returncode == 2
    assert "is not a glob over logical names" in checked.stderr
    assert "Traceback" not in checked.stderr and len(checked.stderr.strip().splitlines()) == 1
    unknown = run_cli("--config", write_config(sim, tmp_path, RULES), "tables", "--env", "nope")
    assert unknown.returncode == 2 and "no environment named 'nope'" in unknown.stderr


def test_daemon_follows_solution_changes_without_restart(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    from tests.daemonproc import DaemonProcess, wait_until

    def mirror_count(database: Path, env: str, table: str) -> int:
        with sqlite3.connect(database, timeout=10) as db:
            try:
                return int(db.execute(f'SELECT count(*) FROM "{env}__{table}"').fetchone()[0])
            except sqlite3.OperationalError:  # not created yet
                return -1

    rules = 'tables = { include = ["account"], solutions = ["ContosoSales"] }\ninterval = "1s"'
    config = write_config(sim, tmp_path, rules)
    assert run_cli("--config", config, "migrate").returncode == 0
    database = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    solution = "/environments/rules_env/solutions/ContosoSales"
    try:
        wait_until(lambda: mirror_count(database, "rules_env", "contact") == 30, what="contact")
        wait_until(lambda: mirror_count(database, "rules_env", "account") == 40, what="account")
        admin(sim, "POST", solution, {"remove": "contact"})
        admin(sim, "POST", solution, {"add": "new_project"})
        daemon.wait_event("table_dropped")
        wait_until(
            lambda: mirror_count(database, "rules_env", "new_project") == 25, what="new_project"
        )
        (dropped,) = daemon.named("table_dropped")
        assert dropped["table"] == "contact"
        assert [e["table"] for e in daemon.named("table_added")] == ["new_project"]
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        admin(sim, "POST", solution, {"add": "contact"})
        admin(sim, "POST", solution, {"remove": "new_project"})
    assert mirror_count(database, "rules_env", "contact") == 30  # its mirror kept
    # The virtual table in the solution was never taken up.
    with sqlite3.connect(database) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "rules_env__opportunity" not in names
