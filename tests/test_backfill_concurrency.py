"""`dvmirror backfill` runs an environment's tables at the same time (`table_concurrency`,
default all of them), and one after another when told to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("sim-tables")) as ready:
        yield ready


def backfill(sim: dict[str, Any], directory: Path, extra: str) -> list[tuple[str, str, str]]:
    """Backfill contoso_prod with small pages; return (table, started, finished) per run."""
    config = Path(sim["config_file"]).read_text()
    config = config.replace('name = "contoso_prod"', f'name = "contoso_prod"\n{extra}', 1)
    config = config.replace(str(Path(sim["state_dir"]) / "dvmirror"), str(directory))
    path = directory / "dvmirror.toml"
    path.write_text(config)
    result = run_cli("--config", path, "backfill", "--env", "contoso_prod", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for table in ("account", "contact"):
        compare.assert_converged(sim, directory / "mirror.db", "contoso_prod", table)
    with sqlite3.connect(directory / "mirror.db") as conn:
        return conn.execute(
            "SELECT table_name, started_at, finished_at FROM dv_run_history "
            "WHERE environment = 'contoso_prod' ORDER BY started_at"
        ).fetchall()


def test_tables_of_one_environment_overlap_in_time(sim: dict[str, Any], tmp_path: Path) -> None:
    """By default both tables are in flight together: each starts before the other finishes."""
    runs = backfill(sim, tmp_path, "page_size = 10")
    assert {r[0] for r in runs} == {"account", "contact"}
    (_, first_start, first_end), (_, second_start, second_end) = runs
    assert second_start < first_end and first_start < second_end


def test_table_concurrency_one_runs_them_one_after_another(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """With table_concurrency = 1 the second table starts only after the first has finished."""
    runs = backfill(sim, tmp_path, "page_size = 10\ntable_concurrency = 1")
    (_, _, first_end), (_, second_start, _) = runs
    assert second_start >= first_end
