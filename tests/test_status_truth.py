"""What `dvmirror status` shows is what happened: 429s per table come from the requests the
table really made, and "parked until" is when the scheduler will really try again."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "protection.toml"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-status")) as ready:
        yield ready


def _config(sim: dict[str, Any], directory: Path) -> Path:
    config = Path(sim["config_file"]).read_text()
    # Only the table's own requests: N:N discovery and the metadata tables' refresh are the
    # environment's, and this test matches them with every request the simulator served.
    config = config.replace(
        'name = "count_env"',
        'name = "count_env"\npage_size = 2\nrelationships = "none"\nmetadata_tables = false',
        1,
    )
    config = config.replace(str(Path(sim["state_dir"]) / "dvmirror"), str(directory))
    path = directory / "dvmirror.toml"
    path.write_text(config)
    return path


def test_status_counts_what_the_table_really_requested(sim: dict[str, Any], tmp_path: Path) -> None:
    """A backfill under a 3-requests-per-2-s limit records the requests and 429s of its table
    in the run history (what "429s (24h)" sums); they agree with what the simulator served."""
    path = _config(sim, tmp_path)
    try:
        before = user_stats(sim, "count_env")
    except KeyError:  # no request yet
        before = {"requests": 0, "throttled_total": 0}
    backfill = run_cli("--config", path, "backfill", "--env", "count_env", timeout=300)
    assert backfill.returncode == 0, backfill.stderr[-2000:]
    after = user_stats(sim, "count_env")
    status = run_cli("--config", path, "status", "--json")
    assert status.returncode == 0, status.stderr
    env = next(e for e in json.loads(status.stdout)["environments"] if e["name"] == "count_env")
    table = next(t for t in env["tables"] if t["table"] == "account")
    assert table["parked_until"] is None  # a one-off command schedules no retry
    with sqlite3.connect(tmp_path / "mirror.db") as conn:
        requests, throttled, pages = conn.execute(
            "SELECT sum(requests), sum(throttled), sum(pages) FROM dv_run_history "
            "WHERE environment = 'count_env' AND table_name = 'account'"
        ).fetchone()
    served = after["requests"] - before["requests"]
    assert pages >= 10  # 20 rows in pages of 2
    assert pages <= requests == served  # metadata, the count, pages, retries: all the table's
    assert throttled == table["throttled_recent"]
    assert throttled == after["throttled_total"] - before["throttled_total"]
