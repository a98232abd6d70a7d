"""Wide tables on a real PostgreSQL server: the width model holds where PostgreSQL says "row is
too big", a 1,200-column table keeps its widest columns in `_dv_overflow` and its view
`<env>.<table>__wide` shows every column typed and exact, and schema drift adds columns to the
overflow once the row is full (store.dialects.pg_wide, store.dialects.pg_width)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sync.errors import StoreError
from sync.mirror.typemap import build_schema
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.dialects.pg_wide import _view_sql, view_name
from sync.store.dialects.pg_width import Slot, fits, slot_of
from sync.store.dialects.postgres import POSTGRES
from sync.store.layout import SqlType, TableSchema
from sync.store.migrate import upgrade
from sync.store.mirror_tables import DriftPlan, MirrorLayout, _ddl, ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page, execute_ddl

pytestmark = pytest.mark.postgres

ENV = "contoso_prod"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T0, T1, T2 = (f"2026-01-02T03:0{i}:05.000000Z" for i in (4, 5, 6))
K1, K2 = (f"0000000{i}-0000-4000-8000-00000000000a" for i in (1, 2))
DATE_ONLY = {"AttributeType": "DateTime", "DateTimeBehavior": {"Value": "DateOnly"}}
MULTI = {"AttributeType": "Virtual", "AttributeTypeName": {"Value": "MultiSelectPicklistType"}}
KINDS: tuple[Any, ...] = (
    "DateTime", "Money", "Decimal", "BigInt", "Double", "Integer", "Boolean", "String",
    DATE_ONLY, "Uniqueidentifier", MULTI, "Memo",
)  # fmt: skip
# Values at the edges, per mirror type, as the Web API sends them (decimals as exact text).
EDGES: dict[SqlType, tuple[Any, ...]] = {
    "timestamp": ("2026-03-04T05:06:07Z", "1753-01-01T00:00:00.123Z", "9999-12-31T23:59:59Z"),
    "numeric": ("922337203685477.5807", "-12345678901234567890.1234567891", "0.0000000001"),
    "bigint": (9007199254740993, -9223372036854775808, 0),
    "float": (0.1, -1e-300, 1.7976931348623157e308),
    "integer": (2147483647, -2147483648, 0),
    "boolean": (True, False, True),
    "text": ('quote " backslash \\ tab \t Ünïcode ✓ 👍 \u202e', "x" * 4000, "{}"),
    "date": ("1753-01-01", "9999-12-31", "2024-02-29"),
    "uuid": ("ffffffff-ffff-4fff-bfff-ffffffffffff", K2, "00000000-0000-0000-0000-000000000000"),
    "choices": ("100000000,100000002", "-1", "2147483647,0"),
}


# Fixed-width types only (moments, numbers, GUIDs): nothing TOAST could move out of the row.
FIXED_KINDS: tuple[Any, ...] = ("DateTime", "BigInt", "Double", "Uniqueidentifier")


def wide_schema(count: int, kinds: tuple[Any, ...] = KINDS, **more: Any) -> TableSchema:
    attrs: list[dict[str, Any]] = [
        {"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"}
    ]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        attrs.append(
            {"LogicalName": f"new_col{i:04d}"}
            | (kind if isinstance(kind, dict) else {"AttributeType": kind})
        )
    for name, kind in more.items():
        attrs.append(
            {"LogicalName": name} | (kind if isinstance(kind, dict) else {"AttributeType": kind})
        )
    entity = {"EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    return build_schema(entity | {"ChangeTrackingEnabled": True}, attrs, table="account")


def row_of(table: TableSchema, key: str, variant: int, etag: str) -> tuple[Any, ...]:
    """A row with an edge value in every column (variant picks which), NULL in every fifth."""
    values: list[Any] = [key]
    for index, column in enumerate(table.columns[1:]):
        if column.name.endswith("__label"):
            values.append(f"label {variant}")
        elif (index + variant) % 5 == 0:
            values.append(None)
        else:
            values.append(EDGES[column.sql_type][(index + variant) % 3])
    return (*values, etag)


def typed(sql_type: str, value: Any) -> Any:
    """What asyncpg returns for a mirrored value of `sql_type`."""
    if value is None:
        return None
    if sql_type == "timestamp":
        return datetime.fromisoformat(value)
    if sql_type == "numeric":
        return Decimal(value)
    if sql_type == "date":
        return date.fromisoformat(value)
    if sql_type == "uuid":
        return UUID(value)
    if sql_type == "choices":
        return [int(v) for v in value.split(",")]
    return value


@pytest.fixture(name="engine")
async def _engine(pg_url: str) -> AsyncIterator[Any]:
    engine = create_engine(pg_url)
    await upgrade(engine)
    await state.ensure(engine, ENV, "account", now=NOW)
    yield engine
    await engine.dispose()


async def fetch(pg_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def commit(engine: Any, layout: MirrorLayout, synced_at: str, *rows: Any) -> PageCounts:
    def checkpoint(counts: PageCounts) -> list[Any]:
        return state.checkpoint_statements(
            ENV, "account", TableState("delta"), now=NOW, upserted=counts.upserted,
            deleted=counts.deleted, row_count=counts.row_count,
        )  # fmt: skip

    write = PageWrite(rows=rows, synced_at=synced_at)
    return await commit_page(
        engine, layout.writer, write, observed_at=synced_at, checkpoint=checkpoint
    )


async def table_columns(pg_url: str) -> list[str]:
    found = await fetch(
        pg_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = $2 ORDER BY ordinal_position",
        ENV,
        "account",
    )
    return [r[0] for r in found]


async def view_rows(pg_url: str) -> dict[str, dict[str, Any]]:
    found = await fetch(pg_url, f'SELECT * FROM "{ENV}"."account__wide"')
    return {str(r["accountid"]): dict(r) for r in found}


def assert_view_holds(table: TableSchema, got: dict[str, Any], row: tuple[Any, ...]) -> None:
    for column, value in zip(table.columns, row, strict=False):
        want = typed(column.sql_type, value)
        assert got[column.name] == want, (column.name, column.sql_type, got[column.name], want)


async def probe(pg_url: str, kind: str, count: int, value: str) -> str:
    """Insert a row of `count` columns of `kind` (one of them NULL, so the row has a null
    bitmap) into a fresh table; "ok" or PostgreSQL's error."""
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute("DROP TABLE IF EXISTS probe")
        columns = ", ".join(f"c{i} {kind}" for i in range(count))
        await conn.execute(f"CREATE TABLE probe (id uuid PRIMARY KEY, {columns})")
        values = ", ".join([value] * (count - 1) + ["NULL"])
        try:
            await conn.execute(f"INSERT INTO probe VALUES (gen_random_uuid(), {values})")
        except asyncpg.PostgresError as exc:
            return str(exc)
        return "ok"
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("sql_type", "pg_type", "value"),
    [
        ("timestamp", "timestamptz", "now()"),
        ("bigint", "bigint", "1"),
        ("uuid", "uuid", "gen_random_uuid()"),
        # 23 characters: the longest text TOAST never moves out of the row.
        ("text", "text", "repeat('x', 23)"),
    ],
)
async def test_the_width_model_is_safe_and_at_most_one_column_cautious(
    pg_url: str, sql_type: SqlType, pg_type: str, value: str
) -> None:
    count = 1
    while fits([slot_of("id", "uuid"), *(slot_of(f"c{i}", sql_type) for i in range(count + 1))]):
        count += 1
    assert await probe(pg_url, pg_type, count, value) == "ok"
    assert await probe(pg_url, pg_type, count + 1, value) == "ok"  # the model's one-column margin
    refused = await probe(pg_url, pg_type, count + 2, value)
    assert refused.startswith("row is too big"), refused
    assert not fits([Slot("id", 16, 1), *(slot_of(f"c{i}", sql_type) for i in range(count + 2))])


