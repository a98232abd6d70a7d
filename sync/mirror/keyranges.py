"""Cutting one big table into primary-key ranges for a parallel backfill. Pure.

On a latency-bound service one nextLink chain keeps one request in flight, whatever the budget
allows. A table above `split_rows` is therefore read as N ranges, each its own chain
`$filter=<pk> gt A and <pk> le B&$orderby=<pk>`, which Dataverse serves from the clustered key
index.

Where to cut: Dataverse record ids are sequential GUIDs, and SQL Server orders
`uniqueidentifier` by its last six bytes first (`sql_order_key`), so the keys of one table sit
in a narrow band of the GUID space and an even split of that space puts nearly every row in
one range. The boundaries are taken instead from a sample of the table's real keys
(`KeySample`, fed by a key-only scan), at its quantiles in SQL Server order.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sync.mirror.cursor import select_params
from sync.mirror.typemap import UUID_TEXT
from sync.store.layout import TableSchema

SAMPLES_PER_RANGE = 64  # sampled keys per range: boundaries within ~1/64 of an even cut
MIN_PAGES_PER_RANGE = 2  # a range shorter than this costs more in requests than it saves


def sql_order_key(guid: str) -> bytes:
    """16 bytes whose byte order is SQL Server's `uniqueidentifier` order of `guid`.

    SqlGuid compares the stored bytes (`Guid.ToByteArray()`: the first three groups
    little-endian) in the order 10-15, 8-9, 6-7, 4-5, 0-3. Raises ValueError for a non-GUID.
    """
    raw = uuid.UUID(guid).bytes  # the bytes in the order the text writes them
    return raw[10:16] + raw[8:10] + raw[7:5:-1] + raw[5:3:-1] + raw[3::-1]


@dataclass(frozen=True)
class KeyRange:
    """Rows whose key sorts above `lower` (exclusive) and up to `upper` (inclusive), in SQL
    Server order; None: open on that side."""

    number: int
    lower: str | None
    upper: str | None

    def filter(self, primary_key: str) -> str | None:
        terms = []
        if self.lower is not None:
            terms.append(f"{primary_key} gt {self.lower}")
        if self.upper is not None:
            terms.append(f"{primary_key} le {self.upper}")
        return " and ".join(terms) or None


def range_count(total: int, *, workers: int, page_size: int) -> int:
    """How many ranges for `total` rows: at most `workers`, each worth a few pages."""
    by_size = total // max(1, page_size * MIN_PAGES_PER_RANGE)
    return max(1, min(workers, by_size))


def should_split(total: int | None, *, split_rows: int, workers: int, page_size: int) -> bool:
    """A backfill is split when the table is above `split_rows` and more than one range fits."""
    if total is None or total <= split_rows or workers < 2:
        return False
    return range_count(total, workers=workers, page_size=page_size) > 1


class KeySample:
    """Every `step`-th key of a scan; the step comes from the expected total, so the sample
    stays small (about SAMPLES_PER_RANGE per range) whatever the table's size."""

    def __init__(self, expected_total: int, ranges: int) -> None:
        self.step = max(1, expected_total // max(1, ranges * SAMPLES_PER_RANGE))
        self.seen = 0
        self.keys: list[str] = []

    @classmethod
    def resume(cls, step: int, seen: int, keys: tuple[str, ...]) -> KeySample:
        """The sample of a scan resumed at its last committed page (store.key_scans)."""
        sample = cls(0, 1)
        sample.step, sample.seen, sample.keys = step, seen, list(keys)
        return sample

    def add(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            if self.seen % self.step == 0:
                self.keys.append(key)
            self.seen += 1

    def cut(self, ranges: int) -> tuple[KeyRange, ...]:
        """`ranges` ranges (fewer when the sample is too small) covering the whole key space."""
        ordered = sorted(set(self.keys), key=sql_order_key)
        count = max(1, min(ranges, len(ordered)))
        # Upper bounds are inclusive: the last key of each equal share of the sample.
        bounds = [ordered[i * len(ordered) // count - 1] for i in range(1, count)]
        bounds = sorted(set(bounds), key=sql_order_key)
        edges: list[str | None] = [None, *bounds, None]
        return tuple(
            KeyRange(number, edges[number], edges[number + 1]) for number in range(len(edges) - 1)
        )


def valid_key(key: object) -> bool:
    return isinstance(key, str) and UUID_TEXT.fullmatch(key) is not None


def range_params(schema: TableSchema, key_range: KeyRange) -> list[tuple[str, str]]:
    """Query options of one range's first request: every column, the range, in key order."""
    params = select_params(schema.select)
    condition = key_range.filter(schema.primary_key)
    if condition is not None:
        params.append(("$filter", condition))
    params.append(("$orderby", f"{schema.primary_key} asc"))
    return params
