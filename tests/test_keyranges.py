"""Where a parallel backfill cuts a table: pure rules, plain values (sync.mirror.keyranges)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime
from itertools import pairwise

import pytest

from sync.mirror.keyranges import KeyRange, KeySample, range_count, should_split, sql_order_key
from sync.simulator.guids import sqlserver_guid_key
from sync.store.key_scans import KeyScanState, decode, encode
from tests.test_sim_guid_order import KNOWN_ORDERINGS


def sequential_guid(counter: int, node: int = 0x000D3A5C8F43, clock: int = 0xA569) -> str:
    """A NEWSEQUENTIALID-style key: node and clock sequence fixed, the counter in groups 1-3
    with their bytes swapped (what Dataverse hands out)."""
    c = counter.to_bytes(8, "big")
    g1, g2, g3 = c[4:8][::-1].hex(), c[2:4][::-1].hex(), c[0:2][::-1].hex()
    return f"{g1}-{g2}-{g3}-{clock:04x}-{node:012x}"


@pytest.mark.parametrize("name", sorted(KNOWN_ORDERINGS))
def test_sql_order_matches_published_orderings(name: str) -> None:
    ordering = KNOWN_ORDERINGS[name]
    assert sorted(ordering, key=sql_order_key) == ordering


def test_sql_order_agrees_with_the_simulators_independent_rule() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text = str(uuid.UUID(int=rng.getrandbits(128)))
        assert sql_order_key(text) == sqlserver_guid_key(text)


def test_sequential_keys_sort_by_their_counter() -> None:
    keys = [sequential_guid(0x11EE_0000_0000_0000 + i * 977) for i in range(300)]
    shuffled = random.Random(3).sample(keys, len(keys))
    assert sorted(shuffled, key=sql_order_key) == keys


def owner(ranges: tuple[KeyRange, ...], key: str) -> int:
    """The one range a key belongs to (lower exclusive, upper inclusive)."""
    value = sql_order_key(key)
    found = [
        r.number
        for r in ranges
        if (r.lower is None or value > sql_order_key(r.lower))
        and (r.upper is None or value <= sql_order_key(r.upper))
    ]
    assert len(found) == 1, (key, found)
    return found[0]


def test_cuts_from_sampled_keys_are_even_where_an_even_split_of_the_space_is_not() -> None:
    """Three nodes, bursts of creation: 8 ranges from a sample each hold about 1/8 of the
    rows, while splitting the GUID space by its most significant byte puts all in one."""
    rng = random.Random(11)
    keys: list[str] = []
    counter = 0x11EE_0000_0000_0000
    for burst in range(40):
        node = (0x000D3A5C8F43, 0x000D3A9912AB, 0x000D3AF00D01)[burst % 3]
        for _ in range(rng.randrange(100, 5000)):
            counter += rng.randrange(1, 50)
            keys.append(sequential_guid(counter, node=node))
    scan = rng.sample(keys, len(keys))  # a change-tracking scan's order is not key order
    sample = KeySample(expected_total=len(keys), ranges=8)
    for start in range(0, len(scan), 5000):
        sample.add(tuple(scan[start : start + 5000]))
    ranges = sample.cut(8)
    assert len(ranges) == 8
    sizes = Counter(owner(ranges, key) for key in keys)
    assert max(sizes.values()) < 1.5 * len(keys) / 8, sizes
    assert min(sizes.values()) > 0.5 * len(keys) / 8, sizes
    by_top_byte = Counter(sql_order_key(key)[0] * 8 // 256 for key in keys)
    assert max(by_top_byte.values()) == len(keys)  # the careless split: one range has it all


def test_a_sample_keeps_about_64_keys_per_range_whatever_the_table_size() -> None:
    sample = KeySample(expected_total=1_000_000, ranges=8)
    sample.add(tuple(sequential_guid(i) for i in range(1_000_000)))
    assert 500 <= len(sample.keys) <= 520
    assert sample.seen == 1_000_000


def test_small_samples_give_fewer_ranges_that_still_cover_every_key() -> None:
    keys = [sequential_guid(i) for i in (5, 9, 2)]
    sample = KeySample(expected_total=3, ranges=8)
    sample.add(tuple(keys))
    ranges = sample.cut(8)
    assert len(ranges) == 3
    assert ranges[0].lower is None and ranges[-1].upper is None
    assert all(a.upper == b.lower for a, b in pairwise(ranges))
    assert sorted(owner(ranges, k) for k in keys) == [0, 1, 2]
    empty = KeySample(expected_total=0, ranges=4)
    assert empty.cut(4) == (KeyRange(0, None, None),)


def test_range_filters() -> None:
    assert KeyRange(0, None, "b").filter("accountid") == "accountid le b"
    assert KeyRange(1, "a", "b").filter("accountid") == "accountid gt a and accountid le b"
    assert KeyRange(2, "b", None).filter("accountid") == "accountid gt b"
    assert KeyRange(0, None, None).filter("accountid") is None


@pytest.mark.parametrize(
    ("total", "split_rows", "workers", "page_size", "expected"),
    [
        (None, 200_000, 8, 5000, False),  # no count: one chain
        (200_000, 200_000, 8, 5000, False),  # not above the threshold
        (200_001, 200_000, 8, 5000, True),
        (1_000_000, 200_000, 1, 5000, False),  # range_workers = 1 turns it off
        (20_000, 500, 8, 5000, True),  # two ranges of two pages each
        (19_999, 500, 8, 5000, False),  # under two pages per range: not worth it
    ],
)
def test_should_split(
    total: int | None, split_rows: int, workers: int, page_size: int, expected: bool
) -> None:
    assert should_split(total, split_rows=split_rows, workers=workers, page_size=page_size) is (
        expected
    )


def test_range_count_is_capped_by_workers_and_by_pages() -> None:
    assert range_count(1_000_000, workers=8, page_size=5000) == 8
    assert range_count(30_000, workers=8, page_size=5000) == 3
    assert range_count(100, workers=8, page_size=5000) == 1


def test_a_scan_resumed_from_its_stored_progress_cuts_the_ranges_an_unbroken_one_cuts() -> None:
    keys = [sequential_guid(n) for n in range(30_000)]
    pages = [tuple(keys[i : i + 5000]) for i in range(0, len(keys), 5000)]
    unbroken = KeySample(len(keys), 4)
    for page in pages:
        unbroken.add(page)
    first = KeySample(len(keys), 4)
    for page in pages[:2]:
        first.add(page)
    stored = KeyScanState(
        "https://org.example/api/data/v9.2/opportunities?$skiptoken=x",
        True,
        datetime(2026, 12, 7, 11, 0, tzinfo=UTC),
        4,
        first.step,
        first.seen,
        tuple(first.keys),
    )
    again = decode(encode(stored))
    assert again == stored
    resumed = KeySample.resume(again.step, again.seen, again.keys)
    for page in pages[2:]:
        resumed.add(page)
    assert resumed.keys == unbroken.keys and resumed.seen == unbroken.seen
    assert resumed.cut(4) == unbroken.cut(4)
    assert len(encode(stored)) < 40 * 4 * 64 + 400  # the sample, not every key scanned


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"next_link": "x"}',
        '{"next_link": "x", "tracked": 1, "started_at": "2026-12-07T11:00:00+00:00",'
        ' "ranges": 4, "step": 2, "seen": 10, "keys": []}',
        '{"next_link": "x", "tracked": true, "started_at": "yesterday",'
        ' "ranges": 4, "step": 2, "seen": 10, "keys": []}',
        '{"next_link": "x", "tracked": true, "started_at": "2026-12-07T11:00:00+00:00",'
        ' "ranges": 0, "step": 2, "seen": 10, "keys": []}',
    ],
)
def test_unreadable_scan_progress_is_ignored_and_the_scan_starts_over(text: str) -> None:
    assert decode(text) is None
