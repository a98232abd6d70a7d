"""History mode (sync.store.history) on real SQLite files and a real PostgreSQL cluster, through
the real page transaction (store.writer.commit_page): versions, replays, deletions (hard and
soft), a full pass's sweep, schema drift, turning history on for a filled mirror, retention,
a crash inside the page transaction and concurrent key ranges."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.config.loading import load_config
from sync.mirror.typemap import build_schema
from sync.runtime.daemon import Daemon
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.dialects import dialect_for
from sync.store.history import (
    HistoryPlan,
    HistoryWriter,
    plan_history,
    prune_history,
    retention_cutoff,
)
from sync.store.layout import TableSchema
from sync.store.migrate import upgrade
from sync.store.mirror_tables import MirrorLayout, ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page, write_page
from tests.cli import clean_env, run_cli
from tests.test_config_cli import SECRET, base_config

ENV = "contoso_prod"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CURSOR = TableState("delta", delta_link="https://x/d")


def key(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def web(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ATTRS = [
    {"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"},
    {"LogicalName": "name", "AttributeType": "String"},
    {"LogicalName": "modifiedon", "AttributeType": "DateTime"},
]


def schema(*extra: dict[str, str]) -> TableSchema:
    entity = {"EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    return build_schema(entity | {"ChangeTrackingEnabled": True}, [*ATTRS, *extra], table="account")


def row(
    n: int, name: str, version: int, modified: datetime | None = None, *extra: Any
) -> tuple[Any, ...]:
    """A row tuple in the schema's column order (key, modifiedon, name, extra columns), then
    its ETag."""
    return (key(n), web(modified) if modified else None, name, *extra, f'W/"{version}"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="engine")
async def _engine(store_url: str) -> AsyncIterator[Any]:
    engine = create_engine(store_url)
    await upgrade(engine)
    await state.ensure(engine, ENV, "account", now=NOW)
    yield engine
    await engine.dispose()


async def mirror(
    engine: Any,
    table: TableSchema | None = None,
    *,
    soft: bool = False,
    history: bool = True,
    now: datetime = NOW,
) -> MirrorLayout:
    return await ensure_mirror(engine, ENV, table or schema(), soft=soft, now=now, history=history)


async def commit(
    engine: Any, layout: MirrorLayout, at: datetime, *, fail: bool = False, **page: Any
) -> PageCounts:
    def checkpoint(counts: PageCounts) -> list[Any]:
        if fail:  # the process dies after the rows, before the checkpoint: nothing stays
            raise KeyboardInterrupt
        return state.checkpoint_statements(ENV, "account", CURSOR, now=NOW)

    write = PageWrite(synced_at=stamp(at), **page)
    return await commit_page(
        engine, layout.writer, write, observed_at=stamp(at), checkpoint=checkpoint
    )


def ref(engine: Any, table: str = "account__history") -> str:
    return dialect_for(engine).table_ref(ENV, table)


def moment(value: Any) -> str | None:
    """A stored moment as Web API text, either dialect."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return web(value)
    return str(value)


async def versions(engine: Any, n: int | None = None) -> list[tuple[Any, ...]]:
    """(key number, name, version, valid_from, valid_to, op) in key and time order."""
    where = " WHERE accountid = :k" if n is not None else ""
    sql = (
        "SELECT accountid, name, _dv_version, _dv_valid_from, _dv_valid_to, _dv_op "
        f"FROM {ref(engine)}{where} ORDER BY accountid, _dv_valid_from, _dv_valid_to IS NULL, _dv_valid_to"
    )
    params = {"k": key(n)} if n is not None else {}
    async with engine.connect() as conn:
        found = (await conn.execute(text(sql), params)).all()
    return [(int(str(r[0])[:8], 16), r[1], r[2], moment(r[3]), moment(r[4]), r[5]) for r in found]


