"""The pure rules of `dvmirror verify`: when an estimate flags a table, how key ranges are cut,
how keys and versions diff, how keys are chunked into URLs. Plain values in, plain values out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from sync.mirror.cursor import QUERY_SAFE
from sync.mirror.keyranges import KeyRange, sql_order_key

#: Dataverse refuses an aggregate over more than 50,000 rows (AggregateQueryRecordLimit); ranges
#: are cut at 40,000 mirror rows so that a source range a little bigger still counts.
RANGE_ROWS = 40_000
#: The Web API refuses GET URLs over 32,768 characters (reference 2.1).
URL_LIMIT = 32_768
#: A key URL's `@odata.nextLink` is the same URL plus a `$skiptoken`: leave it room.
NEXT_LINK_ROOM = 2_048
MAX_URL = URL_LIMIT - NEXT_LINK_ROOM
#: Dataverse's query function for "one of these values" (`$filter` has no `in` operator).
IN_FUNCTION = "Microsoft.Dynamics.CRM.In"
#: Verification stops while less than this share of a tenant's daily request budget is left.
BUDGET_RESERVE = 0.10


def level1_flagged(estimate: int | None, mirror_rows: int, changed_24h: int) -> bool:
    """The snapshot is up to 24 h old: only a difference bigger than what changed since counts."""
    if estimate is None:
        return True  # no estimate: count exactly
    return abs(estimate - mirror_rows) > changed_24h


def cut_bounds(ordered_keys: Iterable[str], max_rows: int = RANGE_ROWS) -> list[str]:
    """Inclusive upper bounds every `max_rows` keys of keys given in SQL Server order."""
    bounds: list[str] = []
    for position, key in enumerate(ordered_keys, start=1):
        if position % max_rows == 0:
            bounds.append(key)
    return bounds


def ranges_from(bounds: Sequence[str]) -> tuple[KeyRange, ...]:
    """Ranges covering the whole key space, split at `bounds` (inclusive uppers, SQL order)."""
    edges: list[str | None] = [None, *bounds, None]
    return tuple(KeyRange(n, edges[n], edges[n + 1]) for n in range(len(edges) - 1))


def halve(key_range: KeyRange, inner_keys: Sequence[str]) -> tuple[KeyRange, KeyRange] | None:
    """Split a range the service refused to count at the middle of the mirror's keys inside it
    (SQL order); None when it holds fewer than two."""
    if len(inner_keys) < 2:
        return None
    middle = inner_keys[len(inner_keys) // 2 - 1]
    return (
        KeyRange(key_range.number, key_range.lower, middle),
        KeyRange(key_range.number, middle, key_range.upper),
    )


def in_range(key: str, key_range: KeyRange) -> bool:
    order = sql_order_key(key)
    if key_range.lower is not None and order <= sql_order_key(key_range.lower):
        return False
    return key_range.upper is None or order <= sql_order_key(key_range.upper)


@dataclass
class Diff:
    """Level 3: keys only in the source, only in the mirror, and in both at other versions."""

    missing: list[str] = field(default_factory=list)
    ghost: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.missing) + len(self.ghost) + len(self.stale)

    def all_keys(self) -> list[str]:
        return [*self.missing, *self.ghost, *self.stale]

    def extend(self, other: Diff) -> None:
        self.missing += other.missing
        self.ghost += other.ghost
        self.stale += other.stale


def diff(source: Mapping[str, int | None], mirror: Mapping[str, int | None]) -> Diff:
    """Key → versionnumber on both sides (keys lowercase) into missing / ghost / stale."""
    found = Diff()
    for key, version in source.items():
        if key not in mirror:
            found.missing.append(key)
        elif mirror[key] != version:
            found.stale.append(key)
    found.ghost = [key for key in mirror if key not in source]
    for keys in (found.missing, found.ghost, found.stale):
        keys.sort(key=sql_order_key)
    return found


def settled(
    first: Diff,
    first_source: Mapping[str, int | None],
    again: Diff,
    source: Mapping[str, int | None],
) -> tuple[Diff, list[str]]:
    """After a delta cycle, which mismatches stand: those still differing whose source version is
    what it was at the first look. Keys whose source changed meanwhile (they changed after
    verify started) are returned apart, to be looked at again after another cycle."""
    still = set(again.all_keys())
    changed = [
        key for key in first.all_keys() if key in still and first_source.get(key) != source.get(key)
    ]
    moving = set(changed)

    def keep(keys: list[str]) -> list[str]:
        return [k for k in keys if k in still and k not in moving]

    return Diff(keep(again.missing), keep(again.ghost), keep(again.stale)), changed


def _in_prefix(primary_key: str) -> str:
    return f"{IN_FUNCTION}(PropertyName='{primary_key}',PropertyValues=["


def key_filter(primary_key: str, keys: Sequence[str]) -> str:
    """`$filter` selecting exactly these keys:
    `Microsoft.Dynamics.CRM.In(PropertyName='<pk>',PropertyValues=['k1','k2',…])`."""
    return _in_prefix(primary_key) + ",".join(f"'{key}'" for key in keys) + "])"


def _encoded(text: str) -> int:
    return len(quote(text, safe=QUERY_SAFE))


def key_chunks(primary_key: str, keys: Sequence[str], *, room: int) -> Iterator[list[str]]:
    """Keys in chunks whose percent-encoded `key_filter` fits in `room` characters (as many as
    fit: about 780 GUIDs in a 30 KB URL, well under SQL Server's 2,100 query parameters)."""
    fixed = _encoded(_in_prefix(primary_key)) + _encoded("])")
    comma = _encoded(",")
    if fixed + _encoded("'00000000-0000-0000-0000-000000000000'") > room:
        raise ValueError(f"no key of {primary_key} fits in {room} characters")
    chunk: list[str] = []
    size = fixed
    for key in keys:
        term = _encoded(f"'{key}'") + (comma if chunk else 0)
        if chunk and size + term > room:
            yield chunk
            chunk, size = [], fixed
            term -= comma
        chunk.append(key)
        size += term
    if chunk:
        yield chunk


def budget_low(used: int, limit: int | None) -> bool:
    """Whether less than BUDGET_RESERVE of the daily request budget is left."""
    return limit is not None and limit - used < BUDGET_RESERVE * limit
