"""The placement of a wide table's history (store.dialects.pg_history_wide), pure: it takes the
mirror's overflow, moves more when its own columns make the row too wide, and follows the
mirror's moves on drift. tests/test_history_wide_postgres.py runs it on a real server."""

from __future__ import annotations

from sync.store.dialects import WideRequest
from sync.store.dialects.pg_history_wide import (
    HISTORY_TAIL,
    plan_existing_history,
    plan_new_history,
)
from sync.store.dialects.pg_width import Slot, plan_new_table, slot_of
from sync.store.layout import TableSchema
from tests.test_pg_wide import ENV, FIXED_KINDS, wide_schema


def request_of(table: TableSchema) -> WideRequest:
    columns = [(c.name, c.sql_type) for c in table.columns]
    return WideRequest(ENV, "account", table.primary_key, columns, {}, create=True)


def test_a_history_has_the_mirrors_overflow_and_more_when_its_own_columns_need_it() -> None:
    # The most fixed-width columns a mirror row holds without overflow: its history row (32
    # bytes wider at worst) does not, so the history moves a few columns of its own.
    count = 700
    while not plan_new_table(
        [(c.name, c.sql_type) for c in wide_schema(count + 1, FIXED_KINDS).columns], "accountid"
    ).overflow:
        count += 1
    table = wide_schema(count, FIXED_KINDS)
    columns = [(c.name, c.sql_type) for c in table.columns]
    assert not plan_new_table(columns, "accountid").overflow
    history = plan_new_history(request_of(table), frozenset())
    moved = {c for c, _ in columns} - set(history.physical)
    assert history.wide and history.add_jsonb and 1 <= len(moved) <= 4
    # A mirror with overflow: the history keeps all of it.
    wide = wide_schema(1300)
    mirror = plan_new_table([(c.name, c.sql_type) for c in wide.columns], "accountid").overflow
    kept = plan_new_history(request_of(wide), mirror)
    assert mirror <= {c.name for c in wide.columns} - set(kept.physical)
    assert "accountid" in kept.physical and kept.physical[-6:][0] == "_dv_version"


def test_an_existing_history_follows_the_mirrors_placement() -> None:
    tail = [Slot(name, 8, 8) for name in HISTORY_TAIL]
    narrow = [slot_of("accountid", "uuid"), slot_of("name", "text"), *tail]
    live = [("accountid", "uuid"), ("name", "text"), ("revenue", "numeric")]
    catalogue = {"accountid": "uuid", "name": "text"}
    added = WideRequest(ENV, "account", "accountid", live, catalogue, added=[live[2]])
    # A narrow table: the new column is a column of the history too, nothing wide (so SQLite
    # and narrow PostgreSQL tables are as before).
    plan = plan_existing_history(narrow, added, frozenset())
    assert not plan.wide and plan.physical[-1] == "revenue"
    # The mirror put the new column in its overflow: so does the history.
    plan = plan_existing_history(narrow, added, frozenset({"revenue"}))
    assert plan.wide and plan.add_jsonb and "revenue" not in plan.physical
    # The mirror moved `name` into its overflow (a table an older dvmirror made too wide): it
    # leaves the history's columns, its values with it.
    whole = WideRequest(ENV, "account", "accountid", live[:2], catalogue)
    plan = plan_existing_history(narrow, whole, frozenset({"name"}))
    assert plan.evicted == ("name",) and plan.add_jsonb and "name" not in plan.physical
    # Already wide: a column without a history column stays in the overflow.
    wide = [*narrow, Slot("_dv_overflow", 24, 1)]
    catalogue |= {"revenue": "numeric"}
    again = WideRequest(ENV, "account", "accountid", live, catalogue)
    plan = plan_existing_history(wide, again, frozenset({"revenue"}))
    assert plan.wide and not plan.add_jsonb and not plan.evicted
    assert plan.physical == ("accountid", "name", *HISTORY_TAIL)
