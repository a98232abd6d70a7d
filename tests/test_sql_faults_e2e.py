"""SQL timeouts and query throttling, as a real org sends them, are transient for the mirror:
a backfill under both faults retries them and ends with every table equal to its source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("sim-sql-faults")) as ready:
        yield ready


def test_backfill_rides_out_sql_timeouts_and_query_throttling(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """With 8 % SQL timeouts (500 0x80044151) and 8 % query throttling (400 0x80048544) on
    every request, `dvmirror backfill` exits 0 and the mirror equals the source.

    The rates are such that both faults are met (about 80 requests, 10-row pages), yet a
    request failing all five of its attempts stays unlikely (0.16^5 per request, under 0.1 %
    for the run): at 15 % each it was 0.3^5, and one run in ten or so failed for a metadata
    request that lost all five draws, which is the retry policy working, not a defect."""
    admin(sim, "POST", "/faults", {"environment": "contoso_prod", "sql_timeout": 0.08})
    admin(sim, "POST", "/faults", {"environment": "contoso_prod", "query_throttling": 0.08})
    config = Path(sim["config_file"]).read_text()
    config = config.replace('name = "contoso_prod"', 'name = "contoso_prod"\npage_size = 10', 1)
    config = config.replace(str(Path(sim["state_dir"]) / "dvmirror"), str(tmp_path))
    path = tmp_path / "dvmirror.toml"
    path.write_text(config)
    result = run_cli("--config", path, "backfill", "--env", "contoso_prod", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stats = admin(sim, "GET", "/stats")
    injected = next(
        e["faults"] for e in stats["environments"] if e["environment"] == "contoso_prod"
    )
    assert injected["sql_timeout"] > 0 and injected["query_throttling"] > 0, injected
    for table in ("account", "contact"):
        compare.assert_converged(sim, tmp_path / "mirror.db", "contoso_prod", table)
