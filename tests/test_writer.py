"""The store: typed mirror tables, schema drift, and one transaction per page (real SQLite files)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sync.bench.pipeline import run_pipeline_bench
from sync.errors import HostileResponseError, StoreError
from sync.mirror.typemap import build_schema
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.dialects.sqlite import SQLITE
from sync.store.layout import MirrorColumn, SqlType, TableSchema
from sync.store.migrate import upgrade
from sync.store.mirror_tables import (
    CatalogueEntry,
    DriftPlan,
    _ddl,
    ensure_mirror,
    plan_drift,
    type_change_note,
)
from sync.store.writer import PageCounts, PageWrite, commit_page, execute_ddl, quote_ident

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
K1, K2, K3 = (f"0000000{i}-0000-4000-8000-000000000000" for i in (1, 2, 3))
T0, T1, T2 = (
    "2026-01-02T03:04:05.000000Z",
    "2026-01-02T03:05:00.000000Z",
    "2026-01-02T03:06:00.000000Z",
)


def schema(**types: str) -> TableSchema:
    attrs = [{"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"}]
    attrs += [{"LogicalName": n, "AttributeType": t} for n, t in types.items()]
    entity = {
        "EntitySetName": "accounts",
        "PrimaryIdAttribute": "accountid",
        "ChangeTrackingEnabled": True,
    }
    return build_schema(entity, attrs, table="account")


@pytest.fixture(name="engine")
async def _engine(tmp_path: Path) -> Any:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")
    await upgrade(engine)
    await state.ensure(engine, "env", "account", now=NOW)
    yield engine
    await engine.dispose()


def rows(engine: Any) -> list[tuple[Any, ...]]:
    """The mirror's rows, every column but `_dv_commit_seq` (tests/test_commit_feed.py)."""
    path = engine.url.database
    with sqlite3.connect(path) as conn:
        cursor = conn.execute('SELECT * FROM "env__account" ORDER BY accountid')
        names = [d[0] for d in cursor.description]
        keep = [i for i, name in enumerate(names) if name != "_dv_commit_seq"]
        return [tuple(row[i] for i in keep) for row in cursor.fetchall()]


def checkpoint(cursor: TableState) -> Any:
    def build(counts: PageCounts) -> list[Any]:
        return state.checkpoint_statements(
            "env",
            "account",
            cursor,
            now=NOW,
            upserted=counts.upserted,
            deleted=counts.deleted,
            row_count=counts.row_count,
        )

    return build


async def commit(engine: Any, layout: Any, cursor: TableState, **page: Any) -> PageCounts:
    write = PageWrite(**page)
    return await commit_page(
        engine, layout.writer, write, observed_at=write.synced_at, checkpoint=checkpoint(cursor)
    )


async def test_page_upserts_and_checkpoint_commit_together(engine: Any) -> None:
    """Rows and the checkpoint land in one transaction; a rerun of the page is idempotent."""
    layout = await ensure_mirror(
        engine, "env", schema(name="String", revenue="Money"), soft=False, now=NOW
    )
    page = [(K1, "a", "1.10", 'W/"5"'), (K2, "b", None, 'W/"6"')]
    cursor = TableState("backfill", next_link="https://x/next", resync_started_at=NOW)
    await commit(engine, layout, cursor, rows=page, synced_at=T0)
    await commit(engine, layout, cursor, rows=page, synced_at=T0)
    assert rows(engine) == [(K1, "a", "1.10", 5, T0, None), (K2, "b", None, 6, T0, None)]
    stored = await state.load(engine, "env", "account")
    assert stored is not None
    assert (stored.cursor.next_link, stored.pages, stored.rows_upserted) == ("https://x/next", 2, 4)


async def test_refused_value_rolls_back_the_whole_page(engine: Any) -> None:
    """A value the store refuses writes nothing from the page, checkpoint included."""
    layout = await ensure_mirror(engine, "env", schema(employees="Integer"), soft=False, now=NOW)
    bad = [(K1, 5, 'W/"1"'), (K2, "many", 'W/"2"')]
    with pytest.raises(HostileResponseError, match="refused a value"):
        await commit(
            engine, layout, TableState("backfill", next_link="https://x/n"), rows=bad, synced_at=T0
        )
    assert rows(engine) == []
    stored = await state.load(engine, "env", "account")
    assert stored is not None
    assert (stored.cursor.phase, stored.pages) == ("new", 0)


