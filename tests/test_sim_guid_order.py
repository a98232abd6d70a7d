"""Edm.Guid ordering in the simulator follows SQL Server's uniqueidentifier order, not text order:
the pure rule (sqlserver_guid_key) against published orderings, then $orderby and $filter on
keys and lookups through DataverseModel.handle, including range-split paging."""

from __future__ import annotations

import random
from itertools import pairwise
from typing import Any
from urllib.parse import quote

import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.webapi import DataverseModel
from tests.test_sim_webapi import Clock, error, get, read_all, rows_of

#: Each list is in ascending SQL Server order, as published.
KNOWN_ORDERINGS: dict[str, list[str]] = {
    # One 01 byte at each position, least significant first. The order SQL Server returns for
    # this query in "How SQL Server Sorts the UNIQUEIDENTIFIER Type" (gotnet.biz), and what
    # SqlGuid's comparison order {10..15, 8, 9, 6, 7, 4, 5, 0..3} gives.
    "one byte at each position": [
        "01000000-0000-0000-0000-000000000000",
        "00010000-0000-0000-0000-000000000000",
        "00000100-0000-0000-0000-000000000000",
        "00000001-0000-0000-0000-000000000000",
        "00000000-0100-0000-0000-000000000000",
        "00000000-0001-0000-0000-000000000000",
        "00000000-0000-0100-0000-000000000000",
        "00000000-0000-0001-0000-000000000000",
        "00000000-0000-0000-0001-000000000000",
        "00000000-0000-0000-0100-000000000000",
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000100",
        "00000000-0000-0000-0000-000000010000",
        "00000000-0000-0000-0000-000001000000",
        "00000000-0000-0000-0000-000100000000",
        "00000000-0000-0000-0000-010000000000",
    ],
    # Within a byte the high nibble counts more: 01 < 10 at the same position.
    "nibbles within a byte": [
        "01000000-0000-0000-0000-000000000000",
        "10000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0001-000000000000",
        "00000000-0000-0000-0010-000000000000",
        "00000000-0000-0000-0000-010000000000",
        "00000000-0000-0000-0000-100000000000",
    ],
    # "Comparing GUID and uniqueidentifier Values" (learn.microsoft.com, ADO.NET): the SqlGuid
    # sort of its three sample values.
    "ADO.NET SqlGuid sample": [
        "2AAAAAAA-BBBB-CCCC-DDDD-1EEEEEEEEEEE",
        "3AAAAAAA-BBBB-CCCC-DDDD-2EEEEEEEEEEE",
        "1AAAAAAA-BBBB-CCCC-DDDD-3EEEEEEEEEEE",
    ],
    # "How are GUIDs compared in SQL Server 2005?" (SQL Server team): '86FF976E763F' against
    # '393AE6BBB849' decides, although '55666BEE' < '8DD5BCA5' as text.
    "SQL Server 2005 team sample": [
        "8DD5BCA5-6ABE-4F73-B4B7-393AE6BBB849",
        "55666BEE-B3A0-4BF5-81A7-86FF976E763F",
    ],
    # Keys Dataverse made for three tasks created one after another (batch doc sample): its
    # sequential GUIDs grow in the least significant byte, the first one written.
    "Dataverse sequential keys": [
        "d31ba648-c592-ed11-aad1-000d3a993550",
        "d41ba648-c592-ed11-aad1-000d3a993550",
        "d51ba648-c592-ed11-aad1-000d3a993550",
    ],
}
PK = "accountid"


@pytest.mark.parametrize("name", sorted(KNOWN_ORDERINGS))
def test_known_orderings(name: str) -> None:
    """Sorting by sqlserver_guid_key reproduces each published SQL Server order from any start."""
    expected = KNOWN_ORDERINGS[name]
    for seed in range(5):
        shuffled = expected[:]
        random.Random(seed).shuffle(shuffled)
        assert sorted(shuffled, key=sqlserver_guid_key) == expected


def test_text_order_is_not_sql_order() -> None:
    """The published orders are not what sorting the text gives (the trap for careless clients)."""
    ladder = KNOWN_ORDERINGS["one byte at each position"]
    assert sorted(ladder) != ladder
    assert (
        sorted(KNOWN_ORDERINGS["ADO.NET SqlGuid sample"])
        != KNOWN_ORDERINGS["ADO.NET SqlGuid sample"]
    )


def test_key_ignores_case_and_braces_and_rejects_garbage() -> None:
    """Upper case and {braces} (paging cookies carry both) give the same key; garbage raises."""
    text = "55666bee-b3a0-4bf5-81a7-86ff976e763f"
    assert sqlserver_guid_key("{" + text.upper() + "}") == sqlserver_guid_key(text)
    assert len(sqlserver_guid_key(text)) == 16
    with pytest.raises(ValueError):
        sqlserver_guid_key("not-a-guid")


# -- through the model --------------------------------------------------------------------


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="env")
def _env(clock: Clock) -> DataverseModel:
    specs = [TableSpec(name="account", rows=260), TableSpec(name="contact", rows=30)]
    return DataverseModel(specs, 9, retention_days=7, clock=clock)


def sql_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=sqlserver_guid_key)


def all_keys(env: DataverseModel) -> list[str]:
    return [row[PK] for row in env.dump_rows("account")]


def keys_of(env: DataverseModel, query: str, page: int = 9) -> list[str]:
    pages = read_all(env, "accounts", query, f"odata.maxpagesize={page}")
    return [row[PK] for row in rows_of(pages)]


def f(text: str) -> str:
    return quote(text, safe="")


