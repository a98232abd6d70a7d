"""N:N intersect tables end to end: the simulator over real HTTPS and MSAL, each test on a real
SQLite file and a real PostgreSQL database. `relationships = "auto"` mirrors the N:N between the
mirrored tables (intersect ids typed uuid), `relationshipmetadata` says how to join them, churn
associates and disassociates, and `sync --once` leaves every intersect mirror equal to the
source: through change tracking where the intersect table has it, else through a full key read
whose vanished rows become deletions in `_dv_deletions`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sync.commands.backfill import run_backfill, run_tables
from sync.commands.sync_once import run_sync_once
from sync.config.loading import load_config
from sync.config.model import Config
from tests import mirror_compare as compare
from tests.cli import clean_env, run_cli
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env")]
SCENARIO = Path(__file__).parent / "scenarios" / "relationships.toml"
ENV = "nn_env"
TABLES = ("account", "contact", "new_project")
AUTO = ("new_account_account", "new_account_contact", "new_contact_project")


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-nn")) as ready:
        yield ready


def config_text(sim: dict[str, Any], directory: Path, store_url: str, extra: str = "") -> str:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    (tenant,) = sim["tenants"]
    (env,) = tenant["environments"]
    tables = ", ".join(f'"{t}"' for t in TABLES)
    return (
        f'{app}\n[store]\nurl = "{store_url}"\n[daemon]\ndata_dir = "{directory}"\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        f'[[tenants.environments]]\nname = "{ENV}"\nurl = "{env["url"]}"\n'
        f"tables = [{tables}]\npage_size = 7\n{extra}\n"
    )


def write_config(sim: dict[str, Any], directory: Path, store_url: str, extra: str = "") -> Config:
    path = directory / "dvmirror.toml"
    path.write_text(config_text(sim, directory, store_url, extra))
    return load_config(path, environ=clean_env())


def console() -> Console:
    return Console(file=StringIO(), width=150)


def backfill(config: Config) -> int:
    return int(asyncio.run(run_backfill(config, env=None, table=None, console=console())))


def sync_once(config: Config) -> int:
    return int(asyncio.run(run_sync_once(config, console=console())))


def churn(sim: dict[str, Any], table: str, seed: int, **counts: int) -> dict[str, Any]:
    body = {"creates": 0, "updates": 0, "deletes": 0, "seed": seed} | counts
    return dict(admin(sim, "POST", f"/environments/{ENV}/tables/{table}/churn", body))


def relationship_rows(store_url: str) -> list[tuple[Any, ...]]:
    database = database_of(store_url)
    name = (
        f'"{ENV}".relationshipmetadata'
        if isinstance(database, str)
        else f'"{ENV}__relationshipmetadata"'
    )
    return query(database, f"SELECT * FROM {name} ORDER BY schema_name")


# The metadata tables (sync.store.metadata_tables) are there whatever `relationships` says.
METADATA_TABLES = {
    f"{kind}metadata"
    for kind in ("optionset", "globaloptionset", "state", "status", "target", "attribute")
}


def mirror_tables(store_url: str) -> set[str]:
    return _tables_in_store(store_url) - METADATA_TABLES


def _tables_in_store(store_url: str) -> set[str]:
    database = database_of(store_url)
    if isinstance(database, str):
        rows = query(
            database, "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", ENV
        )
        return {str(name) for (name,) in rows}
    rows = query(
        database, "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?", f"{ENV}__%"
    )
    return {str(name).removeprefix(f"{ENV}__") for (name,) in rows}


def deletions(store_url: str, table: str) -> set[str]:
    rows = query(
        database_of(store_url),
        'SELECT id FROM "_dv_deletions" WHERE environment = ? AND "table" = ?',
        ENV,
        table,
    )
    return {str(i).lower() for (i,) in rows}


def source_keys(sim: dict[str, Any], table: str) -> set[str]:
    key = compare.primary_of(table)
    return {r[key] for r in compare.source_rows(sim, ENV, table)}


def test_auto_mirrors_the_nn_between_mirrored_tables_and_follows_churn(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = write_config(sim, tmp_path, store_url)
    assert run_cli("--config", tmp_path / "dvmirror.toml", "migrate").returncode == 0
    assert backfill(config) == 0
    database = database_of(store_url)
    assert mirror_tables(store_url) >= {*TABLES, *AUTO, "relationshipmetadata"}
    assert "new_account_opportunity" not in mirror_tables(store_url)  # opportunity: not mirrored
    assert relationship_rows(store_url) == [
        (
            "new_account_account",
            "new_account_account",
            "account",
            "accountidone",
            "account",
            "accountidtwo",
        ),
        (
            "new_account_contact",
            "new_account_contact",
            "account",
            "accountid",
            "contact",
            "contactid",
        ),
        (
            "new_contact_project",
            "new_contact_project",
            "contact",
            "contactid",
            "new_project",
            "new_projectid",
        ),
    ]
    for table in AUTO:
        compare.assert_converged(sim, database, ENV, table)
    if isinstance(database, str):  # the two id columns are uuid, as the mirror's keys are
        types = query(
            database,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = 'new_account_contact' "
            "AND column_name IN ('accountid', 'contactid', 'new_account_contactid')",
            ENV,
        )
        assert {t for _, t in types} == {"uuid"} and len(types) == 3

    # Associate and disassociate in each intersect table; delete accounts (their associations
    # go with them, as Dataverse's cascade does).
    before = {t: source_keys(sim, t) for t in AUTO}
    for seed, table in enumerate(AUTO, start=1):
        assert churn(sim, table, seed, deletes=3)["deleted"] == 3  # of the rows mirrored
        assert churn(sim, table, seed, creates=5)["created"] == 5
    churn(sim, "account", 9, deletes=2)
    assert sync_once(config) == 0
    for table in (*AUTO, "account"):
        compare.assert_converged(sim, database, ENV, table)
    # Disassociations are deletions in the log, whether they came as tombstones (change tracking)
    # or as keys a full key read no longer found.
    for table in ("new_account_contact", "new_contact_project"):
        gone = before[table] - source_keys(sim, table)
        assert len(gone) >= 3 and gone <= deletions(store_url, table)

    if not isinstance(database, str):  # `verify` covers the N:N tables (one store: seconds)
        verified = run_cli("--config", tmp_path / "dvmirror.toml", "verify", "--exact", "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        outcomes = {t["table"]: t["outcome"] for t in json.loads(verified.stdout)["tables"]}
        assert {outcomes[t] for t in AUTO} == {"match"}

    # The documented join: the contacts of each account through the intersect table.
    if isinstance(database, str):
        joined = query(
            database,
            f'SELECT a.accountid, c.contactid FROM "{ENV}".new_account_contact ac '
            f'JOIN "{ENV}".account a ON a.accountid = ac.accountid '
            f'JOIN "{ENV}".contact c ON c.contactid = ac.contactid',
        )
    else:
        joined = query(
            database,
            f'SELECT a.accountid, c.contactid FROM "{ENV}__new_account_contact" ac '
            f'JOIN "{ENV}__account" a ON a.accountid = ac.accountid '
            f'JOIN "{ENV}__contact" c ON c.contactid = ac.contactid',
        )
    pairs = {
        (r["accountid"], r["contactid"])
        for r in compare.source_rows(sim, ENV, "new_account_contact")
    }
    assert {(str(a), str(c)) for a, c in joined} == pairs


def test_a_key_scanned_intersect_table_waits_for_its_reconcile_interval(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """Without change tracking, an intersect table is read (keys only) every reconcile interval,
    not every cycle: a cycle inside the interval reads nothing, one past it converges."""
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    config = write_config(sim, tmp_path, store_url, 'relationships = ["new_contact_project"]')
    assert run_cli("--config", tmp_path / "dvmirror.toml", "migrate").returncode == 0
    assert backfill(config) == 0
    churn(sim, "new_contact_project", 21, creates=2, deletes=2)

    def cycle(every: timedelta) -> int:
        return int(
            asyncio.run(
                run_tables(
                    config,
                    env=ENV,
                    table=None,
                    console=console(),
                    until="cycle",
                    command="sync",
                    reconcile_every=every,
                )
            )
        )

    assert cycle(timedelta(hours=1)) == 0
    assert compare.differences(sim, database_of(store_url), ENV, "new_contact_project")
    assert cycle(timedelta(0)) == 0
    compare.assert_converged(sim, database_of(store_url), ENV, "new_contact_project")


def console_tables(config: Config) -> set[str]:
    """The tables the web console's environment page lists (its read model, no browser)."""
    from datetime import UTC, datetime

    from sync.console import figures, queries
    from sync.store.open import open_store

    async def read() -> dict[str, Any]:
        engine = await open_store(config, migrate=False)
        try:
            return await queries.control_rows(engine, since=datetime(2000, 1, 1, tzinfo=UTC))
        finally:
            await engine.dispose()

    raw = asyncio.run(read())
    ((tenant, env),) = config.environments()
    entry = figures.environment_entry(config, tenant, env, raw, datetime.now(UTC))
    return {t["table"] for t in entry["tables"]}


