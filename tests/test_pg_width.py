"""The worst-case width of a PostgreSQL mirror row and the choice of the columns that go to
`_dv_overflow` (store.dialects.pg_width), with plain values. The model itself is checked against
a real server in tests/test_pg_wide.py."""

from __future__ import annotations

from sync.store.dialects.pg_width import (
    MAX_COLUMNS,
    MAX_TUPLE_BYTES,
    OVERFLOW_COLUMN,
    RESERVED_WIDTHS,
    Slot,
    pg_slot,
    plan_existing_table,
    plan_new_table,
    row_bytes,
    slot_of,
)
from sync.store.layout import SqlType

RESERVED = [Slot(n, s, a) for n, s, a in RESERVED_WIDTHS]


def columns(kind: SqlType, count: int, prefix: str = "c") -> list[tuple[str, SqlType]]:
    return [(f"{prefix}{i:04d}", kind) for i in range(count)]


def test_row_bytes_counts_header_bitmap_alignment_and_toast_pointers() -> None:
    # Header 23 + a 1-byte bitmap = 24; a boolean at 0, a bigint aligned to 8: 16 → 40.
    assert row_bytes([Slot("a", 1, 1), Slot("b", 8, 8)]) == 24 + 16
    # uuid (16, byte-aligned) then an integer aligned to 4: 16 + 4 = 20, rounded up to 24.
    assert row_bytes([slot_of("k", "uuid"), slot_of("n", "integer")]) == 24 + 24
    # Text, numeric and arrays cost 24 bytes at worst (shorter values are never TOASTed).
    assert row_bytes([slot_of("t", "text"), slot_of("m", "numeric")]) == 24 + 48
    # Nine attributes need a 2-byte bitmap: 23 + 2 = 25, aligned to 32.
    assert row_bytes([Slot(f"b{i}", 1, 1) for i in range(9)]) == 32 + 16
    # A dropped attribute takes no bytes but still a bit of the bitmap.
    dropped = [Slot(f"b{i}", 1, 1, dropped=i > 0) for i in range(9)]
    assert row_bytes(dropped) == 32 + 8


def test_pg_slot_reads_pg_type() -> None:
    assert pg_slot("t", -1, "i") == Slot("t", 24, 1)
    assert pg_slot("ts", 8, "d") == Slot("ts", 8, 8)
    assert pg_slot("u", 16, "c") == Slot("u", 16, 1)
    assert pg_slot("gone", 4, "i", dropped=True).dropped


def test_a_table_that_fits_keeps_every_column() -> None:
    wanted = [("accountid", "uuid"), *columns("timestamp", 900)]
    plan = plan_new_table(wanted, "accountid")
    assert plan.overflow == frozenset() and not plan.add_overflow_column and plan.fits
    assert plan.width <= MAX_TUPLE_BYTES


def test_1200_moments_and_numbers_move_the_widest_first_and_only_as_many_as_needed() -> None:
    wanted: list[tuple[str, SqlType]] = [("accountid", "uuid")]
    wanted += columns("timestamp", 1000, "t") + columns("numeric", 100, "n")
    wanted += columns("integer", 100, "i")
    plan = plan_new_table(wanted, "accountid")
    assert plan.fits and plan.add_overflow_column
    # Every numeric (24 bytes at worst) goes before any 8-byte moment; names break ties.
    numerics = {n for n, t in wanted if t == "numeric"}
    assert numerics <= plan.overflow
    moved_moments = sorted(n for n in plan.overflow if n.startswith("t"))
    assert moved_moments == [f"t{i:04d}" for i in range(len(moved_moments))]
    assert not any(n.startswith("i") for n in plan.overflow)
    assert "accountid" not in plan.overflow
    # As few as needed: keeping one more column would pass the limit.
    kept = [slot_of(n, t) for n, t in wanted if n not in plan.overflow]
    jsonb = slot_of(OVERFLOW_COLUMN, "text")
    assert row_bytes([*kept, *RESERVED, jsonb]) <= MAX_TUPLE_BYTES
    back = slot_of(moved_moments[-1], "timestamp")
    assert row_bytes([*kept, back, *RESERVED, jsonb]) > MAX_TUPLE_BYTES
    # The same columns in another order give the same choice.
    again = plan_new_table([wanted[0], *reversed(wanted[1:])], "accountid")
    assert again.overflow == plan.overflow


def test_past_1600_columns_some_move_even_when_their_bytes_would_fit() -> None:
    wanted = [("accountid", "uuid"), *columns("boolean", 1700)]
    plan = plan_new_table(wanted, "accountid")
    assert plan.fits
    physical = len(wanted) - len(plan.overflow) + len(RESERVED) + 1
    assert physical == MAX_COLUMNS


def test_a_key_alone_cannot_be_moved() -> None:
    plan = plan_new_table([("accountid", "uuid"), *columns("text", 5000)], "accountid")
    assert plan.fits and "accountid" not in plan.overflow and len(plan.overflow) >= 4000


def test_drift_keeps_columns_where_they_are_and_appends_while_the_row_fits() -> None:
    physical = [slot_of("accountid", "uuid"), *RESERVED]
    physical += [slot_of(n, t) for n, t in columns("timestamp", 980)]
    added = columns("bigint", 40, "new")
    plan = plan_existing_table(physical, (), added)
    assert plan.fits and plan.add_overflow_column
    kept = [n for n, _ in added if n not in plan.overflow]
    assert kept and kept == [f"new{i:04d}" for i in range(len(kept))]  # in order, then full
    assert plan.overflow == {n for n, _ in added[len(kept) :]}
    # Room was kept for _dv_overflow itself.
    slots = [*physical, slot_of(OVERFLOW_COLUMN, "text"), *(slot_of(n, "bigint") for n in kept)]
    assert row_bytes(slots) <= MAX_TUPLE_BYTES


def test_a_column_in_overflow_stays_there_and_a_small_addition_can_still_be_a_column() -> None:
    physical = [slot_of("accountid", "uuid"), *RESERVED, slot_of(OVERFLOW_COLUMN, "text")]
    physical += [slot_of(n, t) for n, t in columns("timestamp", 100)]
    plan = plan_existing_table(physical, {"old_a", "old_b"}, [("flag", "boolean")])
    assert plan.overflow == {"old_a", "old_b"} and not plan.add_overflow_column


def test_an_existing_table_too_wide_gives_up_its_widest_columns_but_never_the_key() -> None:
    """A table made before overflow existed, whose rows PostgreSQL refuses."""
    physical = [slot_of("accountid", "uuid"), *RESERVED]
    physical += [slot_of(n, t) for n, t in columns("timestamp", 1000)]
    physical += [slot_of(n, t) for n, t in columns("uuid", 20, "u")]
    fixed = {"accountid", *(n for n, _, _ in RESERVED_WIDTHS)}
    plan = plan_existing_table(physical, (), [("flag", "boolean")], fixed=fixed)
    assert plan.fits and plan.add_overflow_column
    assert {f"u{i:04d}" for i in range(20)} <= set(plan.evicted)  # the widest go first
    assert not fixed & set(plan.evicted)
    assert set(plan.evicted) <= plan.overflow
    # A table that fits is left alone.
    small = plan_existing_table(physical[:100], (), [], fixed=fixed)
    assert small.evicted == () and small.fits
