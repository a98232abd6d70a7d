"""Values from real orgs that break careless clients, and the columns that carry them.

`new_person` (templates.py) draws its text, money, decimal, integer and date columns from these
lists: long memos with emoji, NUL, right-to-left text, JSON-looking text, Money at Dataverse's
limits with four decimals (past float precision), BigInt and Integer extremes, and the first
and last dates Dataverse stores. `wide_attributes()` builds the hundreds of custom columns of a
form-like table (`new_inspection`), whose `$select` alone is several kilobytes long.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sync.simulator.attributes import AttributeDef, boolean, choice, date, memo, number, string

MEMO_LENGTH = 4_000
_EMOJI_TEXT = "Inspección ✓ 👩🏽‍💻 naïve café 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🇳🇴 Zürich ∑ 日本語 "


def _exactly(text: str, length: int) -> str:
    return (text * (length // len(text) + 1))[:length]


#: Multi-line text as users paste it (each at most MEMO_LENGTH characters).
MEMO_EDGES: tuple[str, ...] = (
    _exactly(_EMOJI_TEXT, MEMO_LENGTH),  # exactly 4,000 code points, astral planes included
    "before\x00after, NUL inside",
    "مرحبا بالعالم — שלום עולם — \u202eevil.exe\u202c (RTL override)",
    '{"revenue":12.5,"new_salary":1,"@odata.etag":"W/\\"1\\""} text that looks like JSON',
    'C:\\Users\\ana\\"quoted"\\ and a trailing backslash \\',
    "line one\r\nline two\u2028line three\u2029end\ttab",
    "e\u0301 (combining), zero\u200bwidth, \ufeffBOM inside",
    "   ",
    "🙂" * 1000,  # 1,000 astral characters: 4,000 bytes of UTF-8, 2,000 UTF-16 units
)

#: Single-line text (String columns hold at most 100 characters here).
TEXT_EDGES: tuple[str, ...] = (
    "Renée Ødegård-Łukasiewicz",
    "محمد بن سلمان",
    "שלום\u200f",
    "null",
    "NUL\x00",
    "🦄🚀✨",
    "O'Brien; DROP TABLE new_person;--",
    '"quoted"',
)

#: Money: Dataverse's range is ±922,337,203,685,477 with up to four decimals; most of these
#: have more significant digits than a float keeps.
MONEY_EDGES: tuple[Decimal, ...] = tuple(
    Decimal(text)
    for text in (
        "922337203685477.0000",
        "-922337203685477.0000",
        "922337203685476.9999",
        "100000000000000.0001",
        "0.0001",
        "-0.0001",
        "0.0000",
        "1234.5678",
    )
)
#: Decimal(…, 10): ±100,000,000,000 with ten decimals (21 significant digits).
DECIMAL_EDGES: tuple[Decimal, ...] = tuple(
    Decimal(text)
    for text in ("99999999999.9999999999", "-99999999999.9999999999", "0.0000000001", "0E-10")
)
BIGINT_EDGES: tuple[int, ...] = (9_223_372_036_854_775_807, -9_223_372_036_854_775_808, 0)
INTEGER_EDGES: tuple[int, ...] = (2_147_483_647, -2_147_483_648, 0)
#: DateTime: SQL Server's datetime range, which Dataverse keeps (1753-01-01 … 9999-12-31).
DATETIME_EDGES: tuple[int, ...] = (
    int(datetime(1753, 1, 1, tzinfo=UTC).timestamp()),
    int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()),
    int(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp()),
)
DATE_EDGES: tuple[int, ...] = (
    int(datetime(1753, 1, 1, tzinfo=UTC).timestamp()),
    int(datetime(9999, 12, 31, tzinfo=UTC).timestamp()),
    int(datetime(2000, 2, 29, tzinfo=UTC).timestamp()),
)


def with_edges(attr: AttributeDef, edges: tuple[Any, ...], **changes: Any) -> AttributeDef:
    """`attr` drawing half of its values from `edges`."""
    return replace(attr, edges=edges, **changes)


#: The column shapes of a wide table, repeated in this order.
_WIDE_KINDS = (
    "String",
    "Integer",
    "Decimal",
    "Boolean",
    "DateTime",
    "Money",
    "Picklist",
    "Double",
    "Memo",
    "BigInt",
)
_RESULTS = {100000000: "Pass", 100000001: "Fail", 100000002: "Not applicable"}


def wide_attributes(count: int, prefix: str = "new_") -> list[AttributeDef]:
    """`count` custom row columns (plus the companions Dataverse generates for booleans and
    choices) with long, realistic names: ``new_inspectionitem042_measuredvalue``."""
    attrs: list[AttributeDef] = []
    for i in range(count):
        kind = _WIDE_KINDS[i % len(_WIDE_KINDS)]
        name = f"{prefix}inspectionitem{i:03d}_{kind.lower()}value"
        display = f"Item {i} ({kind})"
        if kind == "String":
            attrs.append(string(name, display, null_ratio=0.2))
        elif kind == "Memo":
            attrs.append(memo(name, display))
        elif kind == "Boolean":
            attrs.extend(boolean(name, display))
        elif kind == "Picklist":
            attrs.extend(choice(name, display, _RESULTS))
        elif kind == "DateTime":
            attrs.append(date(name, display, null_ratio=0.3))
        elif kind == "Money":
            attrs.append(number(name, kind, display, 0, 1_000_000, null_ratio=0.3))
        else:
            attrs.append(number(name, kind, display, -1000, 1000, null_ratio=0.3))
    return attrs
