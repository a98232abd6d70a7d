"""History mode on a wide PostgreSQL table (store.dialects.pg_history_wide): the history keeps
the mirror's `_dv_overflow` placement (and more when its own columns make the row too wide), its
view `<env>.<table>__history__wide` shows every column typed, and drift, replays, deletions,
sweeps and the upgrade of a table an older dvmirror made too wide keep every version's values."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.dialects.history_sql import HistorySql, create_history_sql
from sync.store.dialects.postgres import POSTGRES
from sync.store.history import HistoryWriter
from sync.store.layout import TableSchema
from sync.store.mirror_tables import DriftPlan, MirrorLayout, _ddl, ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page, execute_ddl
from tests.test_pg_wide import (
    ENV,
    FIXED_KINDS,
    K1,
    K2,
    NOW,
    T0,
    T1,
    T2,
    _engine,  # noqa: F401 - the fixture
    fetch,
    row_of,
    table_columns,
    typed,
    wide_schema,
)

pytestmark = pytest.mark.postgres
HISTORY_VIEW = f'"{ENV}"."account__history__wide"'
AS_OF = (
    f"SELECT * FROM {HISTORY_VIEW} WHERE _dv_op = 'upsert' AND _dv_valid_from <= $1 "
    "AND (_dv_valid_to IS NULL OR _dv_valid_to > $1)"
)


async def commit(
    engine: Any, layout: MirrorLayout, at: str, *rows: Any, fail: bool = False, **page: Any
) -> PageCounts:
    def checkpoint(counts: PageCounts) -> list[Any]:
        if fail:  # the process dies after the rows, before the checkpoint
            raise KeyboardInterrupt
        return state.checkpoint_statements(ENV, "account", TableState("delta"), now=NOW)

    write = PageWrite(rows=rows, synced_at=at, **page)
    return await commit_page(engine, layout.writer, write, observed_at=at, checkpoint=checkpoint)


async def columns_of(pg_url: str, relation: str) -> list[str]:
    found = await fetch(
        pg_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = $2 ORDER BY ordinal_position",
        ENV,
        relation,
    )
    return [r[0] for r in found]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_holds(table: TableSchema, got: Any, row: tuple[Any, ...]) -> None:
    for column, value in zip(table.columns, row, strict=False):
        want = typed(column.sql_type, value)
        assert got[column.name] == want, (column.name, column.sql_type, got[column.name], want)


async def versions(pg_url: str) -> list[tuple[str, int, str, bool]]:
    found = await fetch(
        pg_url,
        f"SELECT accountid::text AS k, _dv_version AS v, _dv_op AS op, _dv_valid_to IS NULL AS o "
        f'FROM "{ENV}"."account__history" ORDER BY 1, _dv_valid_from, _dv_op DESC',
    )
    return [(r["k"], r["v"], r["op"], r["o"]) for r in found]


async def test_a_wide_tables_history_keeps_every_value_through_its_view(
    engine: Any, pg_url: str
) -> None:
    table = wide_schema(1300)
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW, history=True)
    mirror = await table_columns(pg_url)
    history = await columns_of(pg_url, "account__history")
    assert "_dv_overflow" in history and len(history) <= 1600
    in_overflow = {c.name for c in table.columns} - set(mirror)
    assert len(in_overflow) > 100
    assert in_overflow <= {c.name for c in table.columns} - set(history)  # the same placement
    view = await columns_of(pg_url, "account__history__wide")
    assert {c.name for c in table.columns} | {"_dv_valid_from", "_dv_op"} <= set(view)

    rows = [row_of(table, K1, 0, 'W/"1"'), row_of(table, K2, 1, 'W/"2"')]
    with pytest.raises(KeyboardInterrupt):  # a crash inside the page: no history either
        await commit(engine, layout, T0, *rows, fail=True)
    assert await versions(pg_url) == []
    await commit(engine, layout, T0, *rows)
    for _ in range(2):  # a replayed page (a rerun after SIGKILL) adds no version
        assert (await commit(engine, layout, T0, *rows)).changed == 0
    assert await versions(pg_url) == [(K1, 1, "upsert", True), (K2, 2, "upsert", True)]
    got = {str(r["accountid"]): r for r in await fetch(pg_url, f"SELECT * FROM {HISTORY_VIEW}")}
    for row in rows:
        assert_holds(table, got[str(row[0])], row)
    raw = await fetch(pg_url, f'SELECT "_dv_overflow" AS o FROM "{ENV}"."account__history"')
    assert in_overflow & set(json.loads(raw[0]["o"], parse_float=Decimal))

    # A new version of K1 changes a column in overflow; the point-in-time read on the view sees
    # each version's values.
    column = next(c for c in table.columns if c.name in in_overflow and c.sql_type == "numeric")
    index = table.columns.index(column)
    changed = list(row_of(table, K1, 2, 'W/"3"'))
    changed[index] = "1.50"
    await commit(engine, layout, T1, tuple(changed))
    (before,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T0), K1)
    (after,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T1), K1)
    assert_holds(table, before, rows[0])
    assert_holds(table, after, tuple(changed))
    assert after[column.name] == Decimal("1.50")

    # A deletion (and a sweep) close the open version and keep the last values, overflow too.
    await commit(engine, layout, T2, deleted_ids=[K2])
    await commit(engine, layout, T2, keys_seen=[], sweep_before=T2)  # K1 was not seen: swept
    assert await versions(pg_url) == [
        (K1, 1, "upsert", False),
        (K1, 3, "upsert", False),
        (K1, 3, "delete", True),
        (K2, 2, "upsert", False),
        (K2, 2, "delete", True),
    ]
    deleted = await fetch(pg_url, f"SELECT * FROM {HISTORY_VIEW} WHERE _dv_op = 'delete'")
    by_key = {str(r["accountid"]): r for r in deleted}
    assert_holds(table, by_key[K2], rows[1])
    assert_holds(table, by_key[K1], tuple(changed))
    assert await fetch(pg_url, AS_OF, moment(T2)) == []


async def test_drift_and_an_older_dvmirrors_too_wide_table_keep_the_old_versions_values(
    engine: Any, pg_url: str
) -> None:
    """An older dvmirror made the mirror and its history with every column (CREATE TABLE
    accepts it) and wrote sparse rows. The columns the mirror moves into `_dv_overflow` leave
    the history too, the old versions' values with them; a column added later joins both
    overflows and the new versions carry it."""
    table = wide_schema(1200, FIXED_KINDS)
    columns = [(c.name, c.sql_type) for c in table.columns]
    legacy = _ddl(POSTGRES, ENV, table, DriftPlan(create=True, added=table.columns), NOW)
    legacy += create_history_sql("postgresql", ENV, "account", columns)
    await execute_ddl(engine, legacy, table="account")
    old_writer = POSTGRES.writer(ENV, "account", columns, (), soft=False)
    old_sql = HistorySql.build("postgresql", ENV, "account", columns)  # no placement
    old = MirrorLayout("x", HistoryWriter(old_writer, old_sql), DriftPlan())
    sparse = list(row_of(table, K1, 0, 'W/"1"'))
    sparse[400:] = [None] * (len(sparse) - 401) + [sparse[-1]]  # few values: the row fits
    await commit(engine, old, T0, tuple(sparse))
    assert await versions(pg_url) == [(K1, 1, "upsert", True)]

    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW, history=True)
    mirror = set(await table_columns(pg_url))
    history = set(await columns_of(pg_url, "account__history"))
    moved = {c for c, _ in columns} - mirror
    assert moved and "_dv_overflow" in history and moved <= {c for c, _ in columns} - history
    old_version = (await fetch(pg_url, f"SELECT * FROM {HISTORY_VIEW}"))[0]
    assert_holds(table, old_version, tuple(sparse))  # the old version's values, moved ones too
    full = row_of(table, K2, 1, 'W/"2"')
    await commit(engine, layout, T1, full)  # a full row now fits in both tables
    (got,) = await fetch(pg_url, f"SELECT * FROM {HISTORY_VIEW} WHERE accountid = $1", K2)
    assert_holds(table, got, full)

    # A column added at the source: no room left in the mirror's row, so both overflows.
    drifted = wide_schema(1200, FIXED_KINDS, new_added_note="Memo")
    again = await ensure_mirror(engine, ENV, drifted, soft=False, now=NOW, history=True)
    assert "new_added_note" not in await table_columns(pg_url)
    assert "new_added_note" not in await columns_of(pg_url, "account__history")
    assert "new_added_note" in await columns_of(pg_url, "account__history__wide")
    note = list(row_of(drifted, K1, 2, 'W/"3"'))
    note[[c.name for c in drifted.columns].index("new_added_note")] = "a note"
    await commit(engine, again, T2, tuple(note))
    (latest,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T2), K1)
    assert latest["new_added_note"] == "a note" and latest["_dv_version"] == 3
    assert_holds(drifted, latest, tuple(note))
    (first,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T0), K1)
    assert_holds(table, first, tuple(sparse)) and first["new_added_note"] is None
    # The next start changes nothing, and the history's layout with it.
    before = await columns_of(pg_url, "account__history")
    third = await ensure_mirror(engine, ENV, drifted, soft=False, now=NOW, history=True)
    assert not third.drift.changed and await columns_of(pg_url, "account__history") == before
    assert (await commit(engine, third, T2, tuple(note))).changed == 0
    assert len(await versions(pg_url)) == 3


async def test_a_retyped_column_in_overflow_keeps_the_old_versions_values_under_its_archive(
    engine: Any, pg_url: str
) -> None:
    table = wide_schema(1300)
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW, history=True)
    physical = set(await columns_of(pg_url, "account__history"))
    first = row_of(table, K1, 0, 'W/"1"')
    await commit(engine, layout, T0, first)
    column = next(
        c
        for i, c in enumerate(table.columns)
        if c.name not in physical and c.sql_type == "numeric" and first[i] is not None
    )
    archive = f"{column.name}__old_numeric"
    retyped = TableSchema(
        table.table,
        table.entity_set,
        table.primary_key,
        True,
        tuple(
            c.__class__(c.name, c.source_key, "text", c.attribute, "String")
            if c.name == column.name
            else c
            for c in table.columns
        ),
    )
    second = await ensure_mirror(engine, ENV, retyped, soft=False, now=NOW, history=True)
    assert [t.column.name for t in second.drift.retyped] == [column.name]
    assert archive in await columns_of(pg_url, "account__history__wide")
    changed = list(row_of(retyped, K1, 0, 'W/"2"'))
    changed[table.columns.index(column)] = "now text"
    await commit(engine, second, T1, tuple(changed))
    (old,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T0), K1)
    (new,) = await fetch(pg_url, AS_OF + " AND accountid = $2", moment(T1), K1)
    old_value = typed("numeric", first[table.columns.index(column)])
    assert (old[archive], old[column.name]) == (old_value, None)
    assert (new[column.name], new["_dv_version"]) == ("now text", 2)
