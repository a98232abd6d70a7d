"""$metadata (CSDL) of the simulated Web API, and the unbound functions WhoAmI and
RetrieveTotalRecordCount in every documented spelling, through DataverseModel.handle."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from decimal import Decimal
from typing import Any

import orjson
import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.webapi import DataverseModel
from tests.test_sim_webapi import BASE, Clock, error, get

EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
LOOKUPS = {"Lookup", "Customer", "Owner"}
#: AttributeType (plus DateTimeBehavior for DateTime) -> the Edm type reference 5.3 gives.
EXPECTED_EDM = {
    "String": "Edm.String",
    "Memo": "Edm.String",
    "Virtual": "Edm.String",  # multi-select choices: "1,2"
    "Integer": "Edm.Int32",
    "Picklist": "Edm.Int32",
    "State": "Edm.Int32",
    "Status": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Decimal": "Edm.Decimal",
    "Money": "Edm.Decimal",
    "Double": "Edm.Double",
    "Boolean": "Edm.Boolean",
    "Uniqueidentifier": "Edm.Guid",
    "Lookup": "Edm.Guid",
    "Customer": "Edm.Guid",
    "Owner": "Edm.Guid",
}
CHANGE_TRACKING = "Org.OData.Capabilities.V1.ChangeTracking"


@pytest.fixture(name="env")
def _env() -> DataverseModel:
    specs = [
        TableSpec(name="account", rows=12),
        TableSpec(name="contact", rows=12, change_tracking=False),
        TableSpec(name="opportunity", rows=12),
        TableSpec(name="new_project", rows=12),
    ]
    return DataverseModel(specs, 5, retention_days=7, clock=Clock())


def metadata(env: DataverseModel, query: str = "", prefer: str | None = None) -> ET.Element:
    response = get(env, "$metadata", query, prefer)
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/xml"
    assert response.headers["OData-Version"] == "4.0"
    return ET.fromstring(response.body)


def schema_of(root: ET.Element) -> ET.Element:
    schema = root.find(f"{EDMX}DataServices/{EDM}Schema")
    assert schema is not None
    return schema


def entity_type(root: ET.Element, name: str) -> ET.Element:
    found = schema_of(root).find(f"{EDM}EntityType[@Name='{name}']")
    assert found is not None, name
    return found


def served_attributes(env: DataverseModel, table: str) -> dict[str, dict[str, Any]]:
    """Row properties as EntityDefinitions/Attributes describes them, by Web API name."""
    attrs = get(env, f"EntityDefinitions(LogicalName='{table}')/Attributes").json()["value"]
    out = {}
    for attr in attrs:
        if attr["IsValidODataAttribute"] and attr["AttributeOf"] is None:
            name = attr["LogicalName"]
            out[f"_{name}_value" if attr["AttributeType"] in LOOKUPS else name] = attr
    return out


def expected_edm(attr: dict[str, Any]) -> str:
    if attr["AttributeType"] == "DateTime":
        behavior = attr["DateTimeBehavior"]["Value"]
        return "Edm.Date" if behavior == "DateOnly" else "Edm.DateTimeOffset"
    return EXPECTED_EDM[attr["AttributeType"]]


def value_fits(edm: str, value: Any) -> bool:
    """A JSON row value is a value of that Edm type (nulls fit anything)."""
    if value is None:
        return True
    checks = {
        "Edm.String": lambda v: isinstance(v, str),
        "Edm.Int32": lambda v: isinstance(v, int) and -(2**31) <= v < 2**31,
        "Edm.Int64": lambda v: isinstance(v, int),
        "Edm.Decimal": lambda v: isinstance(v, int | float) and Decimal(str(v)).is_finite(),
        "Edm.Double": lambda v: isinstance(v, int | float),
        "Edm.Boolean": lambda v: isinstance(v, bool),
        "Edm.Guid": lambda v: str(uuid.UUID(v)) == v,
        "Edm.Date": lambda v: re.fullmatch(r"\d{4}-\d{2}-\d{2}", v) is not None,
        "Edm.DateTimeOffset": lambda v: re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v),
    }
    return bool(checks[edm](value))


def test_document_is_edmx_4_in_the_crm_namespace(env: DataverseModel) -> None:
    """The stdlib parser reads an edmx:Edmx 4.0 document; Schema Microsoft.Dynamics.CRM, alias mscrm."""
    root = metadata(env)
    assert root.tag == f"{EDMX}Edmx"
    assert root.get("Version") == "4.0"
    schema = schema_of(root)
    assert (schema.get("Namespace"), schema.get("Alias")) == ("Microsoft.Dynamics.CRM", "mscrm")
    base = schema.find(f"{EDM}EntityType[@Name='crmbaseentity']")
    assert base is not None and base.get("Abstract") == "true"


@pytest.mark.parametrize("table", ["account", "contact", "opportunity", "new_project"])
def test_entity_types_agree_with_attributes_and_rows(env: DataverseModel, table: str) -> None:
    """Each EntityType has the primary key as Key and exactly the row properties, typed as
    EntityDefinitions/Attributes says (DateOnly behaviour → Edm.Date) and as the rows carry."""
    root = metadata(env)
    node = entity_type(root, table)
    definition = get(env, f"EntityDefinitions(LogicalName='{table}')").json()
    assert node.get("BaseType") == "mscrm.crmbaseentity"
    keys = [ref.get("Name") for ref in node.findall(f"{EDM}Key/{EDM}PropertyRef")]
    assert keys == [definition["PrimaryIdAttribute"]]
    props = {p.get("Name"): p.get("Type") for p in node.findall(f"{EDM}Property")}
    attrs = served_attributes(env, table)
    assert props == {name: expected_edm(attr) for name, attr in attrs.items()}
    rows = get(env, definition["EntitySetName"]).json()["value"]
    for row in rows:
        assert set(row) - {"@odata.etag"} == set(props)
        for name, edm in props.items():
            assert value_fits(str(edm), row[name]), (table, name, row[name])


def test_money_and_decimal_have_variable_scale(env: DataverseModel) -> None:
    """Edm.Decimal properties carry Scale="Variable", as a real org's revenue does."""
    props = entity_type(metadata(env), "account").findall(f"{EDM}Property")
    decimals = [p for p in props if p.get("Type") == "Edm.Decimal"]
    assert {p.get("Name") for p in decimals} >= {"revenue", "exchangerate"}
    assert all(p.get("Scale") == "Variable" for p in decimals)


