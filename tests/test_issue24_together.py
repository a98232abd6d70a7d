"""Every issue-24 feature at once, as a new user runs them from README alone: `tables` rules
(include, exclude, a solution), N:N tables from `relationships = "auto"`, history on two tables,
the metadata tables; through the real command line (`tables`, `backfill`, the daemon through
churn and a relabel, `status`, `dbt-sources`, `verify --exact`, `feed`) against the simulator
over real HTTPS, on SQLite and on PostgreSQL. README's example queries run with only the
schema/prefix changed, and their answers are checked against the simulator's rows."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from sync.store.metadata_tables import NAMES as METADATA_TABLES
from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, wait_until
from tests.mirror_compare import database_of, query
from tests.simfixtures import _no_ca_env, admin, admin_rows, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env")]
SCENARIO = Path(__file__).parent / "scenarios" / "together.toml"
SETTINGS = """interval = "2s"
tables = { include = ["account", "new_*"], exclude = ["new_inspection"], solutions = ["ContosoSales"] }
relationships = "auto"
[tenants.environments.table_options.account]
history = true
[tenants.environments.table_options.contact]
history = true
history_retention = "365d"
"""


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-together")) as ready:
        yield ready


def write_config(sim: dict[str, Any], directory: Path, env_name: str, store_url: str) -> Path:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    (tenant,) = sim["tenants"]
    env = next(e for e in tenant["environments"] if e["name"] == env_name)
    path = directory / "dvmirror.toml"
    path.write_text(
        f'{app}\n[store]\nurl = "{store_url}"\n'
        f'[daemon]\ndata_dir = "{directory}"\nmetrics_listen = "127.0.0.1:0"\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        f'[[tenants.environments]]\nname = "{env_name}"\nurl = "{env["url"]}"\n{SETTINGS}'
    )
    return path


class Store:
    """README's naming: `<env>__<table>` on SQLite, `<env>.<table>` on PostgreSQL."""

    def __init__(self, store_url: str, env: str) -> None:
        self.database = database_of(store_url)
        self.postgres = not isinstance(self.database, Path)
        self.env = env

    def readme(self, sql: str) -> list[tuple[Any, ...]]:
        """A README query written for `contoso_prod`, with only the schema/prefix changed."""
        prefix = f"{self.env}." if self.postgres else f"{self.env}__"
        for style in ("contoso_prod.", "contoso_prod__"):
            sql = sql.replace(style, prefix)
        rows = query(self.database, sql)  # PostgreSQL's uuid as the text SQLite holds
        return [tuple(str(v) if isinstance(v, UUID) else v for v in row) for row in rows]


GERMAN = """
SELECT a.accountid, a.industrycode, m.LocalizedLabel AS industry
FROM contoso_prod__account AS a
LEFT JOIN contoso_prod__OptionsetMetadata AS m
  ON m.EntityName = 'account'
 AND m.OptionSetName = 'industrycode'
 AND m.Option = a.industrycode
 AND m.LocalizedLabelLanguageCode = 1031;
"""
NN = """
SELECT a.name AS account, c.fullname AS contact
FROM contoso_prod.new_account_contact AS ac          -- intersect_table
JOIN contoso_prod.account AS a ON a.accountid = ac.accountid    -- entity1 / entity1_attribute
JOIN contoso_prod.contact AS c ON c.contactid = ac.contactid    -- entity2 / entity2_attribute
WHERE a._dv_deleted_at IS NULL AND c._dv_deleted_at IS NULL;
"""
POINT_IN_TIME = """
SELECT accountid, name, revenue
FROM contoso_prod.account__history
WHERE _dv_op = 'upsert'
  AND _dv_valid_from <= 'MOMENT'
  AND (_dv_valid_to IS NULL OR _dv_valid_to > 'MOMENT');
"""


