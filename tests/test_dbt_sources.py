"""`dvmirror dbt-sources`: after a backfill against the simulator, the printed sources.yml loads
with a YAML parser and names every mirrored column of every table (SQLite and PostgreSQL
naming), with the Dataverse display names and descriptions as descriptions, key tests and freshness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sync.store.metadata_tables import NAMES as METADATA_TABLES
from tests.cli import clean_env, run_cli
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env  # noqa: F401
from tests.test_mirror_e2e import _sim, backfill, write_config  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
TABLES = ("account", "new_project")


def mirror_columns(store_url: str, env: str, table: str) -> set[str]:
    database = database_of(store_url)
    if isinstance(database, Path):
        rows = query(database, f'SELECT name FROM pragma_table_info("{env}__{table}")')
    else:
        rows = query(
            database,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
            env,
            table,
        )
    return {r[0] for r in rows}


def test_sources_yml_names_every_mirrored_column(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = write_config(sim, tmp_path, ("soft_env",), store_url)
    assert backfill(config)[0] == 0
    result = run_cli(
        "--config", config.path, "dbt-sources", "--env", "soft_env", env=clean_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["version"] == 2
    (source,) = document["sources"]
    postgres = store_url.startswith("postgresql")
    assert source["name"] == "soft_env"
    assert source["schema"] == ("soft_env" if postgres else "main")
    assert source["loaded_at_field"] == "_dv_synced_at"
    assert source["freshness"]["warn_after"]["count"] == 10  # 2 × the 5 min interval
    assert source["freshness"]["error_after"] == {"count": 30, "period": "minute"}
    tables = {t["name"]: t for t in source["tables"]}
    expected_names = {t if postgres else f"soft_env__{t}" for t in TABLES}
    # ... and the metadata tables, without freshness (they have no _dv_synced_at).
    metadata = {t if postgres else f"soft_env__{t}" for t in METADATA_TABLES}
    assert set(tables) == expected_names | metadata
    assert all(tables[m]["freshness"] is None for m in metadata)
    for table in TABLES:
        entry = tables[table if postgres else f"soft_env__{table}"]
        columns = {c["name"]: c for c in entry["columns"]}
        assert set(columns) == mirror_columns(store_url, "soft_env", table)
        key = f"{table}id"
        assert columns[key]["data_tests"] == ["not_null", "unique"]
        assert sum(1 for c in columns.values() if "data_tests" in c) == 1
        described = [c for c in columns.values() if c["description"]]
        assert len(described) == len(columns)  # every column has its display name
    account = tables["account" if postgres else "soft_env__account"]
    names = {c["name"]: c["description"] for c in account["columns"]}
    # Display name, then Dataverse's own Description where the column has one.
    assert names["name"] == "Account Name — Account Name of the account."

    unknown = run_cli(
        "--config", config.path, "dbt-sources", "--env", "nope", env=clean_env(), cwd=tmp_path
    )
    assert unknown.returncode == 2 and "no environment named 'nope'" in unknown.stderr


def test_yaml_emitter_round_trips_awkward_text() -> None:
    """Display names are the source's text: quotes, colons, '#', newlines, non-ASCII and YAML
    words come back exactly."""
    from sync.commands.dbt_sources import to_yaml

    awkward = ["a: b # c", 'say "hi"', "line\nbreak", "Größe – ü", "yes", "null", "- x", "", "0x10"]
    document = {
        "version": 2,
        "sources": [
            {
                "name": "e",
                "tables": [
                    {
                        "name": "t",
                        "columns": [
                            {"name": f"c{i}", "description": text} for i, text in enumerate(awkward)
                        ],
                    }
                ],
                "freshness": {"warn_after": {"count": 1, "period": "minute"}},
                "empty": [],
            }
        ],
    }
    assert yaml.safe_load(to_yaml(document)) == document


def test_freshness_keeps_the_error_after_the_warning_for_short_intervals() -> None:
    """2 and 6 sync intervals in whole minutes; under half a minute both round up to one, so
    the error threshold is kept a minute later (else fresh → error with no warning)."""
    from sync.commands.dbt_sources import freshness

    def counts(seconds: float) -> tuple[int, int]:
        found = freshness(seconds)
        assert found["warn_after"]["period"] == found["error_after"]["period"] == "minute"
        return found["warn_after"]["count"], found["error_after"]["count"]

    assert counts(300) == (10, 30)
    assert counts(60) == (2, 6)
    assert counts(20) == (1, 2)  # 40 s and 120 s
    assert counts(10) == (1, 2)  # 20 s and 60 s: would be 1 and 1
    assert counts(1) == (1, 2)
