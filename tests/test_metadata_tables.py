"""The Synapse-style metadata tables end to end: the simulator over real HTTPS and real MSAL,
`sync --once` into a real SQLite file and a real (throwaway) PostgreSQL database.

The SQLite run uses environment `meta_lite`, the PostgreSQL run `meta_pg` (one simulator for
both: each relabels only its own options)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sync.commands.sync_once import run_sync_once
from sync.config.loading import load_config
from sync.config.model import Config
from tests.cli import clean_env
from tests.daemonproc import DaemonProcess, EnvSpec, wait_until
from tests.daemonproc import write_config as daemon_config
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "metadata.toml"
TABLES = ("account", "new_project")

# A query as Synapse Link's documentation writes it (labels of a choice column in English),
# with table aliases; the only thing a port changes is the schema `dbo.`.
SYNAPSE_LABELS = """
SELECT a.accountid, a.industrycode, m.LocalizedLabel AS industrycode_label
FROM dbo.account AS a
LEFT JOIN dbo.OptionsetMetadata AS m
  ON m.EntityName = 'account'
 AND m.OptionSetName = 'industrycode'
 AND m.Option = a.industrycode
 AND m.LocalizedLabelLanguageCode = {language}
ORDER BY a.accountid
"""
HASHES = "SELECT metadata_table, entityname, refreshed_at FROM dv_metadata_hashes ORDER BY 1, 2"
SYNAPSE_STATUS = """
SELECT a.accountid, s.LocalizedLabel
FROM dbo.account AS a
JOIN dbo.StatusMetadata AS s
  ON s.EntityName = 'account' AND s.Status = a.statuscode AND s.IsUserLocalizedLabel = 1
ORDER BY a.accountid
"""


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-metadata")) as ready:
        yield ready


def env_for(store_url: str) -> str:
    return "meta_pg" if store_url.startswith("postgresql") else "meta_lite"


def schema_of(store_url: str) -> str:
    """What `dbo.` becomes: `<env>.` on PostgreSQL, the `<env>__` prefix on SQLite."""
    env = env_for(store_url)
    return f"{env}." if store_url.startswith("postgresql") else f"{env}__"


def ported(sql: str, store_url: str, **values: Any) -> str:
    return sql.format(**values).replace("dbo.", schema_of(store_url))


def write_config(sim: dict[str, Any], directory: Path, store_url: str) -> Config:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    lines = [app, f'[store]\nurl = "{store_url}"\n', f'[daemon]\ndata_dir = "{directory}"\n']
    wanted = env_for(store_url)
    for tenant in sim["tenants"]:
        lines.append(
            f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n'
        )
        for env in tenant["environments"]:
            if env["name"] == wanted:
                tables = ", ".join(f'"{t}"' for t in TABLES)
                lines.append(
                    f'[[tenants.environments]]\nname = "{env["name"]}"\nurl = "{env["url"]}"\n'
                    f"tables = [{tables}]\n"
                )
    path = directory / "dvmirror.toml"
    path.write_text("\n".join(lines))
    return load_config(path, environ=clean_env())


def sync_once(config: Config) -> tuple[int, str]:
    out = StringIO()
    code = asyncio.run(run_sync_once(config, console=Console(file=out, width=150)))
    return int(code), out.getvalue()


def rows(store_url: str, sql: str) -> list[tuple[Any, ...]]:
    return query(database_of(store_url), sql)


def table(store_url: str, name: str) -> str:
    """A mirror or metadata table's name, quoted for either store."""
    env = env_for(store_url)
    return f'"{env}"."{name}"' if store_url.startswith("postgresql") else f'"{env}__{name}"'


