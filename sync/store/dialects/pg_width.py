"""How wide a PostgreSQL mirror row can get, and which columns move to `_dv_overflow`. Pure.

PostgreSQL stores a row (a heap tuple) inside one 8 KB page: at most `MAX_TUPLE_BYTES` (8,160)
after alignment, and a table has at most `MAX_COLUMNS` (1,600) columns, dropped ones included.
Fixed-width values (timestamptz, bigint, uuid, …) always stay in the row. A variable-length
value (text, numeric, jsonb, arrays) longer than `TOAST_INLINE_MAX` bytes is moved out of line
by TOAST when the row is too big and leaves an 18-byte pointer; a shorter one is never moved. So
in the worst case each variable-length column costs `TOAST_INLINE_MAX` bytes in the row, which is
what `row_bytes` counts: CREATE TABLE accepts a table that INSERT would then refuse ("row is too
big"), so the check is done here, before the table is made.

`plan_overflow` keeps a mirror table within both limits by storing some columns as keys of one
jsonb column, `_dv_overflow` (store.dialects.pg_wide writes it and its unpacking view):

* a new table moves its widest columns first (ties by name), as few as it takes;
* an existing table keeps every column where it is (a column in overflow stays there); a column
  added by schema drift becomes a real column while the row still fits, else goes to overflow.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sync.store.layout import SqlType

MAX_TUPLE_BYTES = 8160  # MaxHeapTupleSize: BLCKSZ 8192 - MAXALIGN(page header + line pointer)
MAX_COLUMNS = 1600  # MaxHeapAttributeNumber, dropped columns included
MAX_VIEW_COLUMNS = 1664  # MaxTupleAttributeNumber: a SELECT list (the view) cannot pass it
TUPLE_HEADER_BYTES = 23  # HeapTupleHeaderData before the null bitmap
MAXALIGN = 8
# A variable-length value of up to 24 bytes (MAXALIGN(TOAST_POINTER_SIZE)) is never moved out of
# line; a longer one becomes an 18-byte TOAST pointer. Short values have a 1-byte header and no
# alignment.
TOAST_INLINE_MAX = 24
VARLENA = (TOAST_INLINE_MAX, 1)

OVERFLOW_COLUMN = "_dv_overflow"

# (worst-case bytes in the row, alignment) of each mirror type as PostgreSQL stores it
# (store.dialects.postgres.COLUMN_TYPE): pg_type's typlen and typalign.
TYPE_WIDTH: dict[SqlType, tuple[int, int]] = {
    "boolean": (1, 1),
    "integer": (4, 4),
    "date": (4, 4),
    "bigint": (8, 8),
    "float": (8, 8),
    "timestamp": (8, 8),
    "uuid": (16, 1),
    "text": VARLENA,
    "numeric": VARLENA,
    "choices": VARLENA,  # integer[]
}
# The reserved columns every mirror table ends with (store.dialects.postgres.create_table).
RESERVED_WIDTHS: tuple[tuple[str, int, int], ...] = (
    ("_dv_version", 8, 8),
    ("_dv_synced_at", 8, 8),
    ("_dv_deleted_at", 8, 8),
    ("_dv_commit_seq", 8, 8),
)
# The columns a history table (store.dialects.history_sql.create_history_sql) ends with instead:
# it has no `_dv_deleted_at` but its validity and operation (a short text: 'upsert', 'delete').
HISTORY_WIDTHS: tuple[tuple[str, int, int], ...] = (
    ("_dv_version", 8, 8),
    ("_dv_valid_from", 8, 8),
    ("_dv_valid_to", 8, 8),
    ("_dv_op", *VARLENA),
    ("_dv_synced_at", 8, 8),
    ("_dv_commit_seq", 8, 8),
)


@dataclass(frozen=True, slots=True)
class Slot:
    """One attribute of the table as PostgreSQL lays it out; a dropped one takes no bytes in
    new rows but still counts toward the column limit and the null bitmap."""

    name: str
    size: int  # worst-case bytes in a row (pg_type.typlen, or TOAST_INLINE_MAX for varlena)
    align: int  # 1, 2, 4 or 8 (pg_type.typalign)
    dropped: bool = False


def slot_of(name: str, sql_type: SqlType) -> Slot:
    size, align = TYPE_WIDTH[sql_type]
    return Slot(name, size, align)


def pg_slot(name: str, typlen: int, typalign: str, *, dropped: bool = False) -> Slot:
    """A Slot from pg_attribute/pg_type: typlen -1 (varlena) or -2 (cstring) is variable."""
    align = {"c": 1, "s": 2, "i": 4, "d": 8}.get(typalign, 8)
    if typlen < 0:
        return Slot(name, TOAST_INLINE_MAX, 1, dropped)
    return Slot(name, typlen, align, dropped)


def _aligned(offset: int, align: int) -> int:
    return (offset + align - 1) // align * align


def row_bytes(slots: Sequence[Slot]) -> int:
    """The worst-case size of a row, as PostgreSQL checks it against MAX_TUPLE_BYTES: the
    header with a null bitmap (a bit per attribute, dropped ones too), then every live value at
    its alignment, the whole rounded up to MAXALIGN."""
    header = _aligned(TUPLE_HEADER_BYTES + (len(slots) + 7) // 8, MAXALIGN)
    offset = 0
    for slot in slots:
        if not slot.dropped:
            offset = _aligned(offset, slot.align) + slot.size
    return _aligned(header + offset, MAXALIGN)


def fits(slots: Sequence[Slot]) -> bool:
    return len(slots) <= MAX_COLUMNS and row_bytes(slots) <= MAX_TUPLE_BYTES


@dataclass(frozen=True)
class OverflowPlan:
    """Where the columns of a mirror table live."""

    overflow: frozenset[str]  # columns kept as keys of _dv_overflow (new and old)
    add_overflow_column: bool  # _dv_overflow must be added to the table
    fits: bool  # False: the table passes a limit even with every movable column in overflow
    width: int  # worst-case row bytes of the planned table
    # Columns of an existing table too wide for its rows (made before dvmirror had overflow):
    # their values move into the overflow and the columns are dropped.
    evicted: tuple[str, ...] = ()


def plan_new_table(
    columns: Sequence[tuple[str, SqlType]],
    primary_key: str,
    *,
    reserved: Sequence[tuple[str, int, int]] = RESERVED_WIDTHS,
    preset: Collection[str] = (),
) -> OverflowPlan:
    """The layout of a table about to be created: `columns` in table order (the key first),
    then the `reserved` columns. The widest non-key columns move to overflow until the row fits;
    the `preset` ones are in overflow from the start (a history table: the mirror's)."""
    tail = [Slot(name, size, align) for name, size, align in reserved]
    slots = [slot_of(name, sql_type) for name, sql_type in columns if name not in preset]
    if not preset and fits([*slots, *tail]):
        return OverflowPlan(frozenset(), False, True, row_bytes([*slots, *tail]))
    jsonb = Slot(OVERFLOW_COLUMN, *VARLENA)
    # Widest first; the name breaks ties, so the same columns give the same choice every time.
    order = sorted(
        (s for s in slots if s.name != primary_key), key=lambda s: (-s.size, -s.align, s.name)
    )
    moved: list[str] = []

    def without(names: Collection[str]) -> list[Slot]:
        gone = set(names)
        return [*(s for s in slots if s.name not in gone), *tail, jsonb]

    while True:
        layout = without(moved)
        width = row_bytes(layout)
        if fits(layout) or len(moved) == len(order):
            break
        # Move enough of the next columns to cover what is over, then measure again (padding
        # makes the saving of one column smaller than its size at times).
        over_bytes, over_count = width - MAX_TUPLE_BYTES, len(layout) - MAX_COLUMNS
        for slot in order[len(moved) :]:
            if over_bytes <= 0 and over_count <= 0:
                break
            moved.append(slot.name)
            over_bytes -= slot.size
            over_count -= 1
    # A smaller null bitmap and alignment can save more than the sizes: take back what fits.
    while moved:
        if not fits(without(moved[:-1])):
            break
        moved.pop()
    layout = without(moved)
    return OverflowPlan(frozenset([*moved, *preset]), True, fits(layout), row_bytes(layout))


def plan_existing_table(
    physical: Sequence[Slot],
    overflow: Collection[str],
    added: Sequence[tuple[str, SqlType]],
    *,
    fixed: Collection[str] = (),
) -> OverflowPlan:
    """The layout after schema drift: `physical` is the table as it is (every attribute, in
    order), `overflow` the columns already kept in `_dv_overflow`, `added` the new columns in
    order. Existing columns stay where they are; each new column is appended to the table while
    the row still fits, and otherwise goes to overflow (adding `_dv_overflow` when it is first
    needed).

    A table that does not fit as it is (made by a dvmirror without overflow, its rows refused
    since) has its widest columns evicted into the overflow, except the `fixed` ones (the key,
    the reserved columns); a dropped column still counts toward MAX_COLUMNS."""
    layout = list(physical)
    moved = set(overflow)
    has_jsonb = any(s.name == OVERFLOW_COLUMN and not s.dropped for s in layout)
    add_jsonb = False
    jsonb = Slot(OVERFLOW_COLUMN, *VARLENA)
    evicted: list[str] = []
    if not fits(layout if has_jsonb else [*layout, jsonb]):
        if not has_jsonb:
            layout.append(jsonb)
            has_jsonb = add_jsonb = True
        keep = {*fixed, OVERFLOW_COLUMN}
        order = sorted(
            (s for s in layout if not s.dropped and s.name not in keep),
            key=lambda s: (-s.size, -s.align, s.name),
        )
        while order and not fits(layout):
            over = row_bytes(layout) - MAX_TUPLE_BYTES
            if over <= 0:  # too many columns: dropping them would not lower the count
                break
            while order and over > 0:  # enough of the widest to cover what is over
                slot = order.pop(0)
                evicted.append(slot.name)
                over -= slot.size
            gone = set(evicted)
            layout = [Slot(s.name, s.size, s.align, s.dropped or s.name in gone) for s in layout]
        moved.update(evicted)
    for name, sql_type in added:
        candidate = [*layout, slot_of(name, sql_type)]
        if not has_jsonb:  # room must stay for _dv_overflow, should a later column need it
            if fits(candidate) and fits([*candidate, jsonb]):
                layout = candidate
                continue
            layout.append(jsonb)
            has_jsonb = add_jsonb = True
            candidate = [*layout, slot_of(name, sql_type)]
        if fits(candidate):
            layout = candidate
        else:
            moved.add(name)
    return OverflowPlan(
        frozenset(moved), add_jsonb, fits(layout), row_bytes(layout), tuple(evicted)
    )
