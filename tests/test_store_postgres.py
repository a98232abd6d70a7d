"""The PostgreSQL store on a real throwaway cluster: native types, exact values, one transaction
per page, deletions, drift, and the control tables in schema `dvmirror` (no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from sync.errors import HostileResponseError
from sync.governor.budget_store import SqlBudgetStore
from sync.mirror.typemap import build_schema
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.layout import TableSchema
from sync.store.migrate import current_revision, downgrade, head_revision, upgrade
from sync.store.mirror_tables import ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
K1, K2, K3 = (f"0000000{i}-0000-4000-8000-00000000000a" for i in (1, 2, 3))
T0, T1 = "2026-01-02T03:04:05.000000Z", "2026-01-02T03:05:00.000000Z"
MONEY_MAX = "922337203685477.5807"  # Dataverse Money: 4 decimals, the largest value
WIDE_DECIMAL = "-12345678901234567890.1234567891"


def make_row(table: TableSchema, etag: str, **values: Any) -> tuple[Any, ...]:
    """A row tuple in the schema's column order, then the raw ETag."""
    return (*(values.get(c.name) for c in table.columns), etag)


def schema(**types: Any) -> TableSchema:
    attrs: list[dict[str, Any]] = [
        {"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"}
    ]
    for name, kind in types.items():
        attrs.append(kind if isinstance(kind, dict) else {"AttributeType": kind})
        attrs[-1] = {"LogicalName": name, **attrs[-1]}
    entity = {"EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    return build_schema(entity | {"ChangeTrackingEnabled": True}, attrs, table="account")


@pytest.fixture(name="engine")
async def _engine(pg_url: str) -> AsyncIterator[Any]:
    engine = create_engine(pg_url)
    await upgrade(engine)
    await state.ensure(engine, "contoso_prod", "account", now=NOW)
    yield engine
    await engine.dispose()


async def fetch(pg_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def checkpoint(cursor: TableState) -> Any:
    def build(counts: PageCounts) -> list[Any]:
        return state.checkpoint_statements(
            "contoso_prod",
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


TYPES = {
    "revenue": "Money",
    "share": "Decimal",
    "ratio": "Double",
    "employees": "Integer",
    "big": "BigInt",
    "active": "Boolean",
    "modifiedon": "DateTime",
    "birthdate": {"AttributeType": "DateTime", "DateTimeBehavior": {"Value": "DateOnly"}},
    "tags": {"AttributeType": "Virtual", "AttributeTypeName": {"Value": "MultiSelectPicklistType"}},
    "name": "Memo",
}


async def test_native_types_hold_exact_values(engine: Any, pg_url: str) -> None:
    """Money/Decimal as numeric (every digit), timestamptz, date, uuid, boolean, bigint, double
    precision, multi-select as integer[] next to its label text; the mirror lives in schema
    `contoso_prod`, the control tables in schema `dvmirror`."""
    layout = await ensure_mirror(engine, "contoso_prod", schema(**TYPES), soft=False, now=NOW)
    assert layout.name == "contoso_prod.account"
    memo = "Ünïcode ✓ 👍 \u202eRTL \x00" + "x" * 4000
    values = {
        "accountid": K1, "revenue": MONEY_MAX, "share": WIDE_DECIMAL, "ratio": 0.1,
        "employees": 2147483647, "big": 9007199254740993, "active": True,
        "modifiedon": "2026-03-04T05:06:07Z", "birthdate": "1990-02-28",
        "tags": "100000000,100000002", "tags__label": "Red; Blue", "name": memo,
    }  # fmt: skip
    row = (*(values[c.name] for c in schema(**TYPES).columns), 'W/"123456789012"')
    await commit(
        engine, layout, TableState("backfill", next_link="https://x/n"), rows=[row], synced_at=T0
    )
    types = await fetch(
        pg_url,
        "SELECT column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = 'contoso_prod' AND table_name = 'account'",
    )
    declared = {r["column_name"]: (r["data_type"], r["udt_name"]) for r in types}
    assert declared["accountid"][1] == "uuid"
    assert declared["revenue"][1] == declared["share"][1] == "numeric"
    assert declared["ratio"][1] == "float8"
    assert declared["employees"][1] == "int4"
    assert declared["big"][1] == "int8"
    assert declared["active"][1] == "bool"
    assert declared["modifiedon"][1] == declared["_dv_synced_at"][1] == "timestamptz"
    assert declared["birthdate"][1] == "date"
    assert declared["tags"] == ("ARRAY", "_int4")
    assert declared["tags__label"][1] == declared["name"][1] == "text"
    assert declared["_dv_version"][1] == "int8"
    [stored] = await fetch(pg_url, 'SELECT * FROM "contoso_prod"."account"')
    assert stored["accountid"] == UUID(K1)
    assert stored["revenue"] == Decimal(MONEY_MAX) and str(stored["revenue"]) == MONEY_MAX
    assert str(stored["share"]) == WIDE_DECIMAL
    assert stored["ratio"] == 0.1
    assert (stored["employees"], stored["big"], stored["active"]) == (
        2147483647,
        9007199254740993,
        True,
    )
    assert stored["modifiedon"] == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert stored["birthdate"] == date(1990, 2, 28)
    assert stored["tags"] == [100000000, 100000002]
    assert stored["name"] == memo.replace("\x00", "")  # PostgreSQL text cannot hold U+0000
    assert stored["_dv_version"] == 123456789012
    assert stored["_dv_synced_at"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    control = await fetch(
        pg_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dvmirror'",
    )
    assert {"dv_sync_state", "_dv_deletions", "alembic_version"} <= {
        r["table_name"] for r in control
    }


async def test_page_and_checkpoint_commit_together_and_reruns_are_idempotent(
    engine: Any, pg_url: str
) -> None:
    layout = await ensure_mirror(
        engine, "contoso_prod", schema(name="String", revenue="Money"), soft=False, now=NOW
    )
    page = [(K1, "a", "1.10", 'W/"5"'), (K2, "b", None, 'W/"6"'), (K1, "a2", "1.20", 'W/"7"')]
    cursor = TableState("backfill", next_link="https://x/next", resync_started_at=NOW)
    await commit(engine, layout, cursor, rows=page, synced_at=T0)
    await commit(engine, layout, cursor, rows=page, synced_at=T0)
    stored = await fetch(
        pg_url,
        'SELECT accountid::text, name, revenue, _dv_version FROM "contoso_prod"."account" ORDER BY 1',
    )
    # A key twice in one page: the last version wins, as SQLite's row-by-row upsert does.
    assert [tuple(r) for r in stored] == [(K1, "a2", Decimal("1.20"), 7), (K2, "b", None, 6)]
    status = await state.load(engine, "contoso_prod", "account")
    assert status is not None
    assert (status.cursor.next_link, status.pages) == ("https://x/next", 2)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("Integer", "many"), ("Integer", 2**31), ("DateTime", "2026-13-45T00:00:00Z")],
)
async def test_a_refused_value_rolls_back_the_whole_page(
    engine: Any, pg_url: str, kind: str, value: Any
) -> None:
    """A value PostgreSQL refuses (wrong type, out of range, no such date) writes nothing from the
    page, checkpoint included, and is reported as a hostile page, which parks only its table."""
    layout = await ensure_mirror(engine, "contoso_prod", schema(field=kind), soft=False, now=NOW)
    good = 5 if kind == "Integer" else "2026-01-01T00:00:00Z"
    bad = [(K1, good, 'W/"1"'), (K2, value, 'W/"2"')]
    with pytest.raises(HostileResponseError, match="refused a value"):
        await commit(
            engine, layout, TableState("backfill", next_link="https://x/n"), rows=bad, synced_at=T0
        )
    assert await fetch(pg_url, 'SELECT * FROM "contoso_prod"."account"') == []
    status = await state.load(engine, "contoso_prod", "account")
    assert status is not None
    assert (status.cursor.phase, status.pages) == ("new", 0)


@pytest.mark.parametrize("soft", [False, True])
async def test_deletes_and_sweep_are_logged(engine: Any, pg_url: str, soft: bool) -> None:
    layout = await ensure_mirror(engine, "contoso_prod", schema(name="String"), soft=soft, now=NOW)
    cursor = TableState("delta", delta_link="https://x/d")
    three = [(K1, "a", 'W/"1"'), (K2, "b", 'W/"2"'), (K3, "c", 'W/"3"')]
    await commit(engine, layout, cursor, rows=three, synced_at=T0)
    counts = await commit(engine, layout, cursor, deleted_ids=[K1, K3], synced_at=T1)
    assert counts.deleted == 2
    # A full pass started at T1 re-saw K2 only through a touch: nothing else is left.
    await commit(engine, layout, cursor, rows=[(K2, "b", 'W/"2"')], synced_at=T1)
    counts = await commit(engine, layout, cursor, sweep_before=T1, synced_at=T1, count_rows=True)
    assert counts.row_count == 1
    live = await fetch(
        pg_url,
        'SELECT accountid::text FROM "contoso_prod"."account" WHERE _dv_deleted_at IS NULL',
    )
    assert [r[0] for r in live] == [K2]
    every = await fetch(pg_url, 'SELECT count(*) FROM "contoso_prod"."account"')
    assert every[0][0] == (3 if soft else 1)
    log = await fetch(
        pg_url, 'SELECT environment, "table", id FROM dvmirror._dv_deletions ORDER BY id'
    )
    assert [tuple(r) for r in log] == [
        ("contoso_prod", "account", K1),
        ("contoso_prod", "account", K3),
    ]


async def test_drift_adds_keeps_and_renames_columns(engine: Any, pg_url: str) -> None:
    """A new column is added, a removed one kept (written NULL from then on), a retyped one kept
    as `<col>__old_<type>` next to a new column of the new type."""
    old = schema(name="String", size="Integer", gone="String")
    first = await ensure_mirror(engine, "contoso_prod", old, soft=False, now=NOW)
    page = [make_row(old, 'W/"1"', accountid=K1, name="a", size=5, gone="x")]
    await commit(engine, first, TableState("delta"), rows=page, synced_at=T0)
    new = schema(name="String", size="Money", extra="Boolean")
    second = await ensure_mirror(engine, "contoso_prod", new, soft=False, now=NOW)
    assert [c.column.name for c in second.drift.retyped] == ["size"]
    assert [c.name for c in second.drift.added] == ["extra"]
    page = [make_row(new, 'W/"2"', accountid=K1, name="b", size="7.5", extra=True)]
    await commit(engine, second, TableState("delta"), rows=page, synced_at=T1)
    [row] = await fetch(pg_url, 'SELECT * FROM "contoso_prod"."account"')
    assert (row["name"], row["size"], row["size__old_integer"], row["extra"]) == (
        "b", Decimal("7.5"), 5, True,
    )  # fmt: skip
    assert row["gone"] is None


async def test_migrations_run_down_and_up_again(engine: Any) -> None:
    assert await current_revision(engine) == head_revision()
    await downgrade(engine, "base")
    assert await current_revision(engine) is None
    await upgrade(engine)
    assert await current_revision(engine) == head_revision()


async def test_daemons_add_to_one_request_budget_without_losing_a_count(pg_url: str) -> None:
    """Several daemons flush a tenant's daily counter at once: the row lock queues them, so the
    stored total is exactly what they all spent."""
    engines = [create_engine(pg_url) for _ in range(3)]
    try:
        await upgrade(engines[0])
        stores = [SqlBudgetStore(engine) for engine in engines]
        start = datetime(2026, 1, 2, tzinfo=UTC)
        await asyncio.gather(*(s.add("contoso", start, n) for s in stores for n in range(1, 21)))
        assert await stores[0].load("contoso") == (start, 3 * sum(range(1, 21)))
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_page_with_a_tombstone_and_the_recreated_row_keeps_the_row(
    engine: Any, pg_url: str
) -> None:
    layout = await ensure_mirror(engine, "contoso_prod", schema(name="String"), soft=True, now=NOW)
    cursor = TableState("delta", delta_link="https://x/d")
    await commit(engine, layout, cursor, rows=[(K1, "old", 'W/"1"')], synced_at=T0)
    await commit(
        engine, layout, cursor, rows=[(K1, "again", 'W/"9"')], deleted_ids=[K1], synced_at=T1
    )
    stored = await fetch(pg_url, 'SELECT name, _dv_deleted_at FROM "contoso_prod"."account"')
    assert [tuple(r) for r in stored] == [("again", None)]


async def test_run_pause_seconds_are_kept_and_summed(engine: Any) -> None:
    """dv_run_history.paused_seconds (migration 0006) keeps fractions; the console's 24 h sum
    and the table figures read them back on PostgreSQL as on SQLite."""
    from sync.console import figures, queries

    for paused in (2.75, 0.5):
        run = await state.start_run(engine, "contoso_prod", "account", "sync", now=NOW)
        await state.finish_run(
            engine, run, status="ok", now=NOW, throttled=1, paused_seconds=paused
        )
    raw = await queries.control_rows(engine, since=NOW - figures.WINDOW)
    (recent,) = [r for r in raw["recent"] if r["table_name"] == "account"]
    assert float(recent["paused_seconds"]) == pytest.approx(3.25)
    assert int(recent["throttled"]) == 2


async def test_console_reads_verify_runs(engine: Any) -> None:
    """The console's verify reads on PostgreSQL: the newest run per table in control_rows and a
    table's last 10 runs, newest first, in table_rows (timestamps back as UTC)."""
    from datetime import timedelta

    from sync.console import figures, queries
    from sync.verify.plan import Diff
    from sync.verify.runner import TableReport, record

    for n in range(12):
        at = NOW + timedelta(minutes=n)
        found = Diff(missing=["k1", "k2"]) if n == 11 else Diff()
        outcome = "mismatch" if n == 11 else "match"
        report = TableReport("contoso_prod", "account", at, level=3, outcome=outcome, found=found)
        await record(engine, report, at)
    raw = await queries.control_rows(engine, since=NOW - figures.WINDOW)
    (latest,) = raw["verify"]
    assert (latest["outcome"], latest["missing"]) == ("mismatch", 2)
    rows = await queries.table_rows(engine, "contoso_prod", "account", since=NOW)
    started = [figures.as_utc(r["started_at"]) for r in rows["verify_runs"]]
    assert started == [NOW + timedelta(minutes=n) for n in range(11, 1, -1)]