def test_none_and_an_explicit_list(sim: dict[str, Any], tmp_path: Path) -> None:
    none_dir, listed_dir = tmp_path / "none", tmp_path / "listed"
    none_dir.mkdir()
    listed_dir.mkdir()
    none_url = f"sqlite+aiosqlite:///{none_dir / 'mirror.db'}"
    none = write_config(sim, none_dir, none_url, 'relationships = "none"')
    assert run_cli("--config", none_dir / "dvmirror.toml", "migrate").returncode == 0
    assert backfill(none) == 0
    assert mirror_tables(none_url) == set(TABLES)

    listed_url = f"sqlite+aiosqlite:///{listed_dir / 'mirror.db'}"
    extra = 'relationships = ["new_account_opportunity", "new_account_contact", "no_such_nn"]'
    listed = write_config(sim, listed_dir, listed_url, extra)
    path = listed_dir / "dvmirror.toml"
    shown = run_cli("--config", path, "tables", "--env", ENV)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[
        lines.index(
            'N:N relationship table(s): 2, from relationships = ["new_account_opportunity", '
            '"new_account_contact", "no_such_nn"]'
        )
        + 1 :
    ] == [
        "  new_account_contact  (new_account_contact: account.accountid ↔ contact.contactid; "
        "change tracking)",
        "  new_account_opportunity  (new_account_opportunity: account.accountid ↔ "
        "opportunity.opportunityid; change tracking)",
        "warning: relationship 'no_such_nn': no N:N of the mirrored tables has that SchemaName",
    ]
    assert run_cli("--config", path, "migrate").returncode == 0
    assert backfill(listed) == 0
    assert mirror_tables(listed_url) == {
        *TABLES,
        "new_account_contact",
        "new_account_opportunity",
        "relationshipmetadata",
    }
    compare.assert_converged(sim, database_of(listed_url), ENV, "new_account_opportunity")

    # The N:N tables are mirrored as configured: status, dbt sources and resync know them.
    status = run_cli("--config", path, "status", "--json")
    assert status.returncode == 0, status.stderr
    (env,) = json.loads(status.stdout)["environments"]
    shown_tables = {t["table"]: t["configured"] for t in env["tables"]}
    assert shown_tables["new_account_contact"] is True
    assert shown_tables["new_account_opportunity"] is True
    sources = run_cli("--config", path, "dbt-sources", "--env", ENV)
    assert sources.returncode == 0, sources.stderr
    assert f'name: "{ENV}__new_account_opportunity"' in sources.stdout
    assert {"new_account_contact", "new_account_opportunity"} <= console_tables(listed)
    queued = run_cli("--config", path, "resync", "--env", ENV, "--table", "new_account_contact")
    assert queued.returncode == 0, queued.stderr
    refused = run_cli("--config", path, "resync", "--env", ENV, "--table", "new_contact_project")
    assert refused.returncode == 2 and "is not mirrored" in refused.stderr


