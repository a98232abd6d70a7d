"""Simulator dataset: deterministic lazy rows, keys, versions, churn, added columns, memory."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.odata import PagingCookie, encode_skiptoken
from sync.simulator.templates import TEMPLATES
from sync.simulator.values import identity
from sync.simulator.webapi import ApiRequest, ApiResponse, DataverseModel

BASE = "https://127.0.0.1:8443/api/data/v9.2"
NOW = 1_750_000_000.0


def model(seed: int = 7, clock: Callable[[], float] = lambda: NOW, **rows: int) -> DataverseModel:
    specs = [TableSpec(name=name, rows=count) for name, count in rows.items()]
    return DataverseModel(specs, seed, retention_days=7, clock=clock)


def get(
    target: DataverseModel, path: str, query: str = "", prefer: str | None = None
) -> ApiResponse:
    headers = {"Prefer": prefer} if prefer else {}
    return target.handle(ApiRequest("GET", path, query, headers, BASE, "u", "b", "o"))


def follow(target: DataverseModel, link: str, prefer: str | None = None) -> ApiResponse:
    parts = urlsplit(link)
    return get(target, parts.path.split("/v9.2/", 1)[1], parts.query, prefer)


class TestTableSpec:
    def test_is_frozen_and_forbids_extra_keys(self) -> None:
        """TableSpec is immutable and rejects unknown keys (scenario typos fail loudly)."""
        spec = TableSpec(name="account", rows=5)
        with pytest.raises(ValidationError):
            spec.rows = 6  # type: ignore[misc]
        with pytest.raises(ValidationError):
            TableSpec(name="account", rows=5, colour="blue")  # type: ignore[call-arg]

    def test_unknown_template_and_negative_rows_are_rejected(self) -> None:
        """Only the four templates exist, and row counts are not negative."""
        with pytest.raises(ValidationError):
            TableSpec(name="lead")
        with pytest.raises(ValidationError):
            TableSpec(name="account", rows=-1)

    def test_defaults(self) -> None:
        """A table is change-tracked and readable unless the scenario says otherwise."""
        spec = TableSpec(name="contact")
        assert (spec.change_tracking, spec.denied) == (True, False)


class TestDeterminism:
    def test_same_seed_same_rows_other_seed_other_rows(self) -> None:
        """Rows are a pure function of (seed, table, index)."""
        first = list(model(seed=1, account=30).dump_rows("account"))
        again = list(model(seed=1, account=30).dump_rows("account"))
        other = list(model(seed=2, account=30).dump_rows("account"))
        assert first == again
        assert first != other

    def test_keys_count_in_row_order_and_map_back_to_their_index(self) -> None:
        """Primary keys are lower-case sequential GUIDs whose counter (SQL Server's next most
        significant bytes after the node) grows with the row; each maps back to its index."""
        target = model(account=300)
        table = target.tables["account"]
        keys = [table.key(i) for i in range(300)]
        assert all(k == k.lower() and str(uuid.UUID(k)) == k for k in keys)
        counters = [sqlserver_guid_key(k)[8:] for k in keys]
        assert counters == sorted(counters) and len(set(counters)) == 300
        assert all(table.index_of(k) == i for i, k in enumerate(keys))
        assert table.index_of(keys[5].upper()) == 5
        assert table.index_of("{" + keys[5] + "}") == 5
        assert table.index_of("00000005-0000-4000-8000-000000000000") is None
        other_node = next(k for k in keys if k[18:] != keys[5][18:])
        assert table.index_of(keys[5][:18] + other_node[18:]) is None  # right counter, wrong node
        assert table.index_of(target.tables["account"].key(5)[:-1] + "g") is None
        dumped = [r["accountid"] for r in target.dump_rows("account")]  # primary-key order
        assert dumped == sorted(keys, key=sqlserver_guid_key)

    def test_versions_come_from_one_environment_counter(self) -> None:
        """Seeded versionnumbers are unique across the environment's tables and below the counter."""
        target = model(account=20, contact=20, opportunity=20, new_project=20)
        versions = [
            row["versionnumber"] for name in target.tables for row in target.dump_rows(name)
        ]
        assert len(versions) == len(set(versions))
        assert max(versions) == target.version


