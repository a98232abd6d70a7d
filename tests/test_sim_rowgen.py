"""Simulator row generation and rendering: compiled fast paths equal the reference behaviour."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.rowgen import below_function
from sync.simulator.valueformat import iso_date, iso_datetime, us_date, us_datetime
from sync.simulator.values import identity, key_for, mix, salt
from sync.simulator.webapi import ApiRequest, DataverseModel

#: sha256 of everything `_workload` observes: rows must never change for a given seed unless the
#: templates change on purpose. First pinned from the original (uncompiled, per-row re-derived)
#: generator; re-pinned when the templates gained the real DateTime behaviours
#: (overriddencreatedon everywhere, UserLocal/DateOnly-format close dates, TimeZoneIndependent);
#: re-pinned when primary keys became sequential GUIDs like Dataverse's (issue 11). Only the keys
#: changed: with the old key function patched back in, the workload still gave the previous
#: digest 68db8490140e50369ddf8a2147d1a0c230cb22474d937f7591aecfa22b4724bd. Re-pinned when reads
#: without $orderby (and dumps) moved from creation order to primary-key order, as a real org
#: serves them (issue 21): only the order changed. Each of the workload's 39 reads and dumps
#: returned the same multiset of rows (sha256 of its sorted row JSON) before and after; the
#: previous digest was 5c55ec83c2df2a17967a95533490a8c5ff701b492a37e2df35c47cb09211807e.
#: Re-pinned when AttributeMetadata gained its Description label (issue 23, dbt descriptions):
#: with that one property left out, the workload still gives the previous digest
#: eb9043cba27e7a82f5090cc8dad0ad292c08083c193a785d06ef5ca19e8d4dca.
REFERENCE_DIGEST = "2af47c32048f10707d6bc7dbf94291428ae32ded4cde2bae6478debcb7c13d25"
CLIENT_ANNOTATIONS = (
    "OData.Community.Display.V1.FormattedValue,Microsoft.Dynamics.CRM.lookuplogicalname"
)
PREFERS = (
    "odata.maxpagesize=70",
    'odata.maxpagesize=90, odata.include-annotations="*"',
    f'odata.maxpagesize=5000, odata.include-annotations="{CLIENT_ANNOTATIONS}"',
    'odata.include-annotations="Microsoft.Dynamics.CRM.*"',
)
SETS = {
    "account": "accounts",
    "contact": "contacts",
    "opportunity": "opportunities",
    "new_project": "new_projects",
}
SIZES = {"account": 240, "contact": 180, "opportunity": 150, "new_project": 160}
NEW_COLUMNS = (
    {"name": "new_score", "type": "Integer"},
    {"name": "new_when", "type": "DateTime"},
    {"name": "new_amt", "type": "Money"},
    {"name": "new_pick", "type": "Picklist"},
)


class _Workload:
    """Reads, churn, new columns and dumps on one model, hashing every observable byte."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        specs = [TableSpec(name=name, rows=rows) for name, rows in SIZES.items()]
        self.model = DataverseModel(specs, 7, retention_days=7, clock=lambda: self.now)
        self.digest = hashlib.sha256()

    def read_all(self, entity_set: str, query: str, prefer: str) -> dict[str, Any]:
        while True:
            request = ApiRequest(
                "GET",
                entity_set,
                query,
                {"Prefer": prefer},
                "https://h/api/data/v9.2",
                "u",
                "b",
                "o",
            )
            response = self.model.handle(request)
            self.digest.update(b"%d" % response.status + response.body)
            self.digest.update(orjson.dumps(sorted(response.headers.items())))
            data: dict[str, Any] = orjson.loads(response.body) if response.status == 200 else {}
            link = data.get("@odata.nextLink")
            if not link:
                return data
            query = link.split("?", 1)[1]

    def dump(self, table: str) -> None:
        for row in self.model.dump_rows(table):
            self.digest.update(orjson.dumps(row))

    def run(self) -> str:
        for table, entity_set in SETS.items():
            for prefer in PREFERS:
                self.read_all(entity_set, "", prefer)
            select = "name,revenue" if table == "account" else "statecode,createdon"
            self.read_all(entity_set, f"$select={select}", PREFERS[1])
            watermark = quote("modifiedon gt 2023-03-01T00:00:00Z")
            self.read_all(entity_set, f"$filter={watermark}", PREFERS[0])
            self.read_all(entity_set, f"$orderby={quote('createdon desc')}&$top=50", PREFERS[1])
        for table in SETS:
            self.dump(table)
        tracking = 'odata.track-changes, odata.maxpagesize=100, odata.include-annotations="*"'
        delta = self.read_all("accounts", "", tracking)["@odata.deltaLink"].split("?", 1)[1]
        self.now += 100
        churned = self.model.churn("account", creates=30, updates=50, deletes=20, seed=3)
        self.digest.update(orjson.dumps(churned))
        for spec in NEW_COLUMNS:
            self.digest.update(orjson.dumps(self.model.add_column("account", spec)))
        self.now += 10
        churned = self.model.churn("account", creates=5, updates=10, deletes=2, seed=4)
        self.digest.update(orjson.dumps(churned))
        self.read_all("accounts", delta, 'odata.maxpagesize=20, odata.include-annotations="*"')
        self.read_all("accounts", "", 'odata.maxpagesize=700, odata.include-annotations="*"')
        self.read_all("accounts", "", "odata.maxpagesize=700")
        self.dump("account")
        for table in ("contact", "new_project"):
            self.model.churn(table, creates=10, updates=30, deletes=5, seed=9)
            self.read_all(SETS[table], "", PREFERS[1])
        return self.digest.hexdigest()


