"""Shared fixtures. Helpers that start processes live in tests/cli.py and tests/simfixtures.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts from structlog's defaults, whatever the previous one configured."""
    yield
    structlog.reset_defaults()