def test_entity_sets_match_the_service_document(env: DataverseModel) -> None:
    """One EntitySet per table, named as in the service document, typed Microsoft.Dynamics.CRM.<name>."""
    container = schema_of(metadata(env)).find(f"{EDM}EntityContainer")
    assert container is not None
    sets = {s.get("Name"): s.get("EntityType") for s in container.findall(f"{EDM}EntitySet")}
    listed = {v["name"] for v in get(env, "").json()["value"]} - {"EntityDefinitions"}
    assert set(sets) == listed
    for entity_set, entity in sets.items():
        logical = str(entity).removeprefix("Microsoft.Dynamics.CRM.")
        assert env.table_for_entity_set(str(entity_set)) == logical
    imports = {f.get("Name") for f in container.findall(f"{EDM}FunctionImport")}
    assert imports == {"WhoAmI", "RetrieveTotalRecordCount"}


def tracked_sets(root: ET.Element) -> dict[str, bool]:
    container = schema_of(root).find(f"{EDM}EntityContainer")
    assert container is not None
    out = {}
    for entity_set in container.findall(f"{EDM}EntitySet"):
        note = entity_set.find(f"{EDM}Annotation[@Term='{CHANGE_TRACKING}']")
        supported = (
            note is not None
            and note.find(f"{EDM}Record/{EDM}PropertyValue[@Property='Supported']") is not None
        )
        out[str(entity_set.get("Name"))] = supported
    return out


def test_annotations_mark_change_tracked_sets(env: DataverseModel) -> None:
    """?annotations=true (or Prefer include-annotations="*") adds the ChangeTracking annotation
    to tracked entity sets only, and marks lookup properties read-only; plain $metadata has none."""
    expected = {"accounts": True, "contacts": False, "opportunities": True, "new_projects": True}
    assert tracked_sets(metadata(env, "annotations=true")) == expected
    assert tracked_sets(metadata(env, "", 'odata.include-annotations="*"')) == expected
    plain = metadata(env)
    assert not any(tracked_sets(plain).values())
    assert plain.find(f".//{EDM}Annotation") is None
    annotated = entity_type(metadata(env, "annotations=true"), "account")
    lookup = annotated.find(f"{EDM}Property[@Name='_parentaccountid_value']")
    assert lookup is not None
    terms = {a.get("Term") for a in lookup.findall(f"{EDM}Annotation")}
    assert terms == {"Org.OData.Core.V1.Computed", "Org.OData.Core.V1.Permissions"}
    assert error(get(env, "$metadata", "annotations=maybe"))[0] == 400


