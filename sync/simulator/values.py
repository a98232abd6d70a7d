"""Deterministic identities: primary keys, names, the row record and its overlay state.

Everything here is a pure function of (seed, table, index). Column values are drawn by
rowgen.py and written out by valueformat.py.

Primary keys are sequential GUIDs as Dataverse makes them (NEWSEQUENTIALID-like, e.g.
``3ba52c2f-23b3-ee11-a569-000d3a5c8f43``): the last group is a node id (an Azure MAC address,
``000d3a…``), the fourth a clock sequence (``0x8000`` plus 14 bits), and the first three a
64-bit counter written with its bytes swapped so that SQL Server's ``uniqueidentifier`` order
(guids.py) follows it: ``sqlserver_guid_key(key)[8:16] == counter.to_bytes(8, "big")``. Each
table has 2–3 nodes (`NODES_MIN`…`NODES_MAX`), each with its own clock sequence; a row's node
comes from its hash and its counter is ``(1 << 60) | (table base + index)``. So within a node
SQL Server order is creation order, every key of a table shares its most significant bytes
(``00 0d 3a``), and an even split of the GUID space puts nearly every row in one range — what
a careless range-splitting client meets in a real org. The counter turns a key back into its
index (`index_of`) without any lookup table.
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


#: The 24-bit prefix of Azure's MAC addresses (Microsoft's OUI), which Dataverse keys end with.
AZURE_OUI = 0x000D3A
#: Sequential counters have this bit set (the time counter of a real key is of that size).
COUNTER_FLAG = 1 << 60
#: Per-table offsets of the counter stay below this, leaving room for 2**56 rows.
BASE_LIMIT = 1 << 56
NODES_MIN, NODES_MAX = 2, 3
_NODE_SALT = 0x6E6F6465  # "node"
_BASE_SALT = 0x62617365  # "base"


class Identity:
    """Per-table hashing of row identities: keys and primary names without repeating work.

    ``mix(seed, salt(table), index, …)`` is a chain of splitmix steps, so its table prefix is
    computed once here; the row's *origin* ``mix(seed, salt(table), index)`` is then one step,
    and its creation date, RNG seed and names each one more. The key needs no further hashing:
    its counter is the index plus the table's base, its node a lookup by the origin's top byte.
    """

    __slots__ = ("_base", "_by_top_byte", "_prefix", "_rank_by_top_byte", "name", "nodes")

    def __init__(self, seed: int, table: str) -> None:
        s = salt(table)
        self.name = table
        self._prefix = mix(seed, s)
        self._base = COUNTER_FLAG | (splitmix(self._prefix ^ _BASE_SALT) % BASE_LIMIT)
        h = splitmix(self._prefix ^ _NODE_SALT)
        count = NODES_MIN + h % (NODES_MAX - NODES_MIN + 1)
        nodes: list[str] = []  # "-<clock sequence>-<node>": the last two groups of a key
        while len(nodes) < count:
            h = splitmix(h)
            node = (AZURE_OUI << 24) | (h & 0xFFFFFF)
            clock_sequence = 0x8000 | ((h >> 24) & 0x3FFF)
            suffix = f"-{clock_sequence:04x}-{node:012x}"
            if all(suffix[6:] != other[6:] for other in nodes):
                nodes.append(suffix)
        self.nodes: tuple[str, ...] = tuple(nodes)
        # The node of a row by the top byte of its origin (a table lookup, no division).
        self._by_top_byte = tuple(nodes[(top * count) >> 8] for top in range(256))
        # Nodes are distinct and outweigh the rest of a key in SQL Server's order: their rank.
        ranks = {suffix: rank for rank, suffix in enumerate(sorted(nodes, key=lambda n: n[6:]))}
        self._rank_by_top_byte = tuple(ranks[suffix] for suffix in self._by_top_byte)

    def origin(self, index: int) -> int:
        """``mix(seed, salt(table), index)``: the hash every per-row value starts from."""
        return splitmix(self._prefix ^ (index & MASK64))

    def counter(self, index: int) -> int:
        """The 64-bit sequential counter in the first three groups of row `index`'s key."""
        return self._base + index

    def key(self, index: int, origin: int) -> str:
        """The primary key of row `index`: a sequential GUID (module docstring)."""
        text = (self._base + index).to_bytes(8, "little").hex()
        return f"{text[:8]}-{text[8:12]}-{text[12:]}{self._by_top_byte[origin >> 56]}"

    def origin_and_key(self, index: int) -> tuple[int, str]:
        """``origin(index)`` and ``key(index, origin)``, the splitmix step written out: every
        row and every lookup value needs them."""
        z = ((self._prefix ^ (index & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        origin = z ^ (z >> 31)
        text = (self._base + index).to_bytes(8, "little").hex()
        return origin, f"{text[:8]}-{text[8:12]}-{text[12:]}{self._by_top_byte[origin >> 56]}"

    def node_rank(self, index: int) -> int:
        """The position of row `index`'s node among the table's nodes in SQL Server order: keys
        sort by node first, then (the counter) by index."""
        return self._rank_by_top_byte[self.origin(index) >> 56]

    def counter_index(self, guid: str) -> int | None:
        """The index whose counter the GUID carries (lower-case, hyphenated), unverified: None
        when it is not hex or below the table's base. `index_of` checks the rest."""
        try:
            counter = int.from_bytes(bytes.fromhex(guid[:8] + guid[9:13] + guid[14:18]), "little")
        except ValueError:
            return None
        index = counter - self._base
        return index if index >= 0 else None

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
    """The primary key of row `index`: a sequential GUID (module docstring)."""
    ident = identity(seed, table)
    return ident.key(index, ident.origin(index))


def index_of(seed: int, table: str, guid: str) -> int | None:
    """The row index a key belongs to, or None when it is not a key this table could have made:
    the counter gives the index, and the key of that index must be the GUID itself."""
    guid = guid.strip("{}").lower()
    if len(guid) != 36:
        return None
    index = identity(seed, table).counter_index(guid)
    return index if index is not None and key_for(seed, table, index) == guid else None


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
