"""The simulator's option sets (reference 13): every installed language, a global option set,
Status options with their State, Yes/No options, ManyToOneRelationships, and relabelling an option
without touching any row."""

from __future__ import annotations

from typing import Any

import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.optionsets import INSTALLED_LANGUAGES, relabel
from sync.simulator.webapi import ApiRequest, DataverseModel

BASE = "https://127.0.0.1:8443/api/data/v9.2"
CAST = "Microsoft.Dynamics.CRM.{}AttributeMetadata"
FORMATTED = 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'


@pytest.fixture(name="env")
def _env() -> DataverseModel:
    specs = [TableSpec(name="account", rows=30), TableSpec(name="new_project", rows=30)]
    return DataverseModel(specs, 7, retention_days=7, clock=lambda: 1_750_000_000.0)


def get(env: DataverseModel, path: str, query: str = "", prefer: str | None = None) -> Any:
    headers = {"Prefer": prefer} if prefer else {}
    response = env.handle(ApiRequest("GET", path, query, headers, BASE, "u", "bu", "org"))
    return response.status, response.json()


def cast(env: DataverseModel, table: str, kind: str, expand: str = "OptionSet,GlobalOptionSet"):
    path = f"EntityDefinitions(LogicalName='{table}')/Attributes/{CAST.format(kind)}"
    status, body = get(env, path, f"$select=LogicalName&$expand={expand}")
    assert status == 200, body
    return {item["LogicalName"]: item for item in body["value"]}


def test_labels_in_every_installed_language(env: DataverseModel) -> None:
    industry = cast(env, "account", "Picklist")["industrycode"]
    label = industry["OptionSet"]["Options"][0]["Label"]
    assert [e["LanguageCode"] for e in label["LocalizedLabels"]] == list(INSTALLED_LANGUAGES)
    assert label["UserLocalizedLabel"]["LanguageCode"] == 1033
    assert {e["Label"] for e in label["LocalizedLabels"]} == {
        "Accounting",
        "Accounting (Deutsch)",
        "Accounting (Français)",
    }
    assert industry["GlobalOptionSet"] is None and industry["OptionSet"]["IsGlobal"] is False


def test_global_status_and_boolean_option_sets(env: DataverseModel) -> None:
    category = cast(env, "new_project", "Picklist")["new_category"]
    assert category["GlobalOptionSet"]["Name"] == "new_projectcategory"
    assert category["OptionSet"]["IsGlobal"] is True
    statuses = cast(env, "account", "Status")["statuscode"]["OptionSet"]["Options"]
    assert all(isinstance(o["State"], int) for o in statuses)
    billable = cast(env, "new_project", "Boolean", "OptionSet")["new_isbillable"]["OptionSet"]
    assert (billable["FalseOption"]["Value"], billable["TrueOption"]["Value"]) == (0, 1)
    tags = cast(env, "new_project", "MultiSelectPicklist")
    assert set(tags) == {"new_tags"}


def test_many_to_one_relationships(env: DataverseModel) -> None:
    path = "EntityDefinitions(LogicalName='account')/ManyToOneRelationships"
    status, body = get(
        env, path, "$select=ReferencingAttribute,ReferencedEntity,ReferencedAttribute"
    )
    assert status == 200
    pairs = {
        (r["ReferencingAttribute"], r["ReferencedEntity"], r["ReferencedAttribute"])
        for r in body["value"]
    }
    assert ("primarycontactid", "contact", "contactid") in pairs
    assert set(body["value"][0]) == {
        "MetadataId",
        "ReferencingAttribute",
        "ReferencedEntity",
        "ReferencedAttribute",
    }
    status, body = get(env, path, "$select=Nope")
    assert status == 400


def test_relabel_changes_labels_not_rows(env: DataverseModel) -> None:
    def rows() -> list[dict[str, Any]]:
        status, body = get(env, "accounts", "$select=industrycode,versionnumber", FORMATTED)
        assert status == 200
        return list(body["value"])

    before = rows()
    relabel(env.tables["account"], "industrycode", 2, "Farming")
    after = rows()
    assert [r["versionnumber"] for r in after] == [r["versionnumber"] for r in before]
    key = "industrycode@OData.Community.Display.V1.FormattedValue"
    assert any(r["industrycode"] == 2 for r in after)
    assert all(r[key] == "Farming" for r in after if r["industrycode"] == 2)
    option = cast(env, "account", "Picklist")["industrycode"]["OptionSet"]["Options"][1]
    assert option["Label"]["UserLocalizedLabel"]["Label"] == "Farming"
    with pytest.raises(ValueError, match="no option 99"):
        relabel(env.tables["account"], "industrycode", 99, "X")
    with pytest.raises(ValueError, match="has no options"):
        relabel(env.tables["account"], "name", 1, "X")
