"""Interval text both ways (sync.config.values): plain values."""

from __future__ import annotations

import pytest

from sync.config.values import format_interval, parse_interval


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "1d"), (5400, "1h30m"), (300, "5m"), (45, "45s"), (90061, "1d1h1m1s"), (0.5, "0.5s")],
)
def test_an_interval_is_written_as_the_configuration_writes_it(seconds: float, text: str) -> None:
    assert format_interval(seconds) == text
    assert parse_interval(text) == seconds