class TestTemplates:
    def test_every_common_attribute_type_is_present(self) -> None:
        """Across the templates every common Dataverse attribute type appears in rows."""
        in_rows = {
            (a.attribute_type, a.type_name)
            for t in TEMPLATES.values()
            for a in t.attributes
            if a.in_rows
        }
        kinds = {kind for kind, _ in in_rows}
        assert {
            "String",
            "Memo",
            "Integer",
            "BigInt",
            "Decimal",
            "Double",
            "Money",
            "Boolean",
            "DateTime",
            "Lookup",
            "Customer",
            "Owner",
            "Picklist",
            "State",
            "Status",
            "Uniqueidentifier",
            "Virtual",
        } <= kinds
        assert ("Virtual", "MultiSelectPicklistType") in in_rows
        dates = [
            a for t in TEMPLATES.values() for a in t.attributes if a.attribute_type == "DateTime"
        ]
        assert any(a.date_only for a in dates)
        assert any(not a.date_only for a in dates)

    def test_lookups_have_companions_that_are_not_row_properties(self) -> None:
        """Every lookup has a `…name` companion with AttributeOf set and no Web API property."""
        for template in TEMPLATES.values():
            for attr in template.attributes:
                if attr.is_lookup:
                    companion = template.attribute(f"{attr.logical_name}name")
                    assert companion is not None
                    assert companion.attribute_of == attr.logical_name
                    assert not companion.in_rows
                    assert attr.targets

    def test_customer_lookups_point_at_accounts_and_contacts(self) -> None:
        """Customer lookups target account or contact, and rows use both."""
        target = model(contact=200, account=50)
        response = get(
            target,
            "contacts",
            "$select=_parentcustomerid_value",
            'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"',
        )
        kinds = {
            row.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
            for row in response.json()["value"]
        }
        assert {"account", "contact", None} == kinds


class TestChurn:
    def test_churn_is_deterministic_and_counts_rows(self) -> None:
        """The same churn on the same model gives the same rows; counts move by creates - deletes."""
        first, second = model(account=100), model(account=100)
        for target in (first, second):
            result = target.churn("account", creates=7, updates=11, deletes=5, seed=3)
            assert {k: result[k] for k in ("created", "updated", "deleted")} == {
                "created": 7,
                "updated": 11,
                "deleted": 5,
            }
        assert list(first.dump_rows("account")) == list(second.dump_rows("account"))
        assert first.row_count("account") == 102

    def test_touched_rows_get_new_versions_and_modifiedon(self) -> None:
        """Updated rows take fresh versions from the counter and modifiedon from the clock."""
        times = [NOW]
        target = model(clock=lambda: times[-1], account=50)
        before = {r["accountid"]: r for r in target.dump_rows("account")}
        start = target.version
        times.append(NOW + 3600)
        target.churn("account", creates=0, updates=10, deletes=0, seed=1)
        after = {r["accountid"]: r for r in target.dump_rows("account")}
        changed = [k for k in after if after[k] != before[k]]
        assert len(changed) == 10
        assert sorted(after[k]["versionnumber"] for k in changed) == list(
            range(start + 1, start + 11)
        )
        assert {"2025-06-15T16:06:40Z"} == {after[k]["modifiedon"] for k in changed}
        assert all(after[k]["createdon"] == before[k]["createdon"] for k in changed)

    def test_more_deletes_than_rows_empties_the_table(self) -> None:
        """Deleting more rows than exist removes them all and stops."""
        target = model(account=3)
        assert target.churn("account", creates=0, updates=0, deletes=10, seed=1)["deleted"] == 3
        assert list(target.dump_rows("account")) == []


