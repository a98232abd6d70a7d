"""Data edge cases from real orgs, each mirrored exactly (issue 13, item 4), through the real CLI
against the simulator over HTTPS, on both stores.

- `new_person` (entity set `new_people`, not the logical name plus "s") carries 4,000-character
  memos with emoji, NUL, right-to-left and JSON-looking text, Money at Dataverse's limits with
  four decimals, Decimal(…, 10) and BigInt values past a float's precision, and the first and
  last dates Dataverse stores (sync/simulator/edgevalues.py).
- `new_inspection` has 400 columns (its `$select` is over 13 KB).
- A column renamed the only way Dataverse allows, deleting it and creating another, and a column
  deleted and created again under the same name (a new MetadataId, every value gone).
- A delta page holding a row's tombstone and the same id created again (a restore from the
  recycle bin): upserts come first, tombstones after, so a client applying the page in order
  would lose the row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.simulator.edgevalues import (
    BIGINT_EDGES,
    DATE_EDGES,
    DATETIME_EDGES,
    DECIMAL_EDGES,
    MEMO_EDGES,
    MONEY_EDGES,
    TEXT_EDGES,
)
from sync.simulator.valueformat import iso_date, iso_datetime
from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(600)]
SCENARIO = Path(__file__).parent / "scenarios" / "edge_data.toml"
ENV = "edge_env"
TABLES = ("new_person", "new_inspection")


@pytest.fixture(name="sim")
def _sim(tmp_path: Path) -> Iterator[dict[str, Any]]:
    # One simulator per test: the tests delete columns, which the next test must not inherit.
    with running_simulator(SCENARIO, tmp_path / "sim") as ready:
        yield ready


def write_config(
    sim: dict[str, Any],
    directory: Path,
    store_url: str,
    env_name: str = ENV,
    tables_of: tuple[str, ...] = TABLES,
) -> Path:
    generated = Path(sim["config_file"]).read_text()
    app = generated[generated.index("[app]") : generated.index("[store]")]
    tenant = sim["tenants"][0]
    env = next(e for e in tenant["environments"] if e["name"] == env_name)
    tables = ", ".join(f'"{t}"' for t in tables_of)
    text = (
        f'{app}\n[store]\nurl = "{store_url}"\n\n[daemon]\ndata_dir = "{directory}"\n\n'
        f'[[tenants]]\nname = "{tenant["name"]}"\ntenant_id = "{tenant["tenant_id"]}"\n\n'
        f'[[tenants.environments]]\nname = "{env["name"]}"\nurl = "{env["url"]}"\n'
        f"tables = [{tables}]\npage_size = 250\n"
    )
    path = directory / "dvmirror.toml"
    path.write_text(text)
    return path


def cli(config: Path, *args: str) -> str:
    result = run_cli("--config", config, *args, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def converged(sim: dict[str, Any], store_url: str) -> None:
    for table in TABLES:
        problems = compare.differences(sim, database_of(store_url), ENV, table, limit=8)
        assert not problems, problems


def mirror_columns(store_url: str, table: str, env: str = ENV) -> list[str]:
    database = database_of(store_url)
    if isinstance(database, Path):
        with sqlite3.connect(database) as conn:
            return [r[1] for r in conn.execute(f'PRAGMA table_info("{env}__{table}")')]
    rows = query(
        database,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
        "AND table_name = ? ORDER BY ordinal_position",
        env,
        table,
    )
    return [r[0] for r in rows]


def source(sim: dict[str, Any], table: str) -> list[dict[str, Any]]:
    return compare.source_rows(sim, ENV, table)


def test_edge_values_and_400_columns_mirror_exactly(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = write_config(sim, tmp_path, store_url)
    cli(config, "backfill")
    converged(sim, store_url)

    # The source really holds every edge value, so equality above proves each one exact.
    people = source(sim, "new_person")
    seen = {
        column: {row[column] for row in people}
        for column in (
            "new_biography",
            "new_nickname",
            "new_salary",
            "new_score",
            "new_followers",
            "new_lastseenat",
            "new_birthday",
        )
    }
    assert set(MEMO_EDGES) <= seen["new_biography"]
    assert set(TEXT_EDGES) <= seen["new_nickname"]
    assert set(MONEY_EDGES) <= seen["new_salary"]  # Decimal equality: exact, any scale
    assert set(DECIMAL_EDGES) <= seen["new_score"]
    assert set(BIGINT_EDGES) <= seen["new_followers"]
    assert {iso_datetime(t) for t in DATETIME_EDGES} <= seen["new_lastseenat"]
    assert {iso_date(t) for t in DATE_EDGES} <= seen["new_birthday"]
    assert max(len(v) for v in seen["new_biography"] if v) == 4_000

    # Named by the logical name, not the entity set name.
    assert "new_personid" in mirror_columns(store_url, "new_person")
    wide = mirror_columns(store_url, "new_inspection")
    assert len([c for c in wide if not c.startswith("_dv_")]) >= 400, len(wide)

    # Churn, then a delta: the same values keep coming through exactly.
    for table, seed in (("new_person", 1), ("new_inspection", 2)):
        body = {"creates": 40, "updates": 60, "deletes": 15, "seed": seed}
        admin(sim, "POST", f"/environments/{ENV}/tables/{table}/churn", body)
    cli(config, "sync", "--once")
    converged(sim, store_url)


def test_delete_and_recreate_in_one_delta_page_keeps_the_row(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = write_config(sim, tmp_path, store_url)
    cli(config, "backfill")
    table = f"/environments/{ENV}/tables/new_person"
    admin(sim, "POST", f"{table}/churn", {"deletes": 8, "updates": 5, "seed": 3})
    restored = admin(sim, "POST", f"{table}/restore", {"count": 3})["restored"]
    assert len(restored) == 3
    cli(config, "sync", "--once")
    converged(sim, store_url)
    mirrored = compare.mirror_rows(database_of(store_url), ENV, "new_person")
    assert mirrored is not None
    for key in restored:
        assert key in mirrored and mirrored[key]["_dv_deleted_at"] is None, key


def test_a_column_renamed_by_recreating_it_and_one_recreated_under_its_name(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """Renamed: `new_nickname` deleted, `new_alias` created. Recreated: `new_rank` deleted and
    created again with the same name and type; at the source every old value is gone, so the
    mirror must not keep showing them as current (they are kept aside in an archive column)."""
    config = write_config(sim, tmp_path, store_url)
    cli(config, "backfill")
    database = database_of(store_url)
    before = compare.mirror_rows(database, ENV, "new_person")
    assert before is not None
    ranks = {k: r["new_rank"] for k, r in before.items() if r["new_rank"] is not None}
    assert ranks

    columns = f"/environments/{ENV}/tables/new_person/columns"
    admin(sim, "DELETE", f"{columns}/new_nickname")
    admin(sim, "POST", columns, {"name": "new_alias", "type": "String"})
    admin(sim, "DELETE", f"{columns}/new_rank")
    admin(sim, "POST", columns, {"name": "new_rank", "type": "Integer"})
    body = {"creates": 10, "updates": 20, "deletes": 4, "seed": 5}
    admin(sim, "POST", f"/environments/{ENV}/tables/new_person/churn", body)

    cli(config, "sync", "--once")
    converged(sim, store_url)  # new_rank: null where the source has null, new values elsewhere
    after = compare.mirror_rows(database, ENV, "new_person")
    assert after is not None
    names = set(mirror_columns(store_url, "new_person"))
    assert {"new_alias", "new_rank", "new_nickname"} <= names
    archive = sorted(n for n in names if n.startswith("new_rank__old_"))
    assert len(archive) == 1, names
    kept = {k: after[k][archive[0]] for k in ranks if k in after}
    assert kept and all(str(kept[k]) == str(ranks[k]) for k in kept)
    status = cli(config, "status", "--json")
    assert "new_rank" in status


def test_a_table_too_wide_to_name_in_a_select_is_read_without_one(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """1,100 columns whose names fill 42 KB: naming them in `$select` would pass the Web API's
    32 KB GET limit (the simulator answers 414 there), so dvmirror reads every column instead.
    SQLite holds such a row; PostgreSQL cannot (a row's fixed-width values must fit in 8 KB), so
    there the widest columns live in `_dv_overflow` and the view `new_inspection__wide` shows
    every column (tests/mirror_compare.py reads the view)."""
    config = write_config(sim, tmp_path, store_url, "wide_env", ("new_inspection",))
    database = database_of(store_url)
    cli(config, "backfill")
    assert not compare.differences(sim, database, "wide_env", "new_inspection", limit=8)
    wide = isinstance(database, str)
    columns = mirror_columns(
        store_url, "new_inspection__wide" if wide else "new_inspection", "wide_env"
    )
    assert len([c for c in columns if not c.startswith("_dv_")]) >= 1_100
    body = {"creates": 20, "updates": 30, "deletes": 10, "seed": 9}
    admin(sim, "POST", "/environments/wide_env/tables/new_inspection/churn", body)
    cli(config, "sync", "--once")
    assert not compare.differences(sim, database, "wide_env", "new_inspection", limit=8)
    stats = admin(sim, "GET", "/stats")["environments"]
    wide = next(e for e in stats if e["environment"] == "wide_env")
    assert "414_url_too_long" not in wide["rejections"], wide["rejections"]