def test_orderby_key_pages_in_sql_server_order(env: DataverseModel) -> None:
    """$orderby=accountid pages every row once in SQL Server order (not text order); desc reverses."""
    keys = all_keys(env)
    ascending = keys_of(env, f"$select=name&$orderby={PK}")
    assert ascending == sql_sorted(keys)
    assert ascending != sorted(keys)
    assert keys_of(env, f"$select=name&$orderby={f(PK + ' desc')}") == ascending[::-1]


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
def test_key_comparisons_follow_sql_server_order(env: DataverseModel, op: str) -> None:
    """accountid gt/ge/lt/le <guid> selects by SQL Server order, for a row's key and any GUID."""
    keys = sql_sorted(all_keys(env))
    checks = {
        "gt": lambda a, b: a > b,
        "ge": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "le": lambda a, b: a <= b,
    }
    for bound in (keys[100], "00000000-0000-0000-0000-800000000000", keys[0], keys[-1]):
        limit = sqlserver_guid_key(bound)
        expected = [k for k in keys if checks[op](sqlserver_guid_key(k), limit)]
        got = keys_of(env, f"$select=name&$orderby={PK}&$filter={f(f'{PK} {op} {bound}')}")
        assert got == expected, (op, bound)
        unordered = keys_of(env, f"$select=name&$filter={f(f'{PK} {op} {bound}')}")
        assert sorted(unordered) == sorted(expected)  # the default order reads the same set


def range_queries(bounds: list[str]) -> list[str]:
    """The filters a range-splitting client sends: le B1, gt B1 and le B2, ..., gt Bk."""
    filters = [f"{PK} le {bounds[0]}"]
    filters += [f"{PK} gt {low} and {PK} le {high}" for low, high in pairwise(bounds)]
    filters.append(f"{PK} gt {bounds[-1]}")
    return [f"$select=name&$filter={f(text)}&$orderby={PK}" for text in filters]


def test_range_split_paging_returns_each_row_once(env: DataverseModel) -> None:
    """Splitting the key space at GUIDs (SQL order) and paging each range with $orderby=pk
    covers every row exactly once, in the order of the unsplit read."""
    bounds = [f"00000000-0000-0000-0000-{i * 2**48 // 5:012x}" for i in range(1, 5)]
    parts = [keys_of(env, query, page=7) for query in range_queries(bounds)]
    assert all(parts)  # every range holds rows, so the split really splits
    assert [k for part in parts for k in part] == sql_sorted(all_keys(env))


def test_range_split_paging_survives_churn_between_pages(env: DataverseModel) -> None:
    """Rows created, updated and deleted while a range is paged: rows that lived throughout come
    exactly once, nothing comes twice, and every nextLink keeps working."""
    before = set(all_keys(env))
    bounds = [f"00000000-0000-0000-0000-{i * 2**48 // 3:012x}" for i in range(1, 3)]
    seen: list[str] = []
    for step, query in enumerate(range_queries(bounds)):
        body: dict[str, Any] = get(env, "accounts", query, "odata.maxpagesize=11").json()
        while True:
            seen += [row[PK] for row in body["value"]]
            env.churn("account", creates=3, updates=4, deletes=2, seed=step * 100 + len(seen))
            link = body.get("@odata.nextLink")
            if not link:
                break
            body = get(env, "accounts", link.split("?", 1)[1], "odata.maxpagesize=11").json()
    after = set(all_keys(env))
    table = env.tables["account"]
    ever = {table.key(index) for index in range(table.next_index)}  # incl. created, then deleted
    assert len(seen) == len(set(seen))
    assert (before & after) <= set(seen) <= ever
    assert len(after - before) > 0 and len(before - after) > 0  # churn really happened


def test_lookup_columns_sort_and_compare_as_guids(env: DataverseModel) -> None:
    """_parentaccountid_value sorts in SQL Server order (nulls first) and filters with gt the same way."""
    rows = list(env.dump_rows("account"))
    column = "_parentaccountid_value"
    values = [r[column] for r in rows]
    got = [
        r[column]
        for r in rows_of(
            read_all(env, "accounts", f"$select={column}&$orderby={column}", "odata.maxpagesize=13")
        )
    ]
    nulls = [v for v in values if v is None]
    assert got == nulls + sql_sorted([v for v in values if v is not None])
    bound = sql_sorted([v for v in values if v is not None])[40]
    filtered = read_all(env, "accounts", f"$select={column}&$filter={f(f'{column} gt {bound}')}")
    expected = [v for v in values if v and sqlserver_guid_key(v) > sqlserver_guid_key(bound)]
    assert sorted(r[column] for r in rows_of(filtered)) == sorted(expected)


def test_key_breaks_ties_in_sql_order(env: DataverseModel) -> None:
    """$orderby=statecode,accountid: within one statecode, keys follow SQL Server order."""
    got = rows_of(
        read_all(
            env, "accounts", f"$select=statecode&$orderby=statecode,{PK}", "odata.maxpagesize=8"
        )
    )
    for state in (0, 1):
        keys = [r[PK] for r in got if r["statecode"] == state]
        assert keys == sql_sorted(keys)


def test_default_order_stays_the_index_order(env: DataverseModel) -> None:
    """Without $orderby rows still come in the simulator's index order (unchanged pages)."""
    assert keys_of(env, "$select=name") == all_keys(env)


def test_quoted_guid_against_a_guid_column_is_incompatible(env: DataverseModel) -> None:
    """'…' is an Edm.String literal: comparing it with Edm.Guid is 400, as OData's binder says."""
    key = all_keys(env)[3]
    response = get(env, "accounts", f"$filter={f(f'{PK} eq {chr(39)}{key}{chr(39)}')}")
    status, code, message = error(response)
    assert (status, code) == (400, "0x0")
    assert "'Edm.Guid' and 'Edm.String'" in message