class TestAddColumn:
    def test_new_column_is_null_until_rows_change(self) -> None:
        """Existing rows read null in an added column; created and updated rows get values."""
        target = model(new_project=40)
        metadata = target.add_column("new_project", {"name": "new_score", "type": "Integer"})
        assert (
            metadata["LogicalName"],
            metadata["AttributeType"],
            metadata["IsCustomAttribute"],
        ) == ("new_score", "Integer", True)
        assert all(r["new_score"] is None for r in target.dump_rows("new_project"))
        target.churn("new_project", creates=3, updates=5, deletes=0, seed=9)
        valued = [r for r in target.dump_rows("new_project") if r["new_score"] is not None]
        assert len(valued) == 8
        assert all(isinstance(r["new_score"], int) for r in valued)

    @pytest.mark.parametrize(
        "spec",
        [
            {"name": "new_name", "type": "String"},
            {"name": "Bad Name", "type": "String"},
            {"name": "new_x", "type": "Lookup"},
            {"name": "", "type": "Integer"},
        ],
    )
    def test_bad_column_specs_are_value_errors(self, spec: dict[str, Any]) -> None:
        """Duplicate, unsafe or unsupported columns are refused."""
        with pytest.raises(ValueError, match="column"):
            model(new_project=1).add_column("new_project", spec)

    def test_unknown_table_is_a_key_error(self) -> None:
        """Admin calls naming a table the environment lacks raise KeyError."""
        with pytest.raises(KeyError):
            model(account=1).churn("contact", creates=1, updates=0, deletes=0, seed=0)


def retained(build: Callable[[], object]) -> tuple[object, int]:
    """Build an object and return it with the bytes still allocated for it afterwards."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = build()
        gc.collect()
        return built, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


class TestMillionRows:
    def test_model_memory_does_not_depend_on_row_count(self) -> None:
        """A 1,000,000-row table costs the same memory as a 1,000-row one."""
        _, small = retained(lambda: model(account=1_000))
        _, large = retained(lambda: model(account=1_000_000))
        assert large - small < 16_000

    def test_paging_a_million_rows_is_o_page(self) -> None:
        """Following nextLinks through a 1,000,000-row table keeps neither rows nor links in the model."""
        target = model(account=1_000_000)
        prefer = "odata.maxpagesize=500"
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            page = get(target, "accounts", "$select=name,revenue", prefer).json()
            keys = [row["accountid"] for row in page["value"]]
            for _ in range(3):
                page = follow(target, page["@odata.nextLink"], prefer).json()
                keys += [row["accountid"] for row in page["value"]]
            link = page["@odata.nextLink"]
            del page
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        assert len(set(keys)) == 2000
        assert keys == sorted(keys, key=sqlserver_guid_key)  # primary-key order
        assert kept < 400_000  # the 2,000 keys collected above, not the model
        assert "$select=name,revenue" in link

    def test_a_page_deep_in_the_table_needs_only_page_sized_memory(self) -> None:
        """A skiptoken near the end of 1,000,000 rows is served with page-sized peak memory."""
        target = model(account=1_000_000)
        table = target.tables["account"]
        # The last eleven keys in primary-key order: the highest indices of the last node.
        last_node = len(identity(table.ctx.seed, "account").nodes) - 1
        rank = identity(table.ctx.seed, "account").node_rank
        tail = [i for i in range(999_999, 999_000, -1) if rank(i) == last_node][:11][::-1]
        cookie = PagingCookie(
            2000,
            False,
            {},
            {
                "accountid": {
                    "last": "{" + table.key(tail[0]).upper() + "}",
                    "first": "{" + table.key(0).upper() + "}",
                }
            },
        )
        gc.collect()
        tracemalloc.start()
        try:
            response = get(target, "accounts", f"$skiptoken={encode_skiptoken(cookie)}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        rows = response.json()["value"]
        assert [table.key(i) for i in tail[1:]] == [r["accountid"] for r in rows]
        assert "@odata.nextLink" not in response.json()
        assert peak < 2_000_000

    def test_watermark_filter_on_a_million_rows_visits_only_changed_rows(self) -> None:
        """`modifiedon gt <start>` after churn returns exactly the changed rows with small peak memory."""
        target = model(account=1_000_000)
        target.churn("account", creates=3, updates=4, deletes=0, seed=5)
        gc.collect()
        tracemalloc.start()
        try:
            response = get(
                target, "accounts", "$select=name&$filter=modifiedon%20gt%202025-01-01T00:00:00Z"
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(response.json()["value"]) == 7
        assert peak < 2_000_000