def run_together(sim: dict[str, Any], directory: Path, env: str, store_url: str) -> None:
    config = write_config(sim, directory, env, store_url)
    store = Store(store_url, env)

    listed = run_cli("--config", config, "tables", "--env", env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[:5] == [
        f"{env}: 4 table(s) mirrored",
        "  account  (history: account__history)",
        "  contact  (history: contact__history, retention 365d)",
        "  new_project  (watermark: no change tracking)",
        "  opportunity",
    ]
    assert 'N:N relationship table(s): 2, from relationships = "auto"' in lines

    loaded = run_cli("--config", config, "backfill")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    # Before any churn: the moment the point-in-time read looks back to, and the rows then.
    before = {r["accountid"]: r["name"] for r in admin_rows(sim, env, "account")}
    time.sleep(1.1)  # the history's times have whole seconds on SQLite
    moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)

    daemon = DaemonProcess.start(config, directory / "daemon.log")
    try:
        for table in ("account", "contact", "new_account_contact"):
            body = {"creates": 3, "updates": 5, "deletes": 2, "seed": 5}
            admin(sim, "POST", f"/environments/{env}/tables/{table}/churn", body)
        relabel = {"column": "industrycode", "value": 1, "label": "Bookkeeping"}
        admin(sim, "POST", f"/environments/{env}/tables/account/relabel", relabel)
        accounts = {r["accountid"]: r for r in admin_rows(sim, env, "account")}
        links = admin_rows(sim, env, "new_account_contact")

        def caught_up() -> bool:
            mirrored = store.readme(
                "SELECT count(*), sum(CASE WHEN industrycode__label = 'Bookkeeping' THEN 1 "
                "ELSE 0 END) FROM contoso_prod__account"
            )[0]
            pairs = store.readme("SELECT count(*) FROM contoso_prod__new_account_contact")[0][0]
            ones = sum(1 for r in accounts.values() if r["industrycode"] == 1)
            return mirrored == (len(accounts), ones) and pairs == len(links)

        wait_until(caught_up, timeout=60, what="the churn and the relabel in the mirror")
        status = run_cli("--config", config, "status", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        assert daemon.stop() == 0, daemon.tail()

    # Labels in two languages: German from the metadata table, English = the row's __label.
    german = store.readme(GERMAN)
    assert {r[0] for r in german} == set(accounts)
    for accountid, code, label in german:
        assert code == accounts[accountid]["industrycode"]
        assert (label is None) == (code is None)
        if code == 1:
            assert label == "Bookkeeping (Deutsch)"
    english = store.readme(
        GERMAN.replace("1031", "1033").replace("a.industrycode, m", "a.industrycode__label, m")
    )
    assert all(row_label == label for _, row_label, label in english)
    assert sum(1 for _, _, label in english if label == "Bookkeeping") == sum(
        1 for r in accounts.values() if r["industrycode"] == 1
    )

    # The relabel reached the history's open versions too (a relabel is the same version with
    # another value), so the current versions say what the mirror says.
    current = store.readme(
        "SELECT industrycode__label, count(*) FROM contoso_prod__account__history "
        "WHERE _dv_valid_to IS NULL AND _dv_op = 'upsert' AND industrycode = 1 "
        "GROUP BY industrycode__label"
    )
    assert current == [("Bookkeeping", sum(1 for r in accounts.values() if r["industrycode"] == 1))]

    # The N:N join, against the simulator's associations.
    contacts = {r["contactid"]: r["fullname"] for r in admin_rows(sim, env, "contact")}
    expected = Counter(
        (accounts[link["accountid"]]["name"], contacts[link["contactid"]])
        for link in links
        if link["accountid"] in accounts and link["contactid"] in contacts
    )
    assert Counter(store.readme(NN)) == expected and expected

    # A point-in-time read of the history: the accounts as they were before the churn.
    then = store.readme(POINT_IN_TIME.replace("MOMENT", moment))
    assert {str(r[0]): r[1] for r in then} == before

    sources = run_cli("--config", config, "dbt-sources", "--env", env)
    assert sources.returncode == 0, sources.stderr
    (source,) = yaml.safe_load(sources.stdout)["sources"]
    names = {t["name"]: t for t in source["tables"]}
    wanted = {
        "account",
        "account__history",
        "contact__history",
        "new_account_contact",
        "relationshipmetadata",
        *METADATA_TABLES,
    }
    assert {t if store.postgres else f"{env}__{t}" for t in wanted} <= set(names)
    history = names["account__history" if store.postgres else f"{env}__account__history"]
    columns = {c["name"]: c for c in history["columns"]}
    assert {"accountid", "name", "_dv_valid_from", "_dv_valid_to", "_dv_op"} <= set(columns)
    assert columns["accountid"]["data_tests"] == ["not_null"]  # a row per version: not unique
    assert history["freshness"] is None

    verified = run_cli("--config", config, "verify", "--exact")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{env}/new_account_contact: match" in verified.stdout

    fed = run_cli("--config", config, "feed", "--env", env, "--since", "0", "--json")
    assert fed.returncode == 0, fed.stderr
    commits = json.loads(fed.stdout)["commits"]
    assert {"account", "contact", "new_account_contact"} <= {c["table"] for c in commits}


def test_every_issue24_feature_together_on_sqlite(sim: dict[str, Any], tmp_path: Path) -> None:
    run_together(sim, tmp_path, "tog_lite", f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")


@pytest.mark.postgres
def test_every_issue24_feature_together_on_postgres(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    run_together(sim, tmp_path, "tog_pg", pg_url)


def test_table_option_names_only_mirrored_tables(sim: dict[str, Any], tmp_path: Path) -> None:
    """`--table` takes an N:N table that `relationships` brings, even beside a fixed list, and
    refuses, before writing anything, a table the rules leave out (it used to get a mirror)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    config = write_config(sim, tmp_path, "tog_lite", url)
    excluded = run_cli("--config", config, "backfill", "--table", "new_inspection")
    assert excluded.returncode == 2, excluded.stdout + excluded.stderr
    assert excluded.stderr.splitlines() == [
        "dvmirror: error: table 'new_inspection' is not mirrored in environment tog_lite: "
        "excluded by 'new_inspection'; name a mirrored table (`dvmirror tables --env tog_lite` "
        "lists them, N:N tables included), or add it to the environment's tables"
    ]
    private = run_cli("--config", config, "verify", "--table", "new_person")
    assert private.returncode == 2 and "private table (IsPrivate)" in private.stderr
    assert not (tmp_path / "mirror.db").exists() or not query(
        tmp_path / "mirror.db",
        "SELECT name FROM sqlite_master WHERE name IN "
        "('tog_lite__new_inspection', 'tog_lite__new_person')",
    )

    fixed = config.read_text().replace(SETTINGS.splitlines()[1], 'tables = ["account", "contact"]')
    config.write_text(fixed)
    nn = run_cli(
        "--config", config, "backfill", "--env", "tog_lite", "--table", "new_account_contact"
    )
    assert nn.returncode == 0, nn.stdout + nn.stderr
    assert query(tmp_path / "mirror.db", "SELECT count(*) FROM tog_lite__new_account_contact")[0][0]
    other = run_cli("--config", config, "backfill", "--table", "new_contact_project")
    assert other.returncode == 2 and "not in its tables (account, contact)" in other.stderr

    # History asked for on a table the rules leave out: `tables` says nothing would be kept.
    config = write_config(sim, tmp_path, "tog_lite", url)
    config.write_text(
        config.read_text() + "[tenants.environments.table_options.new_inspection]\nhistory = true\n"
    )
    listed = run_cli("--config", config, "tables", "--env", "tog_lite")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == (
        "warning: table_options.new_inspection.history = true, but new_inspection is not "
        "mirrored (no history kept)"
    )
