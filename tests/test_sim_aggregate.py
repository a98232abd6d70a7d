"""The simulator's `$apply` count and RetrieveTotalRecordCount's stale snapshot, as documented:
`{"value":[{"n":…}]}`, AggregateQueryRecordLimit (0x8004E023) over 50,000 rows, and counts from a
snapshot that the service renews only when it is a day old (or when the admin knob says so)."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.guids import sqlserver_guid_key
from sync.simulator.webapi import ApiRequest, DataverseModel
from tests.test_sim_webapi import BASE, Clock, follow, get

COUNT = "aggregate($count as n)"


@pytest.fixture(name="model")
def _model() -> DataverseModel:
    clock = Clock()
    specs = [TableSpec(name="account", rows=50_001), TableSpec(name="contact", rows=30)]
    return DataverseModel(specs, 7, retention_days=7, clock=clock)


def apply(model: DataverseModel, entity_set: str, expression: str) -> tuple[int, dict]:
    response = get(model, entity_set, "$apply=" + quote(expression, safe="$()'"))
    return response.status, orjson.loads(response.body)


def keys(model: DataverseModel, entity_set: str, key: str) -> list[str]:
    found: list[str] = []
    response = get(model, entity_set, f"$select={key}", prefer="odata.maxpagesize=5000")
    while True:
        body = orjson.loads(response.body)
        found += [row[key] for row in body["value"]]
        if "@odata.nextLink" not in body:
            return found
        response = follow(model, body["@odata.nextLink"], prefer="odata.maxpagesize=5000")


def test_count_of_a_small_table_and_of_a_key_range(model: DataverseModel) -> None:
    status, body = apply(model, "contacts", COUNT)
    assert status == 200 and body["value"] == [{"n": 30}]
    ordered = sorted(keys(model, "contacts", "contactid"), key=sqlserver_guid_key)
    low, high = ordered[4], ordered[20]
    status, body = apply(
        model, "contacts", f"filter(contactid gt {low} and contactid le {high})/{COUNT}"
    )
    assert status == 200 and body["value"] == [{"n": 16}]  # positions 5..20, in GUID order


def test_more_than_50000_rows_are_refused_and_a_range_below_is_counted(
    model: DataverseModel,
) -> None:
    status, body = apply(model, "accounts", COUNT)
    assert status == 400
    assert body["error"]["code"] == "0x8004E023"
    assert "AggregateQueryRecordLimit" in body["error"]["message"]
    ordered = sorted(keys(model, "accounts", "accountid"), key=sqlserver_guid_key)
    middle = ordered[25_000]
    status, low = apply(model, "accounts", f"filter(accountid le {middle})/{COUNT}")
    status2, high = apply(model, "accounts", f"filter(accountid gt {middle})/{COUNT}")
    assert (status, status2) == (200, 200)
    assert (low["value"][0]["n"], high["value"][0]["n"]) == (25_001, 25_000)


def test_other_transformations_are_refused(model: DataverseModel) -> None:
    status, body = apply(model, "contacts", "groupby((name))")
    assert status == 400 and "aggregate($count as n)" in body["error"]["message"]


def counts(model: DataverseModel) -> list[int]:
    path = "RetrieveTotalRecordCount(EntityNames=@p)"
    response = model.handle(
        ApiRequest("GET", path, '@p=["contact"]', {}, BASE, "user-1", "bu-1", "org-1")
    )
    values: list[int] = orjson.loads(response.body)["EntityRecordCountCollection"]["Values"]
    return values


def test_record_count_snapshot_is_stale_until_renewed(model: DataverseModel) -> None:
    model.churn("contact", creates=5, updates=0, deletes=0, seed=1)
    assert counts(model) == [30]  # the snapshot was taken before the rows were created
    state = model.count_snapshot(refresh=True)
    assert state["counts"]["contact"] == 35 and counts(model) == [35]
    model.churn("contact", creates=0, updates=0, deletes=2, seed=2)
    model.count_snapshot(max_age_seconds=0)  # renewed on every call from now on
    assert counts(model) == [33]
