"""Edm.Guid ordering in the simulator follows SQL Server's uniqueidentifier order, not text order:
the pure rule (sqlserver_guid_key) against published orderings, then $orderby and $filter on
keys and lookups through DataverseModel.handle, including range-split paging."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from itertools import combinations, pairwise
from typing import Any
from urllib.parse import quote

import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.values import index_of, key_for
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


# -- the simulator's keys: sequential GUIDs ---------------------------------------------------

TABLES = ("account", "contact", "opportunity", "new_project", "systemuser")


@pytest.mark.parametrize("table", TABLES)
def test_keys_are_sequential_in_sql_order_within_a_node(table: str) -> None:
    """Like Dataverse's keys: an Azure node (000d3a…) with its clock sequence in the last two
    groups, 2–3 nodes per table, and within a node SQL Server order is creation order."""
    keys = [key_for(5, table, index) for index in range(2000)]
    assert len(set(keys)) == len(keys)
    nodes: dict[str, list[str]] = {}
    for key in keys:
        assert key == str(uuid.UUID(key))  # lower-case, hyphenated
        nodes.setdefault(key[19:], []).append(key)
    assert 2 <= len(nodes) <= 3
    assert len({suffix[5:] for suffix in nodes}) == len(nodes)  # distinct node ids
    for suffix, run in nodes.items():
        clock_sequence, node = int(suffix[:4], 16), suffix[5:]
        assert clock_sequence & 0xC000 == 0x8000 and node.startswith("000d3a")
        assert run == sorted(run, key=sqlserver_guid_key)  # index order is SQL order
        assert len(run) > 300  # each node takes a fair share
    counters = [sqlserver_guid_key(key)[8:] for key in keys]
    assert counters == sorted(counters)  # the counter is the creation order across nodes too
    assert all(c[0] == 0x10 for c in counters)  # (1 << 60) | (table base + index)


def test_nodes_differ_between_tables_and_seeds() -> None:
    """Each table (and seed) has its own nodes, so keys never collide across tables."""
    suffixes = [
        {key_for(seed, table, i)[19:] for i in range(200)} for seed in (1, 2) for table in TABLES
    ]
    assert all(not (a & b) for a, b in combinations(suffixes, 2))


def test_an_even_split_of_the_guid_space_puts_the_rows_in_one_range() -> None:
    """Splitting the GUID space 8 ways by SQL Server's most significant byte (the node's first
    byte, 00 for every Azure node) leaves >95% of the rows in one range: the careless client's
    trap, as in a real org."""
    for table in TABLES:
        ranges = Counter(sqlserver_guid_key(key_for(3, table, i))[0] // 32 for i in range(5000))
        assert max(ranges.values()) > 0.95 * 5000


@pytest.mark.parametrize("table", TABLES)
def test_index_of_round_trips(table: str) -> None:
    """index_of(key_for(i)) == i, whatever the case and braces; anything else is None."""
    rng = random.Random(table)
    indices = [0, 1, 255, 256, 65_535, 65_536, 2**31, 2**32 - 1]
    indices += [rng.randrange(2**32) for _ in range(200)]
    for index in indices:
        key = key_for(11, table, index)
        assert index_of(11, table, key) == index
        assert index_of(11, table, "{" + key.upper() + "}") == index
        assert index_of(12, table, key) is None  # another seed's table
    key = key_for(11, table, 77)
    other_nodes = {key_for(11, table, i)[18:] for i in range(50)} - {key[18:]}
    assert index_of(11, table, key[:18] + other_nodes.pop()) is None  # the counter, wrong node
    below_base = with_counter(key, counter(key) - 78)
    assert index_of(11, table, below_base) is None
    for garbage in ("", "not-a-guid", key[:-1], key[:8] + "x" + key[9:], key.replace("-", "")):
        assert index_of(11, table, garbage) is None


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


def quantile_bounds(keys: list[str], parts: int) -> list[str]:
    """Split points at the table's own keys (SQL order), as a client that sampled them would."""
    ordered = sql_sorted(keys)
    return [ordered[i * len(ordered) // parts] for i in range(1, parts)]


def counter(key: str) -> int:
    """The sequential counter of a key: SQL Server's order after the node and clock sequence."""
    return int.from_bytes(sqlserver_guid_key(key)[8:], "big")


def with_counter(key: str, value: int) -> str:
    """`key` with another counter (its bytes swapped back into groups 1 to 3), same node."""
    text = value.to_bytes(8, "little").hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:]}{key[18:]}"


def test_range_split_paging_returns_each_row_once(env: DataverseModel) -> None:
    """Splitting the key space at GUIDs (SQL order) and paging each range with $orderby=pk
    covers every row exactly once, in the order of the unsplit read."""
    bounds = quantile_bounds(all_keys(env), 5)
    bounds[1] = "00000000-0000-0000-0000-000d3a000000"  # below every node: an empty range
    bounds.sort(key=sqlserver_guid_key)
    parts = [keys_of(env, query, page=7) for query in range_queries(bounds)]
    assert sum(1 for part in parts if part) == 4  # the other ranges hold rows: a real split
    assert [k for part in parts for k in part] == sql_sorted(all_keys(env))


