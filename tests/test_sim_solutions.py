"""The simulator's table kinds and solutions, as documented: EntityDefinitions carry TableType,
IsPrivate, IsIntersect; `solutions` and `solutioncomponents` answer `$filter`/`$select`, and a
component's `objectid` is the table's MetadataId. Pure: DataverseModel.handle, no sockets."""

from __future__ import annotations

from urllib.parse import quote

from sync.simulator.dataset import TableSpec
from sync.simulator.solutions import SolutionSpec
from sync.simulator.webapi import ApiRequest, ApiResponse, DataverseModel

BASE = "https://127.0.0.1:8443/api/data/v9.2"


def model() -> DataverseModel:
    specs = [
        TableSpec(name="account", rows=3),
        TableSpec(name="contact", rows=3, private=True),
        TableSpec(name="opportunity", rows=3, table_type="Virtual"),
        TableSpec(name="new_project", rows=3, intersect=True),
    ]
    sales = SolutionSpec(unique_name="ContosoSales", tables=("account", "opportunity"))
    return DataverseModel(specs, 7, retention_days=7, solutions=[sales])


def get(env: DataverseModel, path: str, query: str = "") -> ApiResponse:
    return env.handle(ApiRequest("GET", path, query, {}, BASE, "u", "b", "o"))


def test_entity_definitions_report_table_kinds() -> None:
    body = get(
        model(), "EntityDefinitions", "$select=LogicalName,TableType,IsPrivate,IsIntersect"
    ).json()
    kinds = {
        e["LogicalName"]: (e["TableType"], e["IsPrivate"], e["IsIntersect"]) for e in body["value"]
    }
    assert kinds == {
        "account": ("Standard", False, False),
        "contact": ("Standard", True, False),
        "opportunity": ("Virtual", False, False),
        "new_project": ("Standard", False, True),
    }
    virtual = get(
        model(),
        "EntityDefinitions",
        "$select=LogicalName&$filter=" + quote("TableType eq 'Virtual'"),
    ).json()
    assert [e["LogicalName"] for e in virtual["value"]] == ["opportunity"]


def test_solution_components_resolve_to_metadata_ids_and_follow_changes() -> None:
    env = model()
    found = get(
        env, "solutions", "$select=solutionid&$filter=" + quote("uniquename eq 'contososales'")
    ).json()["value"]
    assert len(found) == 1 and set(found[0]) == {"solutionid"}  # names compare case-insensitively
    solution_id = found[0]["solutionid"]
    assert get(env, "solutions", "$filter=" + quote("uniquename eq 'Nope'")).json()["value"] == []

    def members() -> set[str]:
        text = f"_solutionid_value eq {solution_id} and componenttype eq 1"
        page = get(env, "solutioncomponents", "$select=objectid&$filter=" + quote(text)).json()
        return {c["objectid"] for c in page["value"]}

    ids = {
        e["LogicalName"]: e["MetadataId"]
        for e in get(env, "EntityDefinitions", "$select=LogicalName").json()["value"]
    }
    assert members() == {ids["account"], ids["opportunity"]}
    env.solutions.change("ContosoSales", "account", add=False)
    env.solutions.change("ContosoSales", "new_project", add=True)
    assert members() == {ids["opportunity"], ids["new_project"]}


def test_unknown_property_is_a_400() -> None:
    response = get(model(), "solutions", "$select=nosuch")
    assert response.status == 400
    filtered = get(model(), "solutioncomponents", "$filter=" + quote("nosuch eq 1"))
    assert filtered.status == 400
