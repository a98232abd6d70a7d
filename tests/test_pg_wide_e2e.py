"""A table too wide for PostgreSQL's rows, mirrored through the real CLI from the simulator over
HTTPS: its widest columns live in `_dv_overflow`, the view `<env>.<table>__wide` shows every
column equal to the source, and columns added at the source join the overflow once the row is
full (store.dialects.pg_wide). SQLite has no row width limit; tests/test_data_edges.py mirrors a
wide table on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [
    pytest.mark.usefixtures("no_ca_env"),
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]
SCENARIO = Path(__file__).parent / "scenarios" / "wide.toml"
ENV, TABLE = "wide_env", "new_inspection"


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
        f'tables = ["{TABLE}"]\npage_size = 250\n'
    )
    return path


def cli(config: Path, *args: str) -> str:
    result = run_cli("--config", config, *args, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def columns_of(pg_url: str, relation: str) -> list[str]:
    rows = compare.query(
        pg_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
        "AND table_name = ? ORDER BY ordinal_position",
        ENV,
        relation,
    )
    return [r[0] for r in rows]


def test_a_table_too_wide_for_postgres_rows_is_mirrored_whole_through_its_view(
    sim: dict[str, Any], tmp_path: Path, pg_url: str
) -> None:
    config = write_config(sim, tmp_path, pg_url)
    cli(config, "backfill")
    source = compare.source_rows(sim, ENV, TABLE)
    physical = columns_of(pg_url, TABLE)
    view = columns_of(pg_url, f"{TABLE}__wide")
    assert "_dv_overflow" in physical and len(physical) <= 1600
    assert set(source[0]) <= set(view) and len(source[0]) > 1300
    assert len(set(source[0]) - set(physical)) > 100  # many columns really are in overflow
    assert not compare.differences(sim, pg_url, ENV, TABLE, limit=8)

    # Schema drift: columns added at the source. The row has room for a few bytes at most (only
    # as many columns as needed went to overflow), so most of them join the overflow.
    columns = f"/environments/{ENV}/tables/{TABLE}/columns"
    added = ["new_measured_at", "new_measured_cost", "new_measured_note", "new_measured_by"]
    for name, kind in zip(added, ("DateTime", "Money", "Memo", "Decimal"), strict=True):
        admin(sim, "POST", columns, {"name": name, "type": kind})
    body = {"creates": 10, "updates": 40, "deletes": 5, "seed": 4}
    admin(sim, "POST", f"/environments/{ENV}/tables/{TABLE}/churn", body)
    cli(config, "sync", "--once")
    assert not compare.differences(sim, pg_url, ENV, TABLE, limit=8)
    after = columns_of(pg_url, TABLE)
    assert after[: len(physical)] == physical  # nothing moved in or out
    assert len(set(added) - set(after)) >= 3  # keys of _dv_overflow
    assert set(added) <= set(columns_of(pg_url, f"{TABLE}__wide"))
    written = compare.query(
        pg_url,
        f'SELECT count(*) FROM "{ENV}"."{TABLE}__wide" WHERE new_measured_cost IS NOT NULL',
    )
    assert written[0][0] > 0  # the churned rows carry the new columns' values
    status = cli(config, "status", "--json")
    assert '"parked": true' not in status
    # dbt reads the table through the view, where every catalogued column exists.
    sources = cli(config, "dbt-sources", "--env", ENV)
    assert f'identifier: "{TABLE}__wide"' in sources
    assert '"new_measured_cost"' in sources
