"""How the Web API writes one column's value: its JSON form and its FormattedValue label.

Both are compiled once per attribute into small functions that render.py calls per row.
Dates are written from a cached text per day plus arithmetic on the time of day, which is
what ``datetime.fromtimestamp(instant, UTC).strftime(...)`` gives for the years rows use.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson

from sync.simulator.attributes import AttributeDef
from sync.simulator.templates import CURRENCY_NAME, OWNERS, TEMPLATES
from sync.simulator.values import DAY, identity, key_for

MONEY_SCALE = 4  # Dataverse stores money as decimal(…, 4) and renders it that way
_EPOCH = date(1970, 1, 1)

Convert = Callable[[Any], Any]
Label = Callable[[Any], "str | None"]
LookupLabel = Callable[[str, "str | None"], "str | None"]


@lru_cache(maxsize=16_384)  # a few thousand distinct days cover every seeded and churned date
def _day_texts(days: int) -> tuple[str, str]:
    """(``YYYY-MM-DD``, ``M/D/YYYY``) of a day counted from the Unix epoch."""
    day = _EPOCH + timedelta(days=days)
    return day.isoformat(), f"{day.month}/{day.day}/{day.year}"


def iso_datetime(instant: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` as the Web API renders DateTime values."""
    days, seconds = divmod(instant, DAY)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{_day_texts(days)[0]}T{hours:02d}:{minutes:02d}:{secs:02d}Z"


def iso_date(instant: int) -> str:
    """``YYYY-MM-DD`` for date-only columns (Edm.Date)."""
    return _day_texts(instant // DAY)[0]


def us_date(instant: int) -> str:
    """``M/D/YYYY``: the FormattedValue of a date-only value."""
    return _day_texts(instant // DAY)[1]


def us_datetime(instant: int) -> str:
    """``M/D/YYYY H:MM AM``: the FormattedValue of a date/time value (UTC, en-US)."""
    days, seconds = divmod(instant, DAY)
    hours, rest = divmod(seconds, 3600)
    half = "AM" if hours < 12 else "PM"
    return f"{_day_texts(days)[1]} {hours % 12 or 12}:{rest // 60:02d} {half}"


def json_converter(attr: AttributeDef) -> Convert | None:
    """How a non-null value becomes JSON, or None when it already is its JSON form.

    Decimals keep their scale through ``orjson.Fragment`` (money always has four places).
    """
    kind = attr.attribute_type
    if kind == "DateTime":
        return iso_date if attr.date_only else iso_datetime
    if kind not in ("Decimal", "Money"):
        return None
    spec = f".{MONEY_SCALE if kind == 'Money' else (attr.precision or 2)}f"
    return lambda value: (
        orjson.Fragment(format(value, spec).encode()) if isinstance(value, Decimal) else value
    )


def dump_converter(attr: AttributeDef) -> Convert | None:
    """Like `json_converter`, but decimals become floats (for ``dump_rows`` in Python)."""
    kind = attr.attribute_type
    if kind == "DateTime":
        return iso_date if attr.date_only else iso_datetime
    if kind not in ("Decimal", "Money"):
        return None
    return lambda value: float(value) if isinstance(value, Decimal) else value


def value_label(attr: AttributeDef) -> Label | None:
    """The ``OData.Community.Display.V1.FormattedValue`` of a non-null value of a column that
    is not a lookup, or None when its values have no formatted value."""
    kind = attr.attribute_type
    if attr.is_multiselect:
        names = {str(o.value): o.label for o in attr.options}
        return lambda value: "; ".join(names.get(p, p) for p in str(value).split(","))
    if kind in ("Picklist", "State", "Status", "Boolean"):
        labels: dict[int, str] = {}
        for option in attr.options:
            labels.setdefault(option.value, option.label)  # the first option with a value wins
        return labels.get  # choice values are ints (booleans hash and compare as 0 and 1)
    if kind == "Money":
        return "${:,.2f}".format
    if kind in ("Integer", "BigInt") and attr.logical_name != "versionnumber":
        return "{:,}".format
    if kind == "DateTime":  # the display follows Format (in the reading user's zone, UTC here)
        return us_date if attr.date_format == "DateOnly" else us_datetime
    return None


def lookup_label(attr: AttributeDef, seed: int) -> LookupLabel:
    """The FormattedValue of a lookup value (the primary name of the row it points at), given
    the table it points at (None: the attribute's first target)."""
    namers = {target: _lookup_namer(seed, target) for target in attr.targets}
    first = attr.targets[0]

    def label(value: str, target: str | None) -> str | None:
        namer = namers.get(target or first) or _lookup_namer(seed, target or first)
        return namer(value)

    return label


@lru_cache(maxsize=256)
def _lookup_namer(seed: int, target: str) -> Callable[[str], str | None]:
    """The name shown for a row of `target` given its key (the row's primary name)."""
    if target in OWNERS:
        by_key: dict[str, str] = {}
        for i, name in enumerate(OWNERS[target]):
            by_key.setdefault(key_for(seed, target, i), name)
        return by_key.get
    if target == "transactioncurrency":
        return lambda guid: CURRENCY_NAME
    if target not in TEMPLATES:
        return lambda guid: None
    ident = identity(seed, target)
    name_of, counter_index = ident.name_of, ident.counter_index

    def primary_name(guid: str) -> str | None:
        # Lookup values are keys the generator made: their counter gives the row index.
        index = counter_index(guid)
        return name_of(index) if index is not None else None

    return primary_name
