"""N:N relationships: the choice of intersect tables (pure), hostile relationship metadata, and
the simulator's intersect tables (associations, disassociations, cascades, the metadata
endpoint and the change-tracking refusal), driven through its Web API model."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sync.errors import HostileResponseError
from sync.mirror.relationships import Relationship, choose, parse_relationship
from sync.simulator.protocol import ApiRequest
from sync.simulator.relationships import RelationshipSpec
from sync.simulator.webapi import DataverseModel, TableSpec

AC = Relationship(
    "new_account_contact", "new_account_contact", "account", "accountid", "contact", "contactid"
)
AO = Relationship(
    "new_account_opp", "new_account_opp", "account", "accountid", "opportunity", "opportunityid"
)
ITEM = {
    "SchemaName": "new_Account_Contact",
    "IntersectEntityName": "new_account_contact",
    "Entity1LogicalName": "account",
    "Entity1IntersectAttribute": "accountid",
    "Entity2LogicalName": "contact",
    "Entity2IntersectAttribute": "contactid",
}


def test_auto_takes_the_nn_between_mirrored_tables_only() -> None:
    plan = choose("auto", [AC, AO, AC], {"account", "contact"})
    assert plan.relationships == (AC,) and plan.tables == ("new_account_contact",)
    assert not plan.warnings


def test_a_list_takes_the_named_nn_and_warns_about_unknown_names() -> None:
    plan = choose(("new_account_opp", "nope"), [AC, AO], {"account"})
    assert plan.tables == ("new_account_opp",)
    assert plan.warnings == (
        "relationship 'nope': no N:N of the mirrored tables has that SchemaName",
    )
    assert choose("none", [AC], {"account", "contact"}).relationships == ()


def test_relationship_metadata_is_parsed_and_unsafe_names_are_hostile() -> None:
    assert parse_relationship(ITEM, "account").row() == (
        "new_Account_Contact",
        "new_account_contact",
        "account",
        "accountid",
        "contact",
        "contactid",
    )
    with pytest.raises(HostileResponseError, match="not a safe identifier"):
        parse_relationship({**ITEM, "IntersectEntityName": 'x"; drop table y'}, "account")
    with pytest.raises(HostileResponseError, match="has no Entity2IntersectAttribute"):
        parse_relationship({**ITEM, "Entity2IntersectAttribute": None}, "account")


def model(**relationship: Any) -> DataverseModel:
    specs = [TableSpec(name="account", rows=6), TableSpec(name="contact", rows=5)]
    spec = RelationshipSpec(
        **(
            {"schema_name": "new_account_contact", "entity1": "account", "entity2": "contact"}
            | relationship
        )
    )
    return DataverseModel(
        specs, 3, retention_days=7, clock=lambda: 1_700_000_000.0, relationships=[spec]
    )


def get(env: DataverseModel, path: str, query: str = "", prefer: str = "") -> tuple[int, Any]:
    headers = {"Prefer": prefer} if prefer else {}
    request = ApiRequest(
        "GET", path, query, headers, "https://org.example/api/data/v9.2", "u", "b", "o"
    )
    response = env.handle(request)
    return response.status, orjson.loads(response.body)


def test_intersect_rows_pair_live_rows_and_never_repeat() -> None:
    env = model(rows=20)
    rows = list(env.dump_rows("new_account_contact"))
    accounts = {r["accountid"] for r in env.dump_rows("account")}
    contacts = {r["contactid"] for r in env.dump_rows("contact")}
    pairs = [(r["accountid"], r["contactid"]) for r in rows]
    assert len(rows) == 20 and len(set(pairs)) == 20
    assert {a for a, _ in pairs} <= accounts and {c for _, c in pairs} <= contacts
    added = env.churn("new_account_contact", creates=6, updates=3, deletes=4, seed=1)
    assert (added["created"], added["updated"], added["deleted"]) == (6, 0, 4)
    after = [(r["accountid"], r["contactid"]) for r in env.dump_rows("new_account_contact")]
    assert len(after) == 22 and len(set(after)) == 22


def test_deleting_related_rows_removes_their_associations_with_tombstones() -> None:
    env = model(rows=30)
    status, first = get(env, "new_account_contactset", prefer="odata.track-changes")
    assert status == 200 and len(first["value"]) == 30
    env.churn("account", creates=0, updates=0, deletes=2, seed=4)
    live = {r["accountid"] for r in env.dump_rows("account")}
    rows = list(env.dump_rows("new_account_contact"))
    assert all(r["accountid"] in live for r in rows) and len(rows) == 20  # 5 contacts each
    link = first["@odata.deltaLink"]
    status, delta = get(env, "new_account_contactset", link.split("?", 1)[1])
    assert status == 200
    gone = [item for item in delta["value"] if item.get("reason") == "deleted"]
    assert len(gone) == 10


def test_the_metadata_lists_the_nn_of_either_table() -> None:
    env = model(entity_set="new_account_contactset")
    select = "SchemaName,IntersectEntityName,Entity2IntersectAttribute"
    for table in ("account", "contact"):
        status, body = get(
            env,
            f"EntityDefinitions(LogicalName='{table}')/ManyToManyRelationships",
            f"$select={select}",
        )
        assert status == 200
        (item,) = body["value"]
        assert item["IntersectEntityName"] == "new_account_contact"
        assert item["Entity2IntersectAttribute"] == "contactid" and "Entity1LogicalName" not in item
    status, entity = get(env, "EntityDefinitions(LogicalName='new_account_contact')")
    assert status == 200 and entity["IsIntersect"] is True
    assert entity["EntitySetName"] == "new_account_contactset"
    status, _ = get(env, "EntityDefinitions(LogicalName='nope')/ManyToManyRelationships")
    assert status == 404


def test_an_intersect_table_without_change_tracking_refuses_tracking() -> None:
    env = model(change_tracking=False, rows=3)
    status, body = get(env, "new_account_contactset", prefer="odata.track-changes")
    assert status == 400 and body["error"]["code"] == "0x80072492"
    status, body = get(env, "new_account_contactset", "$select=accountid,contactid")
    assert status == 200 and len(body["value"]) == 3


class Source:
    """A Web API answering ManyToManyRelationships from a dict (a test double of the client's
    one `get` the discovery uses); it records the URLs asked for."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.urls: list[str] = []

    async def get(self, url: str, *, table: str | None = None, headers: Any = None) -> Any:
        self.urls.append(url)
        return self.answers[str(table)]


