"""The demo's column-by-column comparison: which mirrored values equal their source values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from sync.commands.demo_compare import same


@pytest.mark.parametrize(
    ("mirrored", "source", "expected"),
    [
        ("20000.0000", Decimal("20000.0000"), True),  # Money kept as exact decimal text
        ("20000.0001", Decimal("20000.0000"), False),
        ("123456789012345678.12", Decimal("123456789012345678.12"), True),
        (-33.12345, Decimal("-33.12345"), True),  # a Double as SQLite stores it
        (-33.12346, Decimal("-33.12345"), False),
        (1, True, True),  # booleans as 0/1
        (0, True, False),
        (7, 7, True),
        ("2024-05-01T07:00:00Z", "2024-05-01T07:00:00Z", True),
        ("2024-05-01", "2024-05-01T07:00:00Z", False),  # a date is not the timestamp sent
        (None, None, True),
        (None, "x", False),
        ("", None, False),
        ("not a number", Decimal(1), False),
    ],
)
def test_same(mirrored: Any, source: Any, expected: bool) -> None:
    """Exact decimals, 0/1 booleans and texts as sent; null only equals null."""
    assert same(mirrored, source) is expected