@pytest.mark.parametrize("soft", [False, True])
async def test_deletes_and_sweep_are_logged(engine: Any, soft: bool) -> None:
    """Tombstones and rows not re-seen since a pass began are removed (or soft-deleted) and logged."""
    layout = await ensure_mirror(engine, "env", schema(name="String"), soft=soft, now=NOW)
    cursor = TableState("delta", delta_link="https://x/d")
    await commit(
        engine,
        layout,
        cursor,
        synced_at=T0,
        rows=[(K1, "a", None), (K2, "b", None), (K3, "c", None)],
    )
    counts = await commit(engine, layout, cursor, deleted_ids=[K1], synced_at=T1)
    assert counts.deleted == 1
    await commit(engine, layout, cursor, rows=[(K2, "b2", None)], synced_at=T2)
    counts = await commit(engine, layout, cursor, sweep_before=T2, synced_at=T2, count_rows=True)
    assert (counts.deleted, counts.row_count) == (1, 1)  # K3 was not seen since T2
    left = {r[0]: r[-1] for r in rows(engine)}
    assert left == ({K1: T1, K2: None, K3: T2} if soft else {K2: None})
    with sqlite3.connect(engine.url.database) as conn:
        logged = sorted(r[0] for r in conn.execute('SELECT id FROM "_dv_deletions"'))
    assert logged == [K1, K3]
    if soft:  # a soft-deleted row that comes back is revived
        await commit(engine, layout, cursor, rows=[(K1, "back", None)], synced_at=T2)
        assert {r[0]: r[-1] for r in rows(engine)}[K1] is None


async def test_drift_adds_keeps_and_renames_columns(engine: Any) -> None:
    """New columns are added, removed ones kept (NULL from then on), retyped ones kept as __old_."""
    first = await ensure_mirror(
        engine, "env", schema(name="String", score="Integer", gone="String"), soft=False, now=NOW
    )
    await commit(engine, first, TableState(), rows=[(K1, "gone", "a", 7, None)], synced_at=T0)
    second = await ensure_mirror(
        engine, "env", schema(name="String", score="Decimal", extra="Memo"), soft=False, now=NOW
    )
    drift = second.drift
    assert ([c.name for c in drift.added], drift.removed) == (["extra"], ("gone",))
    assert [(t.column.name, t.old_type, t.kept_as) for t in drift.retyped] == [
        ("score", "integer", "score__old_integer")
    ]
    assert "score integer→numeric" in (type_change_note(drift) or "")
    await commit(engine, second, TableState(), rows=[(K2, None, "b", "1.5", None)], synced_at=T1)
    with sqlite3.connect(engine.url.database) as conn:
        conn.row_factory = sqlite3.Row
        got = {r["accountid"]: dict(r) for r in conn.execute('SELECT * FROM "env__account"')}
        catalogue = {
            r["column_name"]: (r["sql_type"], r["removed_at"] is not None)
            for r in conn.execute("SELECT * FROM dv_mirror_columns")
        }
    assert got[K1]["score__old_integer"] == 7  # old values kept
    assert (got[K1]["gone"], got[K2]["gone"]) == ("gone", None)
    assert (got[K2]["score"], got[K2]["extra"]) == ("1.5", None)
    assert catalogue["score"] == ("numeric", False)
    assert catalogue["score__old_integer"] == ("integer", True)
    assert catalogue["gone"] == ("text", True)


def _column(name: str, sql_type: SqlType, attribute_id: str) -> MirrorColumn:
    return MirrorColumn(name, name, sql_type, name, "Integer", attribute_id=attribute_id)


ID_A, ID_B = "0b6a3c1e-0000-4000-8000-00000000000a", "0b6a3c1e-0000-4000-8000-00000000000b"


@pytest.mark.parametrize(
    ("entry", "column", "outcome"),
    [
        # Deleted and created again under the same name and type: a new MetadataId.
        (CatalogueEntry("rank", "Integer", "integer", False, attribute_id=ID_A), ID_B, "recreated"),
        # Deleted (kept, removed) and created again later: still the old attribute's values.
        (CatalogueEntry("rank", "Integer", "integer", True, attribute_id=ID_A), ID_B, "recreated"),
        (CatalogueEntry("rank", "Integer", "integer", False, attribute_id=ID_A), ID_A, "same"),
        (CatalogueEntry("rank", "Integer", "integer", True, attribute_id=ID_A), ID_A, "revived"),
        # Catalogued before ids were kept: the id is recorded, nothing moves.
        (CatalogueEntry("rank", "Integer", "integer", False), ID_B, "restamped"),
        # The service sent no id: nothing can be told, nothing moves.
        (CatalogueEntry("rank", "Integer", "integer", False, attribute_id=ID_A), "", "same"),
    ],
)
def test_drift_tells_a_recreated_attribute_by_its_metadata_id(
    entry: CatalogueEntry, column: str, outcome: str
) -> None:
    plan = plan_drift({"rank": entry}, [_column("rank", "integer", column)], table_exists=True)
    got = (
        "recreated"
        if plan.retyped and plan.retyped[0].recreated
        else "revived"
        if plan.revived
        else "restamped"
        if plan.restamped
        else "same"
    )
    assert got == outcome, plan
    if outcome == "recreated":
        assert plan.retyped[0].kept_as == "rank__old_integer"
        assert "deleted and created again" in (type_change_note(plan) or "")