async def as_of(engine: Any, when: datetime) -> dict[int, str]:
    """The README's point-in-time read."""
    if dialect_for(engine).name == "sqlite":
        at: Any = web(when)
    else:
        at = when
    sql = (
        f"SELECT accountid, name FROM {ref(engine)} WHERE _dv_op = 'upsert' "
        "AND _dv_valid_from <= :t AND (_dv_valid_to IS NULL OR _dv_valid_to > :t)"
    )
    async with engine.connect() as conn:
        found = (await conn.execute(text(sql), {"t": at})).all()
    return {int(str(r[0])[:8], 16): r[1] for r in found}


def t(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


# --- pure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "retyped", "expected"),
    [
        (None, [], HistoryPlan(create=True)),
        (["accountid", "name"], [], HistoryPlan(added=(("revenue", "numeric"),))),
        (["accountid", "name", "revenue"], [], HistoryPlan()),
        (
            ["accountid", "name", "revenue"],
            [("revenue", "revenue__old_text")],
            HistoryPlan(
                renamed=(("revenue", "revenue__old_text"),), added=(("revenue", "numeric"),)
            ),
        ),
        # The history table was made after the change: nothing to rename.
        (
            ["accountid", "name"],
            [("revenue", "revenue__old_text")],
            HistoryPlan(added=(("revenue", "numeric"),)),
        ),
    ],
)
def test_plan_history(
    existing: list[str] | None, retyped: list[tuple[str, str]], expected: HistoryPlan
) -> None:
    columns: list[tuple[str, Any]] = [
        ("accountid", "uuid"),
        ("name", "text"),
        ("revenue", "numeric"),
    ]
    assert plan_history(existing, columns, retyped) == expected


