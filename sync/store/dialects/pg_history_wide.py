"""The history table of a wide PostgreSQL table: which columns it keeps in its own
`_dv_overflow`, and its view `<environment>.<table>__history__wide`.

A history row has the mirror's columns without `_dv_deleted_at` but with `_dv_valid_from`,
`_dv_valid_to` and `_dv_op` (pg_width.HISTORY_WIDTHS): up to 32 bytes wider in the worst case.
So the history takes the mirror's placement (every column the mirror keeps in overflow is in
the history's overflow too), measured with the same width model; when its own columns make the
row too wide, its widest columns move to the overflow as well (a new history table), or a new
column joins the overflow (drift). When the mirror moves columns into its overflow (a table an
older dvmirror made too wide), the history moves them too: the old versions' values go into the
history's `_dv_overflow` in the same DDL transaction and the columns are dropped.

As for the mirror, the table is the record: a live column that is not a column of the history
table is a key of its overflow (once it has `_dv_overflow`). The view unpacks every catalogued
column typed, like the mirror's `__wide` view, so a point-in-time query on it reads as on a
narrow history table. A table that fits has no overflow and its history none either.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from sync.logs import get_logger
from sync.store.dialects import Overflow, WideRequest
from sync.store.dialects.history_sql import history_table
from sync.store.dialects.pg_wide import (
    _evict,
    _move_key,
    _overflow_types,
    _view_sql,
    physical_slots,
    view_columns,
    view_name,
)
from sync.store.dialects.pg_width import (
    HISTORY_WIDTHS,
    OVERFLOW_COLUMN,
    VARLENA,
    Slot,
    plan_existing_table,
    plan_new_table,
)
from sync.store.identifiers import quote_ident

log = get_logger("dvmirror.store")

HISTORY_TAIL = tuple(name for name, _, _ in HISTORY_WIDTHS)


@dataclass(frozen=True)
class HistoryLayout:
    """Where a history table's columns will be: its own columns in order, and what changes."""

    physical: tuple[str, ...]  # the table's columns after the drift (no `_dv_overflow`)
    wide: bool  # it has (or gets) `_dv_overflow`
    add_jsonb: bool = False
    evicted: tuple[str, ...] = ()  # columns whose values move into the overflow, then dropped
    renamed: frozenset[str] = frozenset()  # retyped columns in overflow: old values to kept_as
    fits: bool = True  # False: too wide even with every movable column in overflow


def plan_new_history(request: WideRequest, mirror_overflow: Collection[str]) -> HistoryLayout:
    """A new history table: the mirror's overflow, and more if the history's columns need it.
    Pure."""
    live = [name for name, _ in request.columns]
    preset = [c for c in mirror_overflow if c in live]
    plan = plan_new_table(
        request.columns, request.primary_key, reserved=HISTORY_WIDTHS, preset=preset
    )
    physical = (*(c for c in live if c not in plan.overflow), *HISTORY_TAIL)
    wide = bool(plan.overflow)
    return HistoryLayout(physical, wide, add_jsonb=wide, fits=plan.fits)


def plan_existing_history(
    slots: Sequence[Slot], request: WideRequest, mirror_overflow: Collection[str]
) -> HistoryLayout:
    """An existing history table after this drift: `slots` as it is. Pure."""
    live = dict(request.columns)
    names = {s.name for s in slots if not s.dropped}
    has_jsonb = OVERFLOW_COLUMN in names
    retyped = dict(request.retyped)
    # Catalogued columns the history has no column for are keys of its overflow (once it has
    # one); a live column new to the catalogue is placed like the mirror places it.
    was = {c for c in request.catalogue if c not in names} if has_jsonb else set()
    renamed = frozenset(c for c in retyped if c in was)
    kept = was - renamed
    after_rename = {retyped.get(n, n) for n in names}
    # A live column the history has nowhere yet: new, retyped, or added while history was off.
    place = [(c, t) for c, t in live.items() if c not in after_rename and c not in kept]
    # Columns the mirror moved into its overflow leave the history's columns too.
    fixed = {request.primary_key, *HISTORY_TAIL, *retyped, *retyped.values()}
    forced = [c for c in live if c in names and c in mirror_overflow and c not in fixed]
    layout = [Slot(s.name, s.size, s.align, s.dropped or s.name in forced) for s in slots]
    add_jsonb = not has_jsonb and bool(forced or any(c in mirror_overflow for c, _ in place))
    if add_jsonb:
        layout.append(Slot(OVERFLOW_COLUMN, *VARLENA))
    named = [(c, t) for c, t in place if c not in mirror_overflow]
    plan = plan_existing_table(layout, kept, named, fixed=fixed)
    evicted = (*forced, *plan.evicted)
    gone = {*evicted, OVERFLOW_COLUMN}
    physical = [retyped.get(s.name, s.name) for s in slots if not s.dropped and s.name not in gone]
    physical += [c for c, _ in named if c not in plan.overflow]
    add_jsonb = add_jsonb or plan.add_overflow_column
    wide = has_jsonb or add_jsonb
    return HistoryLayout(tuple(physical), wide, add_jsonb, evicted, renamed, plan.fits)


async def plan_history_wide(
    conn: AsyncConnection, request: WideRequest, mirror_overflow: frozenset[str]
) -> Overflow:
    """Where the history of `request`'s table keeps its columns after this drift (`columns`:
    the live ones in its overflow), with the DDL to run before the history's own drift (its
    `_dv_overflow`, columns moved into it) and after it (the view). `mirror_overflow`: the
    mirror's overflow after this drift (Overflow.columns)."""
    environment, name = request.environment, history_table(request.table)
    target = f"{quote_ident(environment)}.{quote_ident(name)}"
    live = dict(request.columns)
    slots = await physical_slots(conn, environment, name)
    if slots is None:
        plan = plan_new_history(request, mirror_overflow)
    else:
        plan = plan_existing_history(slots, request, mirror_overflow)
    if not plan.fits:
        log.warning(
            "wide_history_over_limit",
            environment=environment,
            table=request.table,
            hint="even with its columns in _dv_overflow the history row passes PostgreSQL's limits",
        )
    if not plan.wide:
        return Overflow()
    retyped = dict(request.retyped)
    before = _evict(target, plan.evicted, {**request.catalogue, **live})
    before += [_move_key(target, c, retyped[c]) for c in sorted(plan.renamed)]
    if plan.add_jsonb:
        column = quote_ident(OVERFLOW_COLUMN)
        before.insert(0, f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {column} jsonb")
        before.append(
            f"COMMENT ON COLUMN {target}.{column} IS 'dvmirror: the columns this version has no "
            f"room for, typed; read them through the view {environment}.{view_name(name)}'"
        )
    current_view = [] if slots is None else await view_columns(conn, environment, name)
    if plan.evicted and current_view:  # a column the view reads cannot be dropped
        view = f"{quote_ident(environment)}.{quote_ident(view_name(name))}"
        before.insert(0, f"DROP VIEW IF EXISTS {view}")
        current_view = []
    rebuild = bool(plan.evicted) or any(
        request.catalogue.get(c) != live.get(c) for c, _ in request.retyped
    )
    known = {*request.catalogue, *live, *retyped.values()}  # the archives of this drift too
    unpacked = known - set(plan.physical) - {OVERFLOW_COLUMN}
    types = _overflow_types(request, unpacked)
    after = _view_sql(environment, name, plan.physical, types, current_view, rebuild=rebuild)
    stored = frozenset(c for c in unpacked if c in live)
    return Overflow(stored, tuple(before), tuple(after), plan.renamed)