@pytest.mark.parametrize(
    ("count", "kinds", "moved_types"),
    [
        (1200, KINDS, {"numeric", "text", "choices"}),
        (1550, FIXED_KINDS, {"uuid", "timestamp", "bigint", "float"}),
    ],
    ids=["mixed", "fixed_width"],
)
async def test_a_wide_table_keeps_its_widest_columns_in_overflow_and_the_view_shows_all(
    engine: Any, pg_url: str, count: int, kinds: tuple[Any, ...], moved_types: set[str]
) -> None:
    table = wide_schema(count, kinds)
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW)
    physical = await table_columns(pg_url)
    assert "_dv_overflow" in physical and len(physical) < len(table.columns)
    rows = [row_of(table, K1, 0, 'W/"1"'), row_of(table, K2, 1, 'W/"2"')]
    counts = await commit(engine, layout, T0, *rows)
    assert (counts.upserted, counts.changed) == (2, 2)
    got = await view_rows(pg_url)
    for row in rows:
        assert_view_holds(table, got[str(row[0])], row)
    # Moments in the jsonb are ISO-8601 UTC text, numbers JSON numbers with every digit.
    moved = [c for c in table.columns if c.name not in physical]
    assert moved_types <= {c.sql_type for c in moved}
    raw = await fetch(pg_url, f'SELECT "_dv_overflow" AS o FROM "{ENV}"."account" ORDER BY 1')
    packed = json.loads(raw[0]["o"], parse_float=Decimal)
    for column in moved:
        value = rows[0][table.columns.index(column)]
        if value is None:
            assert column.name not in packed  # a NULL is an absent key
        elif column.sql_type == "numeric":
            assert packed[column.name] == Decimal(value)  # a JSON number, every digit
        elif column.sql_type == "choices":
            assert packed[column.name] == [int(v) for v in value.split(",")]
        elif column.sql_type == "timestamp":  # ISO-8601 in UTC
            assert packed[column.name].endswith("Z")
            assert datetime.fromisoformat(packed[column.name]) == datetime.fromisoformat(value)
        elif column.sql_type == "float":
            assert float(packed[column.name]) == value
        else:
            assert packed[column.name] == value, (column.name, packed[column.name], value)
    assert set(packed) <= {c.name for c in moved}
    # The same page again changes nothing: no new commit number for the rows.
    again = await commit(engine, layout, T1, *rows)
    assert again.changed == 0
    changed = list(rows[0])
    column = next(c for c in moved if c.sql_type in {"numeric", "bigint"})
    changed[table.columns.index(column)] = "1.50" if column.sql_type == "numeric" else 15
    assert (await commit(engine, layout, T1, tuple(changed))).changed == 1
    assert_view_holds(table, (await view_rows(pg_url))[K1], tuple(changed))