def test_every_observable_byte_matches_the_reference_generator() -> None:
    """Pages (all annotation choices, $select, $filter, $orderby, deltas after churn and new
    columns) and row dumps are byte-identical to what the original generator produced."""
    assert _Workload().run() == REFERENCE_DIGEST


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 3])
def test_below_draws_exactly_what_randrange_draws(seed: int) -> None:
    """The inlined rejection sampling returns Random.randrange's values, consuming the same bits."""
    ours, reference = random.Random(seed), random.Random(seed)
    below = below_function(ours.getrandbits)
    sizes = [1, 2, 3, 5, 7, 16, 18, 100, 1000, 10_000, 2**32, 220_752_000, 9 * 10**12]
    for _ in range(50):
        for n in sizes:
            assert below(n) == reference.randrange(n)
    assert ours.random() == reference.random()


@pytest.mark.parametrize("table", ["account", "contact", "systemuser", "new_externalid"])
def test_identity_hashes_are_the_mix_chain(table: str) -> None:
    """A row's origin is mix(seed, salt(table), index) and its key is the documented sequential
    GUID: the counter in SQL Server's order after an Azure node."""
    ident = identity(99, table)
    for index in (0, 1, 255, 65_535, 999_999, 2**31):
        origin, key = ident.origin_and_key(index)
        assert origin == mix(99, salt(table), index) == ident.origin(index)
        assert key == ident.key(index, origin) == key_for(99, table, index)
        assert sqlserver_guid_key(key)[8:] == ident.counter(index).to_bytes(8, "big")
        assert key[24:30] == "000d3a" and len(key) == 36


def test_date_texts_match_datetime_formatting() -> None:
    """ISO and en-US date texts equal datetime's formatting, midnight, noon and leap days included."""
    rng = random.Random(5)
    start = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    instants = [start + rng.randrange(40 * 365 * 86_400) for _ in range(2000)]
    instants += [951_782_400, 951_825_600, 1_709_164_800 - 1, 0]  # 2000-02-29, noon, ...
    for instant in instants:
        moment = datetime.fromtimestamp(instant, UTC)
        assert iso_datetime(instant) == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert iso_date(instant) == moment.strftime("%Y-%m-%d")
        day = f"{moment.month}/{moment.day}/{moment.year}"
        assert us_date(instant) == day
        half = "AM" if moment.hour < 12 else "PM"
        assert us_datetime(instant) == f"{day} {moment.hour % 12 or 12}:{moment.minute:02d} {half}"


def test_generated_code_names_only_bound_objects() -> None:
    """Compiled row makers and renderers carry their readable source, built from our names."""
    model = DataverseModel([TableSpec(name="account", rows=3)], 1, retention_days=7)
    table = model.tables["account"]
    row = table.row(0)
    assert row is not None
    source: str = table._factory.make.__source__  # type: ignore[union-attr]
    assert source.startswith("def make(index, version, state):")
    assert "values['accountid'] = key" in source
    assert "if not (chance" in source  # seeded nulls take a draw