def environment(relationships: Any = "auto") -> Any:
    from sync.config.tenants import Environment

    return Environment(
        name="e",
        url="https://org.crm.dynamics.com",
        tables=["account", "contact"],
        relationships=relationships,
    )


def test_discovery_asks_each_table_and_a_hostile_answer_leaves_the_tables_alone() -> None:
    import asyncio

    from sync.mirror.relationships import M2M_SELECT, with_relationships

    good = Source({"account": {"value": [ITEM]}, "contact": {"value": [ITEM]}})
    tables, plan = asyncio.run(
        with_relationships(good, None, environment(), ("account", "contact"))
    )
    assert tables == ("account", "contact", "new_account_contact")
    assert len(plan.relationships) == 1
    assert good.urls == [
        f"https://org.crm.dynamics.com/api/data/v9.2/EntityDefinitions(LogicalName='{t}')"
        f"/ManyToManyRelationships?$select={M2M_SELECT}"
        for t in ("account", "contact")
    ]
    hostile = Source(
        {"account": {"value": [{**ITEM, "Entity1LogicalName": "a b"}]}, "contact": {"value": []}}
    )
    tables, plan = asyncio.run(
        with_relationships(hostile, None, environment(), ("account", "contact"))
    )
    assert tables == ("account", "contact")
    assert plan.warnings and "not a safe identifier" in plan.warnings[0]
    with pytest.raises(HostileResponseError):  # a rediscovery keeps the set it has instead
        asyncio.run(
            with_relationships(hostile, None, environment(), ("account", "contact"), tolerant=False)
        )
    none = Source({})
    tables, _ = asyncio.run(with_relationships(none, None, environment("none"), ("account",)))
    assert tables == ("account",) and none.urls == []


def test_a_cast_without_attributes_of_its_type_still_knows_its_properties() -> None:
    """An intersect table has no DateTime column; the cast's properties still exist (empty)."""
    env = model()
    status, body = get(
        env,
        "EntityDefinitions(LogicalName='new_account_contact')/Attributes/"
        "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
        "$select=LogicalName,Format,DateTimeBehavior",
    )
    assert status == 200 and body["value"] == []
    status, body = get(
        env, "EntityDefinitions(LogicalName='new_account_contact')/Attributes", "$select=Nope"
    )
    assert status == 400
