"""Deterministic values: primary keys, seeded column values, and how the Web API renders them.

Everything here is a pure function of (seed, table, index, revision). Primary keys put the row
index in their first 8 hex digits, so the lexical order of keys is the index order and a paging
cookie's "last key" turns back into a position without any lookup table.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sync.simulator.attributes import AttributeDef
from sync.simulator.templates import CURRENCY_NAME, OWNERS, TEMPLATES

MASK64 = (1 << 64) - 1
_ONE = Decimal("1.00")
DAY = 86_400
#: Seeded rows were last modified between these instants (monotone in the row index).
SEED_START = int(datetime(2022, 1, 1, tzinfo=UTC).timestamp())
SEED_SPAN = 3 * 365 * DAY
#: Dates drawn for date/time columns.
VALUE_START = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp())
VALUE_SPAN = 7 * 365 * DAY

_ADJECTIVES = (
    "Blue",
    "Northwind",
    "Fabrikam",
    "Contoso",
    "Litware",
    "Adventure",
    "Alpine",
    "Coho",
    "Humongous",
    "Proseware",
    "Tailspin",
    "Wide World",
    "Fourth",
    "Graphic",
)
_NOUNS = (
    "Traders",
    "Works",
    "Labs",
    "Airlines",
    "Insurance",
    "Winery",
    "Design",
    "Pharma",
    "Logistics",
    "Bikes",
    "Systems",
    "Foods",
    "Energy",
    "Media",
)
_FIRST = (
    "Ana",
    "Björn",
    "Chloé",
    "Dmitri",
    "Eve",
    "Farah",
    "Gus",
    "Hiro",
    "Ines",
    "José",
    "Kofi",
    "Lena",
    "Mei",
    "Nils",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tomás",
)
_LAST = (
    "Garcia",
    "Müller",
    "O'Brien",
    "Nakamura",
    "Okafor",
    "Svensson",
    "Dubois",
    "Kowalski",
    "Rossi",
    "Smith",
    "Ivanova",
    "Haddad",
    "Silva",
    "Chen",
    "Novak",
    "Jensen",
)
_WORDS = (
    "alpha",
    "bravo",
    "review",
    "quarterly",
    "follow-up",
    "pricing",
    "renewal",
    "pilot",
    "migration",
    "support",
    "naïve",
    "café",
    "budget",
    "roadmap",
    "security",
    "rollout",
)


def splitmix(value: int) -> int:
    """One step of splitmix64: a cheap, well-mixed 64-bit hash."""
    z = (value + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def mix(*parts: int) -> int:
    """Hash several integers into one 64-bit value (stable across processes)."""
    h = 0
    for part in parts:
        h = splitmix(h ^ (part & MASK64))
    return h


@lru_cache(maxsize=256)
def salt(name: str) -> int:
    """A stable number for a table or column name (Python's hash() is randomised)."""
    return zlib.crc32(name.encode())


@lru_cache(maxsize=256)  # owners, the currency and small lookup targets repeat a lot
def key_for(seed: int, table: str, index: int) -> str:
    """The primary key of row `index`: lower-case GUID whose first group is the index."""
    s = salt(table)
    h = mix(seed, s, index)
    low = splitmix(h) & 0xFFFFFFFFFFFF
    variant = 0x8000 | ((h >> 36) & 0x3FFF)
    return f"{index:08x}-{s & 0xFFFF:04x}-4{(h >> 52) & 0xFFF:03x}-{variant:04x}-{low:012x}"


def index_of(seed: int, table: str, guid: str) -> int | None:
    """The row index a key belongs to, or None when it is not a key this table could have made."""
    guid = guid.strip("{}").lower()
    try:
        index = int(guid[:8], 16)
    except ValueError:
        return None
    return index if key_for(seed, table, index) == guid else None


def _pick(options: tuple[str, ...], h: int, shift: int) -> str:
    return options[(h >> shift) % len(options)]


def person_name(seed: int, table: str, index: int) -> tuple[str, str]:
    """A stable (first, last) name for a contact row."""
    h = mix(seed, salt(table), index, 7)
    return _pick(_FIRST, h, 0), _pick(_LAST, h, 16)


def primary_name(seed: int, table: str, index: int) -> str:
    """The stable primary-name value of a row (also the FormattedValue of lookups to it)."""
    h = mix(seed, salt(table), index, 11)
    if table == "contact":
        first, last = person_name(seed, table, index)
        return f"{first} {last}"
    if table == "opportunity":
        return f"{_pick(_WORDS, h, 0).capitalize()} deal {index}"
    if table == "new_project":
        return f"Project {_pick(_NOUNS, h, 8)} {index}"
    return f"{_pick(_ADJECTIVES, h, 0)} {_pick(_NOUNS, h, 8)} {index}"


def lookup_name(seed: int, target: str, guid: str) -> str | None:
    """The name a lookup's FormattedValue shows for the row it points at."""
    if target in OWNERS:
        for i, name in enumerate(OWNERS[target]):
            if key_for(seed, target, i) == guid:
                return name
        return None
    if target == "transactioncurrency":
        return CURRENCY_NAME
    index = index_of(seed, target, guid)
    return None if index is None or target not in TEMPLATES else primary_name(seed, target, index)


@dataclass(frozen=True, slots=True)
class RowState:
    """What the overlay remembers of a created or updated row."""

    revision: int
    version: int
    modified: int
    created: int


@dataclass(slots=True)
class Row:
    """One live row: internal typed values keyed by Web API name, and lookup targets."""

    index: int
    key: str
    version: int
    values: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GenContext:
    """What value generation needs besides the row: seed and the sizes of lookup targets."""

    seed: int
    target_rows: dict[str, int]

    def target_count(self, table: str) -> int:
        """How many rows lookups to `table` may point at."""
        if table in OWNERS:
            return len(OWNERS[table])
        if table == "transactioncurrency":
            return 1
        return max(1, self.target_rows.get(table, 1000))


def _draw(  # noqa: PLR0911 - one branch per attribute type
    attr: AttributeDef, rng: random.Random, ctx: GenContext, row: Row
) -> Any:
    kind = attr.attribute_type
    low, high = attr.value_range
    if attr.is_lookup:
        target = (
            attr.targets[0] if len(attr.targets) == 1 or rng.random() < 0.8 else attr.targets[1]
        )
        row.targets[attr.web_name] = target
        return key_for(ctx.seed, target, rng.randrange(ctx.target_count(target)))
    if kind in ("Integer", "BigInt"):
        return rng.randint(int(low), int(high))
    if kind in ("Decimal", "Money"):
        places = Decimal(1).scaleb(-(attr.precision or 2))
        return Decimal(str(rng.uniform(low, high))).quantize(places)
    if kind == "Double":
        return round(rng.uniform(low, high), attr.precision or 5)
    if kind == "Boolean":
        return rng.random() < 0.5
    if kind == "DateTime":
        instant = VALUE_START + rng.randrange(VALUE_SPAN)
        return instant - instant % DAY if attr.date_only else instant
    if kind == "State":
        return attr.options[0].value if rng.random() < 0.75 else rng.choice(attr.options).value
    if kind == "Status":
        state = row.values.get("statecode")
        choices = [o for o in attr.options if o.state == state] or list(attr.options)
        return rng.choice(choices).value
    if kind == "Picklist":
        return rng.choice(attr.options).value
    if attr.is_multiselect:
        picked = rng.sample(attr.options, rng.randint(1, min(3, len(attr.options))))
        return ",".join(str(o.value) for o in sorted(picked, key=lambda o: o.value))
    if kind == "Uniqueidentifier":
        return key_for(ctx.seed, attr.logical_name, rng.randrange(1 << 32))
    return _text(attr, rng, row.index)


def _text(attr: AttributeDef, rng: random.Random, index: int) -> str:
    flavour = attr.text
    if flavour == "code":
        return f"{rng.choice('ABCDEFGHKMNPRSTXYZ')}{rng.choice('ABCDEFGHKMNPRSTXYZ')}-{index:06d}"
    if flavour == "phone":
        return f"+1-555-{rng.randrange(10_000):04d}"
    if flavour == "email":
        return f"{rng.choice(_FIRST).lower()}.{index}@example.com"
    if attr.attribute_type == "Memo":
        words = rng.choices(_WORDS, k=rng.randint(4, 12))
        return " ".join(words[:3]).capitalize() + ".\n" + " ".join(words[3:])
    return rng.choice(_WORDS)


def generate_row(
    table: str,
    attrs: list[AttributeDef],
    ctx: GenContext,
    index: int,
    *,
    version: int,
    state: RowState | None,
    seeded_created: int,
    seeded_modified: int,
) -> Row:
    """Row `index` of `table` from its seed and, when changed since start, its overlay state."""
    row = Row(index, key_for(ctx.seed, table, index), version)
    revision = state.revision if state else 0
    rng = random.Random(mix(ctx.seed, salt(table), index, revision))
    values = row.values
    for attr in attrs:
        fill, name = attr.fill, attr.web_name
        if fill == "draw":
            if (attr.added_at_version and version <= attr.added_at_version) or (
                attr.null_ratio and rng.random() < attr.null_ratio
            ):
                values[name] = None
            else:
                values[name] = _draw(attr, rng, ctx, row)
        elif fill == "key":
            values[name] = row.key
        elif fill == "name":
            values[name] = primary_name(ctx.seed, table, index)
        elif fill in ("firstname", "lastname"):
            values[name] = person_name(ctx.seed, table, index)[fill == "lastname"]
        elif fill == "createdon":
            values[name] = state.created if state else seeded_created
        elif fill == "modifiedon":
            values[name] = state.modified if state else seeded_modified
        elif fill == "versionnumber":
            values[name] = version
        elif fill == "exchangerate":
            values[name] = _ONE
        else:  # transactioncurrencyid: every row is in the one currency
            row.targets[name] = "transactioncurrency"
            values[name] = key_for(ctx.seed, "transactioncurrency", 0)
    return row


def iso_datetime(instant: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` as the Web API renders DateTime values."""
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_date(instant: int) -> str:
    """``YYYY-MM-DD`` for date-only columns (Edm.Date)."""
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%d")


def formatted_value(  # noqa: PLR0911 - one branch per attribute type
    attr: AttributeDef, value: Any, target: str | None, seed: int
) -> str | None:
    """The ``OData.Community.Display.V1.FormattedValue`` of a value, or None if it has none."""
    if value is None:
        return None
    kind = attr.attribute_type
    if attr.is_lookup:
        return lookup_name(seed, target or attr.targets[0], value)
    if attr.is_multiselect:
        labels = {str(o.value): o.label for o in attr.options}
        return "; ".join(labels.get(part, part) for part in str(value).split(","))
    if kind in ("Picklist", "State", "Status", "Boolean"):
        wanted = int(value)
        return next((o.label for o in attr.options if o.value == wanted), None)
    if kind == "Money":
        return f"${value:,.2f}"
    if kind in ("Integer", "BigInt") and attr.logical_name != "versionnumber":
        return f"{value:,}"
    if kind == "DateTime":
        moment = datetime.fromtimestamp(value, UTC)
        day = f"{moment.month}/{moment.day}/{moment.year}"
        if attr.date_only:
            return day
        hour = moment.hour % 12 or 12
        return f"{day} {hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"
    return None