async def test_drift_adds_columns_to_the_overflow_once_the_row_is_full_and_keeps_the_rest(
    engine: Any, pg_url: str
) -> None:
    table = wide_schema(1200)
    first = await ensure_mirror(engine, ENV, table, soft=False, now=NOW)
    before = await table_columns(pg_url)
    await commit(engine, first, T0, row_of(table, K1, 0, 'W/"1"'))
    # Two new columns at the source, and a column in overflow changes its type to text.
    moved_column = next(c for c in table.columns if c.name not in before and c.sql_type != "text")
    moved, archive = moved_column.name, f"{moved_column.name}__old_{moved_column.sql_type}"
    retyped = wide_schema(1200, new_added_when=DATE_ONLY, new_added_money="Money")
    retyped_columns = tuple(
        c.__class__(c.name, c.source_key, "text", c.attribute, "String") if c.name == moved else c
        for c in retyped.columns
    )
    drifted = TableSchema(
        retyped.table, retyped.entity_set, retyped.primary_key, True, retyped_columns
    )
    second = await ensure_mirror(engine, ENV, drifted, soft=False, now=NOW)
    assert sorted(c.name for c in second.drift.added) == ["new_added_money", "new_added_when"]
    assert [t.column.name for t in second.drift.retyped] == [moved]
    after = await table_columns(pg_url)
    assert after[: len(before)] == before  # nothing moved out of the table or into it
    assert "new_added_money" not in after  # 24 bytes: no room left
    assert "new_added_when" in after  # a date (4 bytes) still fits in what the row has left
    page = row_of(drifted, K2, 1, 'W/"2"')
    await commit(engine, second, T1, page)
    got = await view_rows(pg_url)
    assert_view_holds(drifted, got[K2], page)
    first_row = row_of(table, K1, 0, 'W/"1"')
    old_value = typed(moved_column.sql_type, first_row[table.columns.index(moved_column)])
    assert old_value is not None and got[K1][archive] == old_value  # kept under the archive
    assert got[K1]["new_added_when"] is None
    # Rewriting K1 keeps its archived value; the layout is the same on the next start.
    await commit(engine, second, T2, row_of(drifted, K1, 2, 'W/"3"'))
    assert (await view_rows(pg_url))[K1][archive] == old_value
    third = await ensure_mirror(engine, ENV, drifted, soft=False, now=NOW)
    assert not third.drift.changed and await table_columns(pg_url) == after


