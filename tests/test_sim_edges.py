"""The simulator's data edge cases, at the model and over HTTPS: rows restored under their old
ids, columns deleted and created again, the edge-value and 400-column tables, and the 32 KB
GET URL limit (reference 2.1)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from sync.simulator.dataset import TableSpec
from sync.simulator.edgevalues import MEMO_EDGES, MONEY_EDGES
from sync.simulator.webapi import DataverseModel
from tests.simfixtures import _no_ca_env, environment, running_simulator, token_for  # noqa: F401
from tests.test_sim_webapi import TRACK, Clock, error, follow, get, read_all, rows_of, strip

pytestmark = pytest.mark.usefixtures("no_ca_env")
EDGE_SCENARIO = Path(__file__).parent / "scenarios" / "edge_data.toml"


@pytest.fixture(name="people")
def _people(clock: Clock) -> DataverseModel:
    specs = [TableSpec(name="new_person", rows=300), TableSpec(name="new_inspection", rows=20)]
    return DataverseModel(specs, 61, retention_days=7, clock=clock)


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


def delta_token(env: DataverseModel, entity_set: str) -> str:
    pages = read_all(env, entity_set, "$select=new_name", TRACK)
    link: str = pages[-1]["@odata.deltaLink"]
    return link


def test_a_restored_row_comes_after_its_upsert_as_a_tombstone_too(people: DataverseModel) -> None:
    """Deleted, then restored under its id: a delta over the stretch lists the row (upserts
    first) and, after it, the row's tombstone, as the service orders changes (reference 4.3)."""
    link = delta_token(people, "new_people")
    people.churn("new_person", creates=0, updates=0, deletes=4, seed=1)
    restored = people.restore("new_person", 2)["restored"]
    items = rows_of([follow(people, link, TRACK).json()])
    keys = [item.get("new_personid") or item.get("id") for item in items]
    for key in restored:
        row_at = next(i for i, item in enumerate(items) if item.get("new_personid") == key)
        tombstone_at = next(i for i, item in enumerate(items) if item.get("id") == key)
        assert row_at < tombstone_at, keys
    assert len([i for i in items if "id" in i]) == 4  # every deletion is still reported
    dumped = {row["new_personid"] for row in people.dump_rows("new_person")}
    assert set(restored) <= dumped
    assert people.row_count("new_person") == 300 - 4 + 2


def test_a_deleted_column_is_gone_and_the_others_keep_their_values(
    people: DataverseModel,
) -> None:
    before = list(people.dump_rows("new_person"))
    people.remove_column("new_person", "new_rank")
    after = list(people.dump_rows("new_person"))
    assert [{k: v for k, v in r.items() if k != "new_rank"} for r in before] == after
    status, code, message = error(get(people, "new_people", "$select=new_rank"))
    assert (status, code) == (400, "0x0") and "new_rank" in message
    names = {
        a["LogicalName"]
        for a in get(people, "EntityDefinitions(LogicalName='new_person')/Attributes").json()[
            "value"
        ]
    }
    assert "new_rank" not in names and "new_salary" in names
    with pytest.raises(ValueError, match="not a custom column"):
        people.remove_column("new_person", "createdon")


def test_a_column_created_again_is_a_new_attribute_with_every_value_empty(
    people: DataverseModel,
) -> None:
    path = "EntityDefinitions(LogicalName='new_person')/Attributes"

    def metadata_id() -> str:
        items = get(people, path, "$select=LogicalName").json()["value"]
        return str(next(a["MetadataId"] for a in items if a["LogicalName"] == "new_rank"))

    first = metadata_id()
    people.remove_column("new_person", "new_rank")
    people.add_column("new_person", {"name": "new_rank", "type": "Integer"})
    assert metadata_id() != first
    assert all(row["new_rank"] is None for row in people.dump_rows("new_person"))
    people.churn("new_person", creates=0, updates=10, deletes=0, seed=2)
    assert sum(row["new_rank"] is not None for row in people.dump_rows("new_person")) == 10


def test_edge_values_render_exactly_under_an_entity_set_name_unlike_the_logical_name(
    people: DataverseModel,
) -> None:
    definition = get(people, "EntityDefinitions(LogicalName='new_person')").json()
    assert (definition["LogicalName"], definition["EntitySetName"]) == ("new_person", "new_people")
    assert get(people, "new_persons").status == 404
    body = get(people, "new_people", "$select=new_salary,new_biography").body
    for money in MONEY_EDGES:
        assert f'"new_salary":{money:.4f}'.encode() in body
    assert b"\\u0000" in body and b"\x00" not in body  # NUL travels escaped, never raw
    rows = [strip(r) for r in rows_of(read_all(people, "new_people", "$select=new_biography"))]
    assert set(MEMO_EDGES) <= {r["new_biography"] for r in rows}


def test_the_wide_table_has_400_columns(people: DataverseModel) -> None:
    rows = rows_of(read_all(people, "new_inspections"))
    assert {len(strip(r)) for r in rows} == {400}


async def test_a_select_of_400_columns_passes_and_a_url_over_32_kb_is_refused(
    tmp_path: Path,
) -> None:
    with running_simulator(EDGE_SCENARIO, tmp_path / "sim") as sim:
        env = environment(sim, "edge_env")
        token = await asyncio.to_thread(token_for, sim, "edge_env")
        context = ssl.create_default_context(cafile=sim["ca_file"])
        base = f"{env['url']}/api/data/v9.2"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            names = "EntityDefinitions(LogicalName='new_inspection')/Attributes"
            async with http.get(
                f"{base}/{names}?$select=LogicalName,AttributeType,AttributeOf,IsValidODataAttribute",
                headers=headers,
            ) as reply:
                attributes = (await reply.json())["value"]
            select = ",".join(
                a["LogicalName"]
                for a in attributes
                if a.get("AttributeOf") is None
                and a["IsValidODataAttribute"]
                and a["AttributeType"] not in ("Lookup", "Owner", "Customer")
            )
            assert len(select) > 12_000
            url = f"{base}/new_inspections?$select={select}&$top=2"
            async with http.get(url, headers=headers) as reply:
                assert reply.status == 200, await reply.text()
            filler = quote("x" * 33_000)
            async with http.get(f"{base}/new_inspections?$select={filler}", headers=headers) as r:
                assert r.status == 414
                assert "32768" in await r.text()
