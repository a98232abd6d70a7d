"""Shared fixtures. Helpers that start processes live in tests/cli.py and tests/simfixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `peers` (third-party clients installed on first use) run only with -m peers."""
    if "peers" in (config.getoption("markexpr") or ""):
        return
    opt_in = pytest.mark.skip(reason="third-party peer clients are opt-in: pytest -m peers")
    for item in items:
        if item.get_closest_marker("peers"):
            item.add_marker(opt_in)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts from structlog's defaults, whatever the previous one configured."""
    yield
    structlog.reset_defaults()
