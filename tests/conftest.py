"""Shared fixtures. Helpers that start processes live in tests/cli.py and tests/simfixtures.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import structlog

from tests.pg import PgCluster


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Opt-in groups run only when asked for by marker: `peers` (third-party clients installed
    on first use, -m peers) and `long` (the reliability matrix's long modes, -m long)."""
    chosen = config.getoption("markexpr") or ""
    for marker, why in (
        ("peers", "third-party peer clients are opt-in: pytest -m peers"),
        ("long", "long reliability modes are opt-in: pytest -m long"),
    ):
        if marker in chosen:
            continue
        opt_in = pytest.mark.skip(reason=why)
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(opt_in)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts from structlog's defaults, whatever the previous one configured."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster, started on first use and removed at the session's end."""
    if os.environ.get("DVMIRROR_SKIP_PG") == "1":
        pytest.skip("DVMIRROR_SKIP_PG=1: the PostgreSQL tests are skipped")
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test (its SQLAlchemy URL), dropped afterwards."""
    url = pg_cluster.new_database(request.node.name)
    yield url
    with contextlib.suppress(Exception):
        pg_cluster.drop_database(url)