async def test_a_table_that_fits_has_no_overflow_and_no_view(engine: Any, pg_url: str) -> None:
    table = wide_schema(200)
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW)
    assert "_dv_overflow" not in await table_columns(pg_url)
    await commit(engine, layout, T0, row_of(table, K1, 0, 'W/"1"'))
    views = await fetch(pg_url, "SELECT viewname FROM pg_views WHERE schemaname = $1", ENV)
    assert views == []


async def test_a_table_made_too_wide_before_overflow_existed_gives_its_widest_columns_to_it(
    engine: Any, pg_url: str
) -> None:
    """An older dvmirror created every column (CREATE TABLE accepts it) and then parked the
    table: only rows with enough NULLs were written. Now the widest columns move, values and
    all, into `_dv_overflow`, and full rows are written."""
    table = wide_schema(1200, FIXED_KINDS)
    legacy = _ddl(POSTGRES, ENV, table, DriftPlan(create=True, added=table.columns), NOW)
    await execute_ddl(engine, legacy, table="account")
    sparse = list(row_of(table, K1, 0, 'W/"1"'))
    sparse[400:] = [None] * (len(sparse) - 401) + [sparse[-1]]  # few values: the row fits
    old_layout = MirrorLayout(
        "contoso_prod.account",
        POSTGRES.writer(
            ENV, "account", [(c.name, c.sql_type) for c in table.columns], (), soft=False
        ),
        DriftPlan(),
    )
    await commit(engine, old_layout, T0, tuple(sparse))
    with pytest.raises(Exception, match="row is too big"):  # what parked it
        await commit(engine, old_layout, T0, row_of(table, K2, 1, 'W/"2"'))
    layout = await ensure_mirror(engine, ENV, table, soft=False, now=NOW)
    physical = await table_columns(pg_url)
    assert "_dv_overflow" in physical and len(physical) < len(table.columns)
    full = row_of(table, K2, 1, 'W/"2"')
    await commit(engine, layout, T1, full)
    got = await view_rows(pg_url)
    assert_view_holds(table, got[K1], tuple(sparse))
    assert_view_holds(table, got[K2], full)


def test_the_view_keeps_its_columns_in_place_and_is_not_made_past_1664_columns() -> None:
    """Plain values: PostgreSQL lets a view gain columns only at its end, and a SELECT list
    holds at most 1,664 entries."""
    physical = ["accountid", "name", "new_added"]
    overflow = {"wide_a": "numeric", "wide_b": "choices"}
    current = ["accountid", "name", "wide_a", "wide_b"]
    create, comment = _view_sql(ENV, "account", physical, overflow, current, rebuild=False)
    select = create.split(" AS SELECT ", 1)[1]
    assert select.index('"wide_b"') < select.index('"new_added"')  # appended, not inserted
    assert """("_dv_overflow" ->> 'wide_a')::numeric AS "wide_a",""" in select
    assert comment.startswith("COMMENT ON VIEW")
    rebuilt = _view_sql(ENV, "account", physical, overflow, current, rebuild=True)
    assert rebuilt[0].startswith("DROP VIEW")
    many = {f"c{i}": "bigint" for i in range(1700)}
    assert _view_sql(ENV, "account", physical, many, [], rebuild=False) == []
    assert view_name("a" * 60) != "a" * 63 and len(view_name("a" * 60)) <= 63


async def test_views_of_a_data_team_survive_drift_and_a_type_change_says_what_blocks_it(
    engine: Any, pg_url: str
) -> None:
    table = wide_schema(1200)
    await ensure_mirror(engine, ENV, table, soft=False, now=NOW)
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(
            f'CREATE VIEW "{ENV}".team AS SELECT accountid, new_col0001 FROM "{ENV}".account__wide'
        )
    finally:
        await conn.close()
    grown = wide_schema(1200, new_added_money="Money")
    await ensure_mirror(engine, ENV, grown, soft=False, now=NOW)  # the view gains a column
    assert "new_added_money" in {
        r[0]
        for r in await fetch(
            pg_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
            "account__wide",
        )
    }
    money = next(c for c in grown.columns if c.name == "new_col0001")
    assert money.sql_type == "numeric"
    retyped = TableSchema(
        grown.table,
        grown.entity_set,
        grown.primary_key,
        True,
        tuple(
            c.__class__(c.name, c.source_key, "text", c.attribute, "String") if c is money else c
            for c in grown.columns
        ),
    )
    with pytest.raises(StoreError, match="other objects depend on it"):
        await ensure_mirror(engine, ENV, retyped, soft=False, now=NOW)