def test_synapse_label_query_runs_with_only_the_schema_changed(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """After one `sync --once`, every metadata table is filled for the mirrored tables, in
    every installed language, and Synapse-style queries run with only `dbo.` replaced."""
    config = write_config(sim, tmp_path, store_url)
    code, output = sync_once(config)
    assert code == 0, output

    english = rows(store_url, ported(SYNAPSE_LABELS, store_url, language=1033))
    mirror = rows(
        store_url,
        f"SELECT accountid, industrycode, industrycode__label FROM {table(store_url, 'account')} "
        "ORDER BY accountid",
    )
    assert len(english) == len(mirror) == 60
    # The metadata label (English, the application user's language) is the mirror's __label.
    assert [tuple(r) for r in english] == [tuple(r) for r in mirror]
    assert {r[2] for r in english if r[1] is not None} <= {
        "Accounting",
        "Agriculture",
        "Consulting",
        "Retail",
    }
    german = rows(store_url, ported(SYNAPSE_LABELS, store_url, language=1031))
    assert {r[2] for r in german if r[1] == 1} == {"Accounting (Deutsch)"}
    status = rows(store_url, ported(SYNAPSE_STATUS, store_url))
    mirror_status = rows(
        store_url,
        f"SELECT accountid, statuscode__label FROM {table(store_url, 'account')} ORDER BY 1",
    )
    assert len(status) == 60 and status == mirror_status

    options = rows(
        store_url,
        "SELECT optionsetname, option, localizedlabellanguagecode, localizedlabel, "
        f"isuserlocalizedlabel FROM {table(store_url, 'optionsetmetadata')} "
        "WHERE entityname = 'new_project' ORDER BY 1, 2, 3",
    )
    by_column: dict[str, set[int]] = {}
    for column, _option, language, _label, _user in options:
        by_column.setdefault(column, set()).add(language)
    # Yes/No, multi-select (local option sets) in three languages; new_category is global.
    assert by_column == {"new_isbillable": {1031, 1033, 1036}, "new_tags": {1031, 1033, 1036}}
    assert ("new_isbillable", 1, 1031, "Ja", 0) in options
    assert ("new_isbillable", 0, 1033, "No", 1) in options
    global_rows = rows(
        store_url,
        "SELECT optionsetname, globaloptionsetname, option, localizedlabel "
        f"FROM {table(store_url, 'globaloptionsetmetadata')} "
        "WHERE localizedlabellanguagecode = 1033 ORDER BY option",
    )
    assert global_rows == [
        ("new_category", "new_projectcategory", 100000000, "Internal"),
        ("new_category", "new_projectcategory", 100000001, "Customer"),
        ("new_category", "new_projectcategory", 100000002, "Research"),
    ]
    states = rows(
        store_url,
        f"SELECT entityname, state, localizedlabellanguagecode, localizedlabel FROM "
        f"{table(store_url, 'statemetadata')} WHERE localizedlabellanguagecode = 1036 ORDER BY 1, 2",
    )
    assert states == [
        ("account", 0, 1036, "Actif"),
        ("account", 1, 1036, "Inactif"),
        ("new_project", 0, 1036, "Actif"),
        ("new_project", 1, 1036, "Inactif"),
    ]
    statuses = rows(
        store_url,
        f"SELECT state, status FROM {table(store_url, 'statusmetadata')} "
        "WHERE entityname = 'account' AND localizedlabellanguagecode = 1033 ORDER BY status",
    )
    assert statuses and all(state in (0, 1) for state, _ in statuses)
    targets = rows(
        store_url,
        f"SELECT attributename, referencedentity, referencedattribute FROM "
        f"{table(store_url, 'targetmetadata')} WHERE entityname = 'account' ORDER BY 1, 2",
    )
    assert ("primarycontactid", "contact", "contactid") in targets
    assert ("parentaccountid", "account", "accountid") in targets
    attributes = {
        r[0]: r[1:]
        for r in rows(
            store_url,
            "SELECT attributename, attributetype, attributetypecode, displayname, precision, "
            f"maxlength FROM {table(store_url, 'attributemetadata')} "
            "WHERE entityname = 'account'",
        )
    }
    assert attributes["revenue"] == ("Money", 8, "Annual Revenue", 2, None)
    assert attributes["name"][:3] == ("String", 14, "Account Name")
    assert attributes["name"][4] is not None
    assert attributes["industrycode"][:2] == ("Picklist", 11)
    assert attributes["primarycontactid"][:2] == ("Lookup", 6)


def test_relabel_updates_labels_without_touching_rows(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """A relabelled option (no row's versionnumber moves) reaches the metadata tables and the
    mirror's `__label` columns, multi-select labels recomputed; an unchanged source rewrites
    nothing."""
    env = env_for(store_url)
    config = write_config(sim, tmp_path, store_url)
    assert sync_once(config)[0] == 0
    account, project = table(store_url, "account"), table(store_url, "new_project")
    versions_before = rows(store_url, f"SELECT accountid, _dv_version FROM {account} ORDER BY 1")
    refreshed = rows(store_url, HASHES)
    assert len(refreshed) == 12  # six metadata tables, two Dataverse tables

    path = f"/environments/{env}/tables"
    admin(
        sim,
        "POST",
        f"{path}/account/relabel",
        {"column": "industrycode", "value": 2, "label": "Farming"},
    )
    admin(
        sim,
        "POST",
        f"{path}/new_project/relabel",
        {"column": "new_tags", "value": 2, "label": "Construction"},
    )
    admin(
        sim,
        "POST",
        f"{path}/account/relabel",
        {"column": "statuscode", "value": 1, "label": "Open"},
    )
    code, output = sync_once(config)
    assert code == 0, output

    labels = rows(store_url, f"SELECT DISTINCT industrycode, industrycode__label FROM {account}")
    assert (2, "Farming") in labels and all(v != 2 or text == "Farming" for v, text in labels)
    assert all(
        v != 1 or text == "Open"
        for v, text in rows(store_url, f"SELECT statuscode, statuscode__label FROM {account}")
    )
    tags = rows(
        store_url, f"SELECT new_tags, new_tags__label FROM {project} WHERE new_tags IS NOT NULL"
    )
    names = {1: "Design", 2: "Construction", 3: "Test", 4: "Deploy", 5: "Support"}
    assert any(2 in _values(value) for value, _ in tags)
    for value, text in tags:
        assert text == "; ".join(names[v] for v in _values(value))
    assert (
        rows(store_url, f"SELECT accountid, _dv_version FROM {account} ORDER BY 1")
        == versions_before
    )
    english = rows(store_url, ported(SYNAPSE_LABELS, store_url, language=1033))
    assert all(r[2] == "Farming" for r in english if r[1] == 2)
    german = rows(store_url, ported(SYNAPSE_LABELS, store_url, language=1031))
    assert all(r[2] == "Farming (Deutsch)" for r in german if r[1] == 2)

    # Nothing changed at the source: no metadata table is rewritten.
    after_relabel = rows(store_url, HASHES)
    assert sync_once(config)[0] == 0
    assert rows(store_url, HASHES) == after_relabel
    changed = {
        (name, entity)
        for (name, entity, at), (*_, before) in zip(after_relabel, refreshed, strict=True)
        if at != before
    }
    assert changed == {
        ("optionsetmetadata", "account"),
        ("optionsetmetadata", "new_project"),
        ("statusmetadata", "account"),
    }


def _values(stored: Any) -> list[int]:
    """A multi-select value from SQLite (`1,3`) or PostgreSQL (an integer array)."""
    return list(stored) if isinstance(stored, list) else [int(v) for v in str(stored).split(",")]


def test_daemon_fills_the_metadata_tables_once_the_mirrors_exist(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """`dvmirror run` refreshes the metadata tables per environment, as soon as a table has its
    mirror; a SIGTERM still exits 0."""
    config = daemon_config(sim, tmp_path, {"meta_lite": EnvSpec(TABLES, interval="1s")})
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    database = tmp_path / "mirror.db"
    try:
        wait_until(
            lambda: (
                {
                    entity
                    for (entity,) in query(
                        database, "SELECT DISTINCT entityname FROM meta_lite__optionsetmetadata"
                    )
                }
                == set(TABLES)
                if daemon.named("metadata_tables_refreshed")
                else False
            ),
            timeout=60,
            what="metadata rows of both tables",
        )
        daemon.send(signal.SIGTERM)
        assert daemon.process.wait(60) == 0
    finally:
        daemon.kill()
    assert not daemon.named("metadata_tables_failed")


def test_malformed_option_set_keeps_the_rows_and_fails_the_run(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """Option values that are not integers: the tables still sync, the metadata rows stay as
    they were, and the run says `<env>/metadata: …` with exit code 1."""
    env = env_for(store_url)
    config = write_config(sim, tmp_path, store_url)
    assert sync_once(config)[0] == 0
    options = table(store_url, "optionsetmetadata")
    before = rows(store_url, f"SELECT * FROM {options} ORDER BY 1, 2, 3, 5")
    hostile = f"/environments/{env}/tables/account/hostile"
    admin(sim, "POST", hostile, {"kind": "bad_option_set"})
    try:
        code, output = sync_once(config)
    finally:
        admin(sim, "POST", hostile, {"kind": None})
    assert code == 1, output
    assert f"{env}/metadata: table account: an option's Value is not a 32-bit integer" in output
    assert rows(store_url, f"SELECT * FROM {options} ORDER BY 1, 2, 3, 5") == before
    [(error,)] = rows(
        store_url,
        f"SELECT last_error FROM dv_sync_state WHERE environment = '{env}' "
        "AND table_name = 'account'",
    )
    assert error is None  # the table itself synced
    assert sync_once(config)[0] == 0