def test_identifiers_are_refused_unless_safe() -> None:
    """Only safe identifiers reach SQL, always quoted."""
    assert quote_ident("_x_value__type") == '"_x_value__type"'
    for bad in ('a"b', "Name", "x; drop", "", "a b"):
        with pytest.raises(HostileResponseError):
            quote_ident(bad)


def test_pipeline_bench_prints_the_ratio() -> None:
    """The benchmark runs on a small number of rows and prints the pipeline/plain ratio."""
    out = StringIO()
    assert run_pipeline_bench(2_000, console=Console(file=out, width=120)) == 0
    assert "ratio:" in out.getvalue()


async def test_multiselect_catalogued_as_text_is_not_a_type_change_in_sqlite(engine: Any) -> None:
    """Multi-select columns were catalogued as `text` before they had a type of their own
    (`choices`); SQLite keeps the same `1,2` text in the same column, so an existing mirror only
    has its catalogue updated: no `__old_text` column, no resync, values kept."""
    tags = {"AttributeType": "Virtual", "AttributeTypeName": {"Value": "MultiSelectPicklistType"}}
    attrs = [
        {"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"},
        {"LogicalName": "tags", **tags},
    ]
    entity = {"EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    wanted = build_schema(entity, attrs, table="account")
    layout = await ensure_mirror(engine, "env", wanted, soft=False, now=NOW)
    await commit(
        engine, layout, TableState("delta"), rows=[(K1, "1,2", "A; B", 'W/"1"')], synced_at=T0
    )
    with sqlite3.connect(engine.url.database) as conn:  # as an older dvmirror catalogued it
        conn.execute("UPDATE dv_mirror_columns SET sql_type = 'text' WHERE column_name = 'tags'")
    again = await ensure_mirror(engine, "env", wanted, soft=False, now=NOW)
    assert not again.drift.retyped
    assert [c.name for c in again.drift.restamped] == ["tags"]
    assert rows(engine) == [(K1, "1,2", "A; B", 1, T0, None)]
    with sqlite3.connect(engine.url.database) as conn:
        catalogued = conn.execute(
            "SELECT sql_type FROM dv_mirror_columns WHERE column_name = 'tags'"
        ).fetchone()
    assert catalogued == ("choices",)


@pytest.mark.parametrize("soft", [False, True])
async def test_a_page_with_a_tombstone_and_the_recreated_row_keeps_the_row(
    engine: Any, soft: bool
) -> None:
    """Deleted at the source and created again with the same id, both in one delta page: the
    page's row is the current state, so the mirror keeps it (alive in soft mode too)."""
    layout = await ensure_mirror(engine, "env", schema(name="String"), soft=soft, now=NOW)
    cursor = TableState("delta", delta_link="https://x/d")
    await commit(engine, layout, cursor, rows=[(K1, "old", 'W/"1"')], synced_at=T0)
    counts = await commit(
        engine,
        layout,
        cursor,
        rows=[(K1, "again", 'W/"9"')],
        deleted_ids=[K1.upper(), K2],
        synced_at=T1,
    )
    assert counts.deleted == 0
    assert rows(engine) == [(K1, "again", 9, T1, None)]


async def test_a_failure_after_create_table_leaves_no_table_and_the_next_start_adopts_it(
    engine: Any,
) -> None:
    """DDL and its catalogue commit together on SQLite too (pysqlite begins no transaction
    before DDL): a failure after CREATE TABLE, as a kill before the catalogue would be, leaves
    no half-made table, so the next start creates and catalogues it (instead of parking it on
    "duplicate column name" for ever)."""
    table = schema(name="String")
    create = _ddl(SQLITE, "env", table, DriftPlan(create=True, added=table.columns), NOW)
    with pytest.raises(StoreError):
        await execute_ddl(engine, [*create, "SELECT no_such_column FROM dv_commits"], table="x")
    async with engine.connect() as conn:
        names = {r[0] for r in await conn.exec_driver_sql("SELECT name FROM sqlite_master")}
    assert "env__account" not in names
    layout = await ensure_mirror(engine, "env", table, soft=False, now=NOW)
    await commit(engine, layout, TableState("delta"), rows=[(K1, "n", 'W/"1"')], synced_at=T0)
    assert [r[:2] for r in rows(engine)] == [(K1, "n")]