def test_tables_command_names_the_key_scanned_nn(sim: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "dvmirror.toml").write_text(
        config_text(sim, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    )
    shown = run_cli("--config", tmp_path / "dvmirror.toml", "tables", "--env", ENV)
    assert shown.returncode == 0, shown.stderr
    assert (
        "  new_contact_project  (new_contact_project: contact.contactid ↔ "
        "new_project.new_projectid; key scan every reconcile_interval: no change tracking)"
    ) in shown.stdout.splitlines()
    assert 'N:N relationship table(s): 3, from relationships = "auto"' in shown.stdout
    # With "all", the intersect tables are left out of the tables and come as N:N.
    text = config_text(sim, tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    tables = ", ".join(f'"{t}"' for t in TABLES)
    (tmp_path / "dvmirror.toml").write_text(text.replace(f"tables = [{tables}]", 'tables = "all"'))
    shown = run_cli("--config", tmp_path / "dvmirror.toml", "tables", "--env", ENV)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"{ENV}: 4 table(s) mirrored" and "left out" not in shown.stdout
    assert 'N:N relationship table(s): 4, from relationships = "auto"' in lines


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('"some"', 'write relationships as "auto", "none" or a list of N:N SchemaNames'),
        ("[]", 'list at least one relationship SchemaName, or write "none"'),
        ('["bad name"]', "'bad name' is not a relationship SchemaName"),
        ('["new_a", "new_a"]', "relationship 'new_a' is listed twice"),
        ("7", 'write relationships as "auto", "none"'),
    ],
)
def test_a_bad_relationships_setting_is_one_line_and_exit_2(
    sim: dict[str, Any], tmp_path: Path, setting: str, message: str
) -> None:
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        config_text(sim, tmp_path, "sqlite+aiosqlite:///x.db", f"relationships = {setting}")
    )
    checked = run_cli("--config", path, "config", "check")
    assert checked.returncode == 2
    err = checked.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "relationships" in err and message in err


def test_the_daemon_keeps_nn_tables_equal_to_the_source_under_churn(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """`dvmirror run`: associations and disassociations reach the mirror, through the delta
    link of a change-tracked intersect table and the reconcile-interval key read of one
    without change tracking."""
    from tests.daemonproc import DaemonProcess, wait_until

    store_url = f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    extra = 'interval = "1s"\nreconcile_interval = "2s"'
    path = tmp_path / "dvmirror.toml"
    path.write_text(config_text(sim, tmp_path, store_url, extra))
    assert run_cli("--config", path, "migrate").returncode == 0
    database = database_of(store_url)
    daemon = DaemonProcess.start(path, tmp_path / "daemon.log")
    tracked, scanned = "new_account_contact", "new_contact_project"
    try:
        for table in (tracked, scanned):
            wait_until(lambda t=table: not compare.differences(sim, database, ENV, t), what=table)
        churn(sim, tracked, 31, deletes=2)
        churn(sim, tracked, 32, creates=3)
        churn(sim, scanned, 33, deletes=2)
        churn(sim, scanned, 34, creates=3)
        for table in (tracked, scanned):
            wait_until(lambda t=table: not compare.differences(sim, database, ENV, t), what=table)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    assert {r[0] for r in relationship_rows(store_url)} == set(AUTO)
