"""Deterministic identities: primary keys, names, the row record and its overlay state.

Everything here is a pure function of (seed, table, index). Column values are drawn by
rowgen.py and written out by valueformat.py. Primary keys put the row
index in their first 8 hex digits, so the lexical order of keys is the index order and a paging
cookie's "last key" turns back into a position without any lookup table.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sync.simulator.templates import OWNERS

MASK64 = (1 << 64) - 1
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
FIRST_NAMES = (
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
WORDS = (
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


class Identity:
    """Per-table hashing of row identities: keys and primary names without repeating work.

    ``mix(seed, salt(table), index, …)`` is a chain of splitmix steps, so its table prefix is
    computed once here; the row's *origin* ``mix(seed, salt(table), index)`` is then one step,
    and its key, creation date, RNG seed and names each one more.
    """

    __slots__ = ("_middle", "_prefix", "name")

    def __init__(self, seed: int, table: str) -> None:
        s = salt(table)
        self.name = table
        self._prefix = mix(seed, s)
        self._middle = f"-{s & 0xFFFF:04x}-4"

    def origin(self, index: int) -> int:
        """``mix(seed, salt(table), index)``: the hash every per-row value starts from."""
        return splitmix(self._prefix ^ (index & MASK64))

    def key(self, index: int, origin: int) -> str:
        """The primary key of row `index`: lower-case GUID whose first group is the index."""
        low = splitmix(origin) & 0xFFFFFFFFFFFF
        variant = 0x8000 | ((origin >> 36) & 0x3FFF)
        return f"{index:08x}{self._middle}{(origin >> 52) & 0xFFF:03x}-{variant:04x}-{low:012x}"

    def origin_and_key(self, index: int) -> tuple[int, str]:
        """``origin(index)`` and ``key(index, origin)``, the two splitmix steps written out:
        every row and every lookup value needs them."""
        z = ((self._prefix ^ (index & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        origin = z ^ (z >> 31)
        z = (origin + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        low = (z ^ (z >> 31)) & 0xFFFFFFFFFFFF
        variant = 0x8000 | ((origin >> 36) & 0x3FFF)
        head = f"{index:08x}{self._middle}{(origin >> 52) & 0xFFF:03x}"
        return origin, f"{head}-{variant:04x}-{low:012x}"

    def person(self, origin: int) -> tuple[str, str]:
        """A stable (first, last) name for a contact row."""
        h = splitmix(origin ^ 7)
        return FIRST_NAMES[h % len(FIRST_NAMES)], _LAST[(h >> 16) % len(_LAST)]

    def primary_name(self, index: int, origin: int) -> str:
        """The stable primary-name value of a row (also the FormattedValue of lookups to it)."""
        table = self.name
        if table == "contact":
            first, last = self.person(origin)
            return f"{first} {last}"
        h = splitmix(origin ^ 11)
        if table == "opportunity":
            return f"{_pick(WORDS, h, 0).capitalize()} deal {index}"
        if table == "new_project":
            return f"Project {_pick(_NOUNS, h, 8)} {index}"
        return f"{_ADJECTIVES[h % len(_ADJECTIVES)]} {_NOUNS[(h >> 8) % len(_NOUNS)]} {index}"

    def name_of(self, index: int) -> str:
        """``primary_name(index, origin(index))`` in one call (lookup FormattedValues)."""
        return self.primary_name(index, splitmix(self._prefix ^ (index & MASK64)))


@lru_cache(maxsize=256)
def identity(seed: int, table: str) -> Identity:
    """The (cached) identity hasher of a table."""
    return Identity(seed, table)


@lru_cache(maxsize=256)  # owners, the currency and small lookup targets repeat a lot
def key_for(seed: int, table: str, index: int) -> str:
    """The primary key of row `index`: lower-case GUID whose first group is the index."""
    ident = identity(seed, table)
    return ident.key(index, ident.origin(index))


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
    origin: int = 0  # mix(seed, salt(table), index): what the seeded values derive from
    state: RowState | None = None  # overlay state when changed since start


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