def test_added_column_appears_in_metadata(env: DataverseModel) -> None:
    """A column added at runtime is a Property of the right type at once."""
    env.add_column("account", {"name": "new_due", "type": "DateOnly"})
    env.add_column("account", {"name": "new_amount", "type": "Money"})
    props = {
        p.get("Name"): p.get("Type")
        for p in entity_type(metadata(env), "account").findall(f"{EDM}Property")
    }
    assert (props["new_due"], props["new_amount"]) == ("Edm.Date", "Edm.Decimal")


# -- unbound functions --------------------------------------------------------------------

RECORD_COUNT_CONTEXT = f"{BASE}/$metadata#Microsoft.Dynamics.CRM.RetrieveTotalRecordCountResponse"


@pytest.mark.parametrize("path", ["WhoAmI", "WhoAmI()"])
def test_whoami_answers_the_documented_shape(env: DataverseModel, path: str) -> None:
    """WhoAmI and WhoAmI() return exactly the WhoAmIResponse properties and its context."""
    body = get(env, path).json()
    assert body == {
        "@odata.context": f"{BASE}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
        "BusinessUnitId": "bu-1",
        "UserId": "user-1",
        "OrganizationId": "org-1",
    }


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("RetrieveTotalRecordCount(EntityNames=['account','contact'])", ""),
        ("RetrieveTotalRecordCount(EntityNames=%5B%27account%27%2C%27contact%27%5D)", ""),
        ('RetrieveTotalRecordCount(EntityNames=["account","contact"])', ""),
        ("RetrieveTotalRecordCount(EntityNames=@p1)", "@p1=['account','contact']"),
        ("RetrieveTotalRecordCount(EntityNames=@p1)", "@p1=%5B%22account%22%2C%22contact%22%5D"),
    ],
)
def test_record_count_in_every_documented_spelling(
    env: DataverseModel, path: str, query: str
) -> None:
    """Inline lists (either quote, encoded or not) and parameter aliases give the documented
    RetrieveTotalRecordCountResponse."""
    assert get(env, path, query).json() == {
        "@odata.context": RECORD_COUNT_CONTEXT,
        "EntityRecordCountCollection": {
            "Count": 2,
            "IsReadOnly": False,
            "Keys": ["account", "contact"],
            "Values": [12, 12],
        },
    }


@pytest.mark.parametrize(
    ("path", "query", "segment"),
    [
        ("Microsoft.Dynamics.CRM.WhoAmI()", "", "Microsoft.Dynamics.CRM.WhoAmI"),
        ("Microsoft.Dynamics.CRM.WhoAmI", "", "Microsoft.Dynamics.CRM.WhoAmI"),
        (
            "Microsoft.Dynamics.CRM.RetrieveTotalRecordCount(EntityNames=@p1)",
            "@p1=['account']",
            "Microsoft.Dynamics.CRM.RetrieveTotalRecordCount",
        ),
    ],
)
def test_unbound_functions_must_not_use_the_full_name(
    env: DataverseModel, path: str, query: str, segment: str
) -> None:
    """ "Functions that aren't bound must not use the full name": the qualified forms are 404."""
    assert error(get(env, path, query)) == (
        404,
        "0x8006088a",
        f"Resource not found for the segment '{segment}'.",
    )


def test_record_count_errors(env: DataverseModel) -> None:
    """An unknown table is 404 0x80040217; a missing alias or a non-list is 400."""
    missing = error(get(env, "RetrieveTotalRecordCount(EntityNames=['nosuch'])"))
    assert missing[:2] == (404, "0x80040217")
    assert error(get(env, "RetrieveTotalRecordCount(EntityNames=@p1)"))[0] == 400
    assert error(get(env, "RetrieveTotalRecordCount(EntityNames='account')"))[0] == 400
    assert orjson.loads(get(env, "WhoAmI").body)["UserId"] == "user-1"