@pytest.mark.parametrize(
    ("options", "code", "fragment"),
    [
        ('history = true\nhistory_retention = "90d"', 0, ": ok"),
        ('history_retention = "90d"', 2, "history_retention needs history = true"),
        ('history = true\nhistory_retention = "soon"', 2, "is not an interval"),
    ],
)
def test_history_options_in_config_check(
    options: str, code: int, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "dvmirror.toml"
    extra = f"[tenants.environments.table_options.account]\n{options}"
    path.write_text(base_config(extra_env=extra))
    result = run_cli(
        "--config", path, "config", "check", env={"DVMIRROR_CLIENT_SECRET": SECRET}, cwd=tmp_path
    )
    assert result.returncode == code, result.stderr
    if code:
        [line] = [line for line in result.stderr.splitlines() if line]
        assert "table_options.account" in line and fragment in line, line
    else:
        assert fragment in result.stdout


def test_retention_cutoff() -> None:
    assert retention_cutoff(NOW, 86400) == "2026-01-01T03:04:05.000000Z"


# --- the store -----------------------------------------------------------------------------


async def test_versions_replays_and_a_point_in_time_read(engine: Any) -> None:
    layout = await mirror(engine)
    await commit(engine, layout, t(10), rows=[row(1, "a", 1, t(1)), row(2, "b", 1, None)])
    await commit(engine, layout, t(10), rows=[row(1, "a", 1, t(1)), row(2, "b", 1, None)])
    assert await versions(engine) == [
        (1, "a", 1, web(t(1)), None, "upsert"),  # valid from modifiedon
        (2, "b", 1, web(t(10)), None, "upsert"),  # no modifiedon: the sync time
    ]
    # A later version closes the open one; a replay of either page changes nothing.
    for _ in range(2):
        await commit(engine, layout, t(20), rows=[row(1, "a2", 2, t(15))])
        await commit(engine, layout, t(10), rows=[row(2, "b", 1, None)])
    assert await versions(engine, 1) == [
        (1, "a", 1, web(t(1)), web(t(15)), "upsert"),
        (1, "a2", 2, web(t(15)), None, "upsert"),
    ]
    assert await as_of(engine, t(5)) == {1: "a"}
    # When dvmirror recorded the open versions: the mirror rows' own stamp, in its format.
    recorded = f"SELECT _dv_synced_at FROM {ref(engine)} WHERE _dv_valid_to IS NULL"
    in_mirror = f"SELECT _dv_synced_at FROM {ref(engine, 'account')}"
    async with engine.connect() as conn:
        kept = sorted(str(r[0]) for r in await conn.execute(text(recorded)))
        synced = sorted(str(r[0]) for r in await conn.execute(text(in_mirror)))
    assert kept == synced
    assert await as_of(engine, t(16)) == {1: "a2", 2: "b"}
    assert await as_of(engine, t(0)) == {}


async def test_deletions_close_the_version_and_a_recreate_closes_the_deletion(engine: Any) -> None:
    layout = await mirror(engine)
    await commit(engine, layout, t(10), rows=[row(1, "a", 1, t(1)), row(2, "b", 1, t(1))])
    for _ in range(2):  # a replayed tombstone (and an unknown id) change nothing
        await commit(engine, layout, t(20), deleted_ids=[key(1), key(9)])
    # Created again under the same id with a modifiedon before dvmirror saw the deletion: the
    # new version begins at the sync time (versions never overlap).
    await commit(engine, layout, t(30), rows=[row(1, "again", 5, t(19))])
    await commit(engine, layout, t(40), rows=[row(1, "later", 6, t(35))])
    assert await versions(engine, 1) == [
        (1, "a", 1, web(t(1)), web(t(20)), "upsert"),
        (1, "a", 1, web(t(20)), web(t(30)), "delete"),
        (1, "again", 5, web(t(30)), web(t(35)), "upsert"),
        (1, "later", 6, web(t(35)), None, "upsert"),
    ]
    assert await as_of(engine, t(19)) == {1: "a", 2: "b"}
    assert await as_of(engine, t(25)) == {2: "b"}
    assert await as_of(engine, t(31)) == {1: "again", 2: "b"}


async def test_soft_deletes_and_revivals(engine: Any) -> None:
    layout = await mirror(engine, soft=True)
    await commit(engine, layout, t(10), rows=[row(1, "a", 1, t(1))])
    await commit(engine, layout, t(20), deleted_ids=[key(1)])
    await commit(engine, layout, t(21), deleted_ids=[key(1)])  # already soft-deleted
    await commit(engine, layout, t(30), rows=[row(1, "a", 1, t(1))])  # the same version, alive
    assert await versions(engine, 1) == [
        (1, "a", 1, web(t(1)), web(t(20)), "upsert"),
        (1, "a", 1, web(t(20)), web(t(30)), "delete"),
        (1, "a", 1, web(t(30)), None, "upsert"),
    ]


async def test_a_full_pass_adds_versions_only_for_changed_rows_and_sweeps_the_rest(
    engine: Any,
) -> None:
    layout = await mirror(engine)
    rows = [row(n, f"n{n}", 1, t(1)) for n in range(1, 6)]
    await commit(engine, layout, t(10), rows=rows)
    # The resync: three rows unchanged, one changed, one gone, one new; its last page sweeps.
    again = [*rows[:3], row(4, "n4b", 2, t(40)), row(7, "n7", 1, t(41))]
    await commit(engine, layout, t(50), rows=again[:3])
    await commit(engine, layout, t(51), rows=again[3:], sweep_before=stamp(t(50)))
    found = await versions(engine)
    assert [v for v in found if v[0] in (1, 2, 3)] == [
        (n, f"n{n}", 1, web(t(1)), None, "upsert") for n in (1, 2, 3)
    ]
    assert [v for v in found if v[0] in (4, 5, 7)] == [
        (4, "n4", 1, web(t(1)), web(t(40)), "upsert"),
        (4, "n4b", 2, web(t(40)), None, "upsert"),
        (5, "n5", 1, web(t(1)), web(t(51)), "upsert"),
        (5, "n5", 1, web(t(51)), None, "delete"),
        (7, "n7", 1, web(t(41)), None, "upsert"),
    ]


async def test_a_crash_inside_the_page_leaves_no_history_and_a_replay_no_duplicate(
    engine: Any,
) -> None:
    layout = await mirror(engine)
    page = {"rows": [row(1, "a", 1, t(1)), row(2, "b", 1, t(1))]}
    with pytest.raises(KeyboardInterrupt):
        await commit(engine, layout, t(10), fail=True, **page)
    assert await versions(engine) == []
    await commit(engine, layout, t(10), **page)
    await commit(engine, layout, t(11), **page)  # the page again after a restart
    assert [v[:3] for v in await versions(engine)] == [(1, "a", 1), (2, "b", 1)]
    with pytest.raises(KeyboardInterrupt):
        await commit(engine, layout, t(20), fail=True, deleted_ids=[key(1)])
    await commit(engine, layout, t(20), deleted_ids=[key(1)])
    await commit(engine, layout, t(21), deleted_ids=[key(1)])
    assert [v[5] for v in await versions(engine, 1)] == ["upsert", "delete"]


async def test_schema_drift_reaches_the_history_table(engine: Any) -> None:
    layout = await mirror(engine)
    await commit(engine, layout, t(10), rows=[row(1, "a", 1, t(1))])
    revenue = {"LogicalName": "revenue", "AttributeType": "Money"}
    wider = await mirror(engine, schema(revenue))
    assert [c.name for c in wider.drift.added] == ["revenue"]
    # The same version with the new column filled (a full pass): refreshed in place.
    await commit(engine, wider, t(20), rows=[row(1, "a", 1, t(1), "12.50")])
    # A new version carries it.
    await commit(engine, wider, t(30), rows=[row(1, "a2", 2, t(25), "99.00")])
    sql = f"SELECT _dv_version, revenue FROM {ref(engine)} ORDER BY _dv_valid_from"
    async with engine.connect() as conn:
        found = [(int(v), str(r)) for v, r in (await conn.execute(text(sql))).all()]
    assert found == [(1, "12.50"), (2, "99.00")]
    # A type change: the history keeps the old values beside the column, as the mirror does.
    retyped = await mirror(engine, schema({"LogicalName": "revenue", "AttributeType": "String"}))
    assert retyped.drift.retyped
    kept = retyped.drift.retyped[0].kept_as
    async with engine.connect() as conn:
        columns = await dialect_for(engine).existing_columns(conn, ENV, "account__history")
    assert columns is not None and {"revenue", kept} <= set(columns)
    await commit(engine, retyped, t(40), rows=[row(1, "a3", 3, t(35), "lots")])
    assert [v[2] for v in await versions(engine, 1)] == [1, 2, 3]


async def test_turning_history_on_seeds_the_current_rows(engine: Any) -> None:
    plain = await mirror(engine, history=False)
    await commit(engine, plain, t(10), rows=[row(1, "a", 1, t(1)), row(2, "b", 1, None)])
    await commit(engine, plain, t(11), deleted_ids=[key(2)])
    async with engine.connect() as conn:
        columns = await dialect_for(engine).existing_columns(conn, ENV, "account__history")
    assert columns is None
    layout = await mirror(engine)
    assert await versions(engine) == [(1, "a", 1, web(t(1)), None, "upsert")]
    await mirror(engine)  # again: nothing more
    await commit(engine, layout, t(20), rows=[row(1, "a", 1, t(1))])
    assert len(await versions(engine)) == 1


async def test_history_turned_off_and_on_again_catches_up(engine: Any) -> None:
    layout = await mirror(engine)
    rows = [row(1, "a", 1, t(1)), row(2, "b", 1, t(1)), row(4, "d", 1, t(1))]
    await commit(engine, layout, t(10), rows=rows)
    plain = await mirror(engine, history=False)  # off: the mirror goes on alone
    await commit(engine, plain, t(20), rows=[row(1, "a2", 2, t(15)), row(3, "c", 1, t(16))])
    await commit(engine, plain, t(21), deleted_ids=[key(2)])
    before = await versions(engine)
    await mirror(engine, now=t(30))  # on again
    found = await versions(engine)
    assert found == [
        (1, "a", 1, web(t(1)), web(t(15)), "upsert"),
        (1, "a2", 2, web(t(15)), None, "upsert"),
        (2, "b", 1, web(t(1)), web(t(30)), "upsert"),  # gone meanwhile: closed when caught up
        (2, "b", 1, web(t(30)), None, "delete"),
        (3, "c", 1, web(t(16)), None, "upsert"),
        (4, "d", 1, web(t(1)), None, "upsert"),
    ]
    assert found != before
    await mirror(engine, now=t(40))  # up to date: nothing more
    assert await versions(engine) == found
    # Off again, and only a deletion meanwhile: the next full pass's sweep closes its version.
    plain = await mirror(engine, history=False)
    await commit(engine, plain, t(50), deleted_ids=[key(4)])
    layout = await mirror(engine, now=t(60))
    assert await versions(engine, 4) == [(4, "d", 1, web(t(1)), None, "upsert")]
    live = [row(1, "a2", 2, t(15)), row(3, "c", 1, t(16))]
    await commit(engine, layout, t(70), rows=live, sweep_before=stamp(t(70)))
    assert await versions(engine, 4) == [
        (4, "d", 1, web(t(1)), web(t(70)), "upsert"),
        (4, "d", 1, web(t(70)), None, "delete"),
    ]


async def test_retention_prunes_ended_versions(engine: Any) -> None:
    layout = await mirror(engine)
    await commit(engine, layout, t(0), rows=[row(1, "a", 1, t(0)), row(2, "b", 1, t(0))])
    await commit(engine, layout, t(60), rows=[row(1, "a2", 2, t(60))])
    await commit(engine, layout, t(61), deleted_ids=[key(2)])
    later = t(60 * 24 * 3)
    assert await prune_history(engine, ENV, "account", 86400 * 7, now=later) == 0
    pruned = await prune_history(engine, ENV, "account", 86400, now=later)
    assert pruned == 3  # a's first version, b's version and b's deletion
    assert await versions(engine) == [(1, "a2", 2, web(t(60)), None, "upsert")]
    assert await prune_history(engine, ENV, "nothere", 86400, now=later) == 0


async def test_the_daemons_pruning_pass_applies_history_retention(
    engine: Any, store_url: str, tmp_path: Path
) -> None:
    """Only a table with `history_retention` is pruned; the other history stays whole."""
    layout = await mirror(engine)
    await commit(engine, layout, t(0), rows=[row(1, "a", 1, t(0))])
    await commit(engine, layout, t(60), rows=[row(1, "a2", 2, t(60))])  # closes version 1
    options = (
        "[tenants.environments.table_options.account]\nhistory = true\n"
        'history_retention = "30d"\n'
        "[tenants.environments.table_options.contact]\nhistory = true\n"
    )
    text_config = base_config(extra_env=options).replace("sqlite+aiosqlite:///mirror.db", store_url)
    path = tmp_path / "dvmirror.toml"
    path.write_text(text_config)
    config = load_config(path, environ=clean_env({"DVMIRROR_CLIENT_SECRET": SECRET}))
    await Daemon(config, serve_http=False, handle_signals=False)._prune_history(engine)
    assert await versions(engine) == [(1, "a2", 2, web(t(60)), None, "upsert")]


RANGES = 6
PER_RANGE = 30


async def test_concurrent_key_ranges_and_replays_keep_one_version_per_change(
    engine: Any,
) -> None:
    """Key ranges commit concurrently, each page twice (a replay), while a churn task updates
    rows of the ranges already loaded, also twice: every key ends with exactly one version per
    change and one open version (on PostgreSQL these are concurrent transactions)."""
    layout = await mirror(engine)
    rng = random.Random(7)
    changes: dict[int, int] = {}
    loaded: list[int] = []

    async def page(rows: list[tuple[Any, ...]]) -> None:
        at = datetime.now(UTC)
        await asyncio.sleep(rng.random() * 0.005)
        await commit(engine, layout, at, rows=rows)
        await commit(engine, layout, at, rows=rows)

    async def key_range(number: int) -> None:
        first = number * PER_RANGE
        for start in range(first, first + PER_RANGE, 10):
            await page([row(n, f"k{n}", 1) for n in range(start, start + 10)])
            for n in range(start, start + 10):
                changes[n] = 1
                loaded.append(n)

    async def churn() -> None:
        version = 2
        while version < 30:
            await asyncio.sleep(0.001)
            if len(loaded) < 2:
                continue
            picked = rng.sample(loaded, 2)
            await page([row(n, f"k{n}v{version}", version) for n in picked])
            for n in picked:
                changes[n] += 1
            version += 1

    await asyncio.gather(*(key_range(n) for n in range(RANGES)), churn())
    per_key: dict[int, list[tuple[Any, ...]]] = {}
    for version in await versions(engine):
        per_key.setdefault(version[0], []).append(version)
    assert set(per_key) == set(range(RANGES * PER_RANGE))
    for n, kept in per_key.items():
        assert [v[4] is None for v in kept] == [False] * (len(kept) - 1) + [True], kept
        assert len(kept) == changes[n], kept
    assert sum(changes.values()) > RANGES * PER_RANGE + 20


@pytest.mark.postgres
async def test_postgres_the_same_page_in_two_open_transactions_is_one_version(
    pg_url: str,
) -> None:
    """A page and its replay in two transactions open at once (a key range and a resync writing
    the same rows): the second waits for the environment's lock, then finds the versions already
    there and adds nothing."""
    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        await state.ensure(engine, ENV, "account", now=NOW)
        layout = await mirror(engine)
        page = PageWrite(rows=[row(1, "a", 1, t(1)), row(2, "b", 1, t(1))], synced_at=stamp(t(5)))
        async with engine.connect() as conn_a, engine.connect() as conn_b:
            tx_a = await conn_a.begin()
            await write_page(conn_a, layout.writer, page, observed_at=stamp(t(5)))

            async def replay() -> PageCounts:
                async with conn_b.begin():
                    return await write_page(conn_b, layout.writer, page, observed_at=stamp(t(6)))

            task = asyncio.create_task(replay())
            await asyncio.sleep(0.3)
            assert not task.done()  # waiting for the environment's lock
            await tx_a.commit()
            counts = await asyncio.wait_for(task, 10)
        assert counts.changed == 0
        assert [v[:3] for v in await versions(engine)] == [(1, "a", 1), (2, "b", 1)]
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_postgres_plans_the_page_statements_as_index_lookups(pg_url: str) -> None:
    """Freshly loaded tables have statistics from when they were nearly empty: the page's
    history statements still start from its changed mirror rows and look them up in the
    history's indexes, never scan the history once per row (checked on the plan, not a clock)."""
    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        await state.ensure(engine, ENV, "account", now=NOW)
        layout = await mirror(engine)
        await commit(engine, layout, t(0), rows=[row(n, f"n{n}", 1, t(1)) for n in range(5)])
        async with engine.connect() as conn:  # statistics taken while the tables are tiny
            await conn.execute(text(f"ANALYZE {ref(engine, 'account')}, {ref(engine)}"))
        for version in (1, 2):  # then a load and a change of every row, as a first load does
            rows = [row(n, f"n{n}v{version}", version, t(version)) for n in range(3000)]
            await commit(engine, layout, t(10 * version), rows=rows)
        writer = layout.writer
        assert isinstance(writer, HistoryWriter)
        sql, params = writer.sql, {"stamp": stamp(t(30)), "seq": 3, "at": stamp(t(30))}
        statements = [sql.close_superseded(), sql.refresh_current(), sql.open_changed()]
        statements.append(sql.open_deletions())
        async with engine.connect() as conn:
            for statement in statements:
                found = await conn.execute(text(f"EXPLAIN {statement}"), params)
                plan = "\n".join(r[0] for r in found)
                assert "Seq Scan on account__history" not in plan, plan
            # The control: the same statement also bounded by the page's keys on the history
            # side (as it once was) is planned as a scan of the history per changed row.
            bounded = sql.close_superseded().replace(
                "WHERE m.", f"WHERE {sql._keys_in('h.accountid')} AND m.", 1
            )
            keys = {"ids": [key(n) for n in range(3000)]}
            found = await conn.execute(text(f"EXPLAIN {bounded}"), params | keys)
            assert "Seq Scan on account__history" in "\n".join(r[0] for r in found)
    finally:
        await engine.dispose()