def test_range_split_at_guids_that_are_no_key_returns_each_row_once(env: DataverseModel) -> None:
    """Bounds between two keys of a node (not themselves keys) split there, exactly once."""
    ordered = sql_sorted(all_keys(env))
    same_node = [
        (a, b) for a, b in pairwise(ordered) if a[18:] == b[18:] and counter(b) - counter(a) > 1
    ]
    assert len(same_node) >= 3  # gaps: the other nodes' rows take the counters in between
    pairs = [same_node[i * len(same_node) // 3] for i in range(3)]
    bounds = [with_counter(a, (counter(a) + counter(b)) // 2) for a, b in pairs]
    assert all(env.tables["account"].index_of(b) is None for b in bounds)
    parts = [keys_of(env, query, page=11) for query in range_queries(bounds)]
    assert all(parts)
    assert [k for part in parts for k in part] == ordered


def test_range_split_paging_survives_churn_between_pages(env: DataverseModel) -> None:
    """Rows created, updated and deleted while a range is paged: rows that lived throughout come
    exactly once, nothing comes twice, and every nextLink keeps working."""
    before = set(all_keys(env))
    bounds = quantile_bounds(list(before), 3)
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


def test_default_paging_by_key_survives_inserts_before_the_cursor(env: DataverseModel) -> None:
    """A default-order read pages by key, as a real org's paging cookie does: rows created
    between pages with keys that sort before the cursor are not read, and no row that lived
    throughout is skipped or read twice; the read stays in key order."""
    table = env.tables["account"]
    before = set(all_keys(env))
    seen: list[str] = []
    created_behind = 0
    body: dict[str, Any] = get(env, "accounts", "$select=name", "odata.maxpagesize=10").json()
    while True:
        seen += [row[PK] for row in body["value"]]
        first_new = table.next_index
        env.churn("account", creates=4, updates=3, deletes=2, seed=len(seen))
        cursor = sqlserver_guid_key(seen[-1])
        new_keys = [table.key(index) for index in range(first_new, table.next_index)]
        created_behind += sum(sqlserver_guid_key(key) < cursor for key in new_keys)
        link = body.get("@odata.nextLink")
        if not link:
            break
        body = get(env, "accounts", link.split("?", 1)[1], "odata.maxpagesize=10").json()
    after = set(all_keys(env))
    assert created_behind > 10  # inserts really landed before the cursor
    assert len(seen) == len(set(seen))
    assert seen == sql_sorted(seen)
    assert (before & after) <= set(seen)
    assert set(seen) <= {table.key(index) for index in range(table.next_index)}


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


def test_ties_of_a_non_key_order_go_by_primary_key(env: DataverseModel) -> None:
    """$orderby=statecode alone: rows of equal statecode come in SQL Server key order (the
    key ends every ordering, as in a real org), across page boundaries too."""
    got = rows_of(
        read_all(env, "accounts", "$select=statecode&$orderby=statecode", "odata.maxpagesize=7")
    )
    assert len(got) == 260
    for state in (0, 1):
        keys = [r[PK] for r in got if r["statecode"] == state]
        assert keys and keys == sql_sorted(keys)


def test_default_order_is_the_primary_key_order(env: DataverseModel) -> None:
    """Without $orderby a multi-page read returns the $orderby=<pk> order, as a real org does
    (reference 3.2: "without `$orderby` Dataverse orders by primary key"), not creation order."""
    default = keys_of(env, "$select=name")
    assert len(default) == 260  # 29 pages of 9
    assert default == keys_of(env, f"$select=name&$orderby={PK}")
    assert default == sql_sorted(default) == all_keys(env)
    table = env.tables["account"]
    assert default != [table.key(index) for index in range(260)]  # creation order differs


def test_default_order_with_a_filter_is_the_primary_key_order(env: DataverseModel) -> None:
    """A filtered default read (narrowed by versions or not) pages in key order too."""
    for condition in (
        "versionnumber gt 100100",  # streamed in key order
        "versionnumber gt 100230",  # few candidates: collected and sorted
        "statecode eq 0",
        "name ne null",
    ):
        query = f"$select=name&$filter={f(condition)}"
        default = keys_of(env, query, page=7)
        assert default and default == keys_of(env, f"{query}&$orderby={PK}", page=7)


def test_quoted_guid_against_a_guid_column_is_incompatible(env: DataverseModel) -> None:
    """'…' is an Edm.String literal: comparing it with Edm.Guid is 400, as OData's binder says."""
    key = all_keys(env)[3]
    response = get(env, "accounts", f"$filter={f(f'{PK} eq {chr(39)}{key}{chr(39)}')}")
    status, code, message = error(response)
    assert (status, code) == (400, "0x0")
    assert "'Edm.Guid' and 'Edm.String'" in message
