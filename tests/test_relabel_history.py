"""Label fixes as commits (store.relabel) on real SQLite files and a real PostgreSQL cluster,
through the metadata tables' rewrite and the real page transaction: the relabelled rows take one
new number per table, recorded in dv_commits; the history's open versions take the label in
place, its closed versions keep theirs; a replay takes no number; a history that is behind is
left to its catch-up, which brings the new label."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text

from sync.store.metadata_tables import rewrite
from sync.store.relabel import LabelFix
from tests.test_history import ENV, _engine, commit, key, mirror, ref, schema, store_url, t, web

__all__ = ["_engine", "store_url"]  # the fixtures, on both stores
PICKLIST = {"LogicalName": "industrycode", "AttributeType": "Picklist"}


def row(
    n: int, code: int, label: str, name: str, version: int, modified: datetime
) -> tuple[Any, ...]:
    """(accountid, industrycode, industrycode__label, modifiedon, name) and the ETag."""
    return (key(n), code, label, web(modified), name, f'W/"{version}"')


async def fetch(engine: Any, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def commits(engine: Any) -> list[tuple[Any, ...]]:
    return await fetch(
        engine,
        "SELECT seq, table_name, upserts, deletes FROM dv_commits "
        f"WHERE environment = '{ENV}' ORDER BY seq",
    )


async def history(engine: Any) -> list[tuple[Any, ...]]:
    """(n, name, label, open, op, commit number) of every version."""
    found = await fetch(
        engine,
        "SELECT accountid, name, industrycode__label, _dv_valid_to IS NULL, _dv_op, "
        f"_dv_commit_seq FROM {ref(engine)} ORDER BY accountid, _dv_valid_from",
    )
    return [(int(str(r[0])[:8], 16), r[1], r[2], bool(r[3]), r[4], r[5]) for r in found]


async def relabel(engine: Any, labels: dict[int, str]) -> int:
    fix = LabelFix("account", "industrycode", labels)
    return await rewrite(engine, ENV, {}, [fix], now=t(100))


async def test_a_relabel_is_a_commit_and_updates_open_versions_in_place(engine: Any) -> None:
    layout = await mirror(engine, schema(PICKLIST))
    rows = [row(1, 2, "Agri", "a", 1, t(1)), row(2, 2, "Agri", "b", 1, t(1))]
    await commit(engine, layout, t(10), rows=[*rows, row(3, 1, "Acct", "c", 1, t(1))])
    await commit(engine, layout, t(20), rows=[row(1, 2, "Agri", "a2", 2, t(15))])
    before = await commits(engine)
    assert [s for s, *_ in before] == [1, 2]

    assert await relabel(engine, {2: "Farming"}) == 2
    assert await commits(engine) == [*before, (3, "account", 2, 0)]
    mirror_rows = await fetch(
        engine,
        f"SELECT accountid, industrycode__label, _dv_version, _dv_commit_seq "
        f"FROM {ref(engine, 'account')} ORDER BY 1",
    )
    assert [(r[1], r[2], r[3]) for r in mirror_rows] == [
        ("Farming", 2, 3),
        ("Farming", 1, 3),
        ("Acct", 1, 1),
    ]
    assert await history(engine) == [
        (1, "a", "Agri", False, "upsert", 2),  # closed: keeps the label it had
        (1, "a2", "Farming", True, "upsert", 3),
        (2, "b", "Farming", True, "upsert", 3),
        (3, "c", "Acct", True, "upsert", 1),
    ]

    # A replay (the same fixes again) changes nothing and takes no number.
    found = await history(engine)
    assert await relabel(engine, {2: "Farming"}) == 0
    assert await commits(engine) == [*before, (3, "account", 2, 0)]
    assert await history(engine) == found


async def test_a_history_that_is_behind_is_left_to_its_catch_up(engine: Any) -> None:
    layout = await mirror(engine, schema(PICKLIST))
    await commit(engine, layout, t(10), rows=[row(1, 1, "Acct", "a", 1, t(1))])
    plain = await mirror(engine, schema(PICKLIST), history=False)  # off for a while
    await commit(engine, plain, t(20), rows=[row(2, 1, "Acct", "b", 1, t(15))])
    assert await relabel(engine, {1: "Accounting"}) == 2
    # Untouched: writing the relabel's number there would hide row 2 from the catch-up.
    assert await history(engine) == [(1, "a", "Acct", True, "upsert", 1)]
    await mirror(engine, schema(PICKLIST), now=t(30))  # on again: catches up
    assert [(n, label, is_open) for n, _, label, is_open, _, _ in await history(engine)] == [
        (1, "Accounting", True),
        (2, "Accounting", True),
    ]
