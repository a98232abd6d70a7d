"""The pure rules of `dvmirror verify` (sync.verify.plan), with plain values."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from sync.mirror.keyranges import KeyRange, sql_order_key
from sync.verify.plan import (
    Diff,
    budget_low,
    cut_bounds,
    diff,
    halve,
    in_range,
    key_chunks,
    key_filter,
    level1_flagged,
    ranges_from,
    settled,
)


def guids(count: int, seed: int = 3) -> list[str]:
    import random

    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(count)]


@pytest.mark.parametrize(
    ("estimate", "mirror", "changed", "flagged"),
    [
        (1000, 1000, 0, False),
        (1000, 990, 10, False),  # within what changed since the snapshot may be
        (1000, 989, 10, True),
        (1000, 1011, 10, True),
        (None, 5, 0, True),  # no estimate: count exactly
    ],
)
def test_level1_flags_only_beyond_what_changed_in_a_day(
    estimate: int | None, mirror: int, changed: int, flagged: bool
) -> None:
    assert level1_flagged(estimate, mirror, changed) is flagged


def test_ranges_cover_every_key_once_in_sql_server_order() -> None:
    keys = sorted(guids(1000), key=sql_order_key)
    bounds = cut_bounds(keys, max_rows=300)
    assert bounds == [keys[299], keys[599], keys[899]]
    ranges = ranges_from(bounds)
    assert [r.number for r in ranges] == [0, 1, 2, 3]
    assert ranges[0].lower is None and ranges[-1].upper is None
    sizes = [sum(in_range(k, r) for k in keys) for r in ranges]
    assert sizes == [300, 300, 300, 100]
    # Text order is not the service's order: the cut must not follow it.
    assert sorted(keys) != keys


def test_no_bounds_means_one_open_range() -> None:
    assert ranges_from(cut_bounds(guids(10), max_rows=40_000)) == (KeyRange(0, None, None),)


def test_halving_a_refused_range_splits_at_the_middle_key() -> None:
    keys = sorted(guids(9), key=sql_order_key)
    whole = KeyRange(2, None, None)
    halves = halve(whole, keys)
    assert halves is not None
    first, second = halves
    assert first.upper == second.lower == keys[3]
    assert [sum(in_range(k, h) for k in keys) for h in halves] == [4, 5]
    assert halve(whole, keys[:1]) is None


def test_diff_sorts_rows_into_missing_ghost_and_stale() -> None:
    a, b, c, d, e = guids(5)
    found = diff({a: 1, b: 2, c: 3, d: None}, {b: 2, c: 2, d: 7, e: 9})
    assert found.missing == [a]
    assert found.ghost == [e]
    assert sorted(found.stale) == sorted([c, d])
    assert found.rows == 4
    assert diff({a: 1}, {a: 1}).rows == 0


def test_a_key_changed_during_verify_is_set_apart_not_reported() -> None:
    a, b, c = guids(3)
    first = Diff(missing=[a], stale=[b, c])
    first_source = {a: 5, b: 7, c: 8}
    # After the delta cycle: a still missing at the same version (real); b changed at the source
    # since the first look (it moved while verify ran); c caught up by the cycle.
    again = Diff(missing=[a], stale=[b])
    standing, moving = settled(first, first_source, again, {a: 5, b: 9, c: 8})
    assert standing.missing == [a] and standing.stale == []
    assert moving == [b]


def test_key_chunks_fit_the_url_and_keep_every_key() -> None:
    keys = guids(700)
    room = 8000
    chunks = list(key_chunks("accountid", keys, room=room))
    assert [k for chunk in chunks for k in chunk] == keys
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(quote(key_filter("accountid", chunk), safe=",()':")) <= room


def test_budget_reserve_is_ten_percent() -> None:
    assert not budget_low(0, None)
    assert not budget_low(900, 1000)
    assert budget_low(901, 1000)
