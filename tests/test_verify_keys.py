"""How verify asks for listed keys: `Microsoft.Dynamics.CRM.In(PropertyName=…,PropertyValues=[…])`
(Dataverse's query function; `$filter` has no `in` operator), in chunks as big as the 32,768-char
GET URL allows with room for a next link's `$skiptoken`.

Pure chunking; the simulator's model serving the function and refusing OData 4.01's `in` as a
syntax error (400, code 0x0); and the governed client reading a few thousand listed keys over
HTTPS in as few requests as fit, none refused.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yarl

from sync.config.model import Config
from sync.dataverse.auth import TokenProviders
from sync.governor.gate import Governor
from sync.mirror.cursor import QUERY_SAFE, collection_url
from sync.mirror.discovery import discover_table
from sync.mirror.fetch import ExactClient
from sync.mirror.rowshape import RowShaper
from sync.simulator.dataset import TableSpec
from sync.simulator.filters import InList, evaluate, parse_filter
from sync.simulator.protocol import ApiError
from sync.simulator.webapi import DataverseModel
from sync.verify import source
from sync.verify.plan import MAX_URL, NEXT_LINK_ROOM, URL_LIMIT, key_chunks, key_filter
from tests.h3_helpers import write_config
from tests.simfixtures import (  # noqa: F401
    _no_ca_env,
    admin,
    admin_rows,
    environment,
    running_simulator,
    token_for,
    user_stats,
)
from tests.test_sim_webapi import error, get, read_all, rows_of

BASE = "https://contoso-prod.crm4.dynamics.com"


def guids(count: int, seed: int = 7) -> list[str]:
    return [str(uuid.UUID(int=(seed << 100) + n * 7919)) for n in range(count)]


def test_the_filter_is_dataverses_in_function() -> None:
    keys = guids(2)
    assert key_filter("accountid", keys) == (
        "Microsoft.Dynamics.CRM.In(PropertyName='accountid',"
        f"PropertyValues=['{keys[0]}','{keys[1]}'])"
    )


def test_chunks_fill_the_url_and_leave_room_for_the_next_link() -> None:
    """15,000 keys: every URL (with its base and `$select`) within 32,768 − the next link's
    room, each chunk but the last too full for one more key, every key once, in order."""
    keys = guids(15_000)
    base = collection_url(BASE, "accounts", [("$select", "accountid,versionnumber")])
    room = MAX_URL - len(base) - len("&$filter=")
    chunks = list(key_chunks("accountid", keys, room=room))
    assert [k for chunk in chunks for k in chunk] == keys
    per_key = len(quote(f"'{keys[0]}',", safe=QUERY_SAFE))
    for chunk in chunks:
        url = f"{base}&$filter={quote(key_filter('accountid', chunk), safe=QUERY_SAFE)}"
        assert len(url) <= URL_LIMIT - NEXT_LINK_ROOM
    for chunk in chunks[:-1]:
        url = f"{base}&$filter={quote(key_filter('accountid', chunk), safe=QUERY_SAFE)}"
        assert len(url) + per_key > URL_LIMIT - NEXT_LINK_ROOM  # one more would not fit
    assert len(chunks) == math.ceil(15_000 / len(chunks[0]))
    assert len(chunks[0]) > 700  # 39 characters a GUID: about 780 a URL


def test_no_room_for_one_key_is_an_error_not_an_empty_request() -> None:
    with pytest.raises(ValueError, match="fits"):
        list(key_chunks("accountid", guids(1), room=40))


# -- the simulator's model ------------------------------------------------------------------


@pytest.fixture(name="model")
def _model() -> DataverseModel:
    return DataverseModel([TableSpec(name="account", rows=300)], 23, retention_days=7)


def test_the_simulator_parses_what_verify_sends() -> None:
    keys = [k.upper() for k in guids(3)]
    node = parse_filter(key_filter("accountid", keys))
    assert isinstance(node, InList) and node.prop == "accountid"
    assert node.values == tuple(keys)
    assert evaluate(node, {"accountid": keys[1].lower()}.get)  # GUIDs in any case
    assert not evaluate(node, {"accountid": guids(1, seed=9)[0]}.get)


@pytest.mark.parametrize(
    ("text", "record", "expected"),
    [
        ("Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['A','b'])", "a", True),
        ('Microsoft.Dynamics.CRM.In(PropertyName="name",PropertyValues=["x"])', "x", None),
        ('Microsoft.Dynamics.CRM.In(PropertyValues=["x","y"],PropertyName=\'name\')', "y", True),
        ("Microsoft.Dynamics.CRM.In(PropertyName='n',PropertyValues=['5','7'])", 7, True),
        ("Microsoft.Dynamics.CRM.In(PropertyName='n',PropertyValues=['5'])", None, False),
        ("not Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['a'])", "b", True),
    ],
)
def test_in_function_forms(text: str, record: Any, expected: bool | None) -> None:
    """Both parameters in either order, values in single or JSON double quotes; PropertyName is
    an Edm.String (single quotes only); numbers compare as numbers, null matches nothing."""
    if expected is None:
        with pytest.raises(ApiError):
            parse_filter(text)
        return
    node = parse_filter(text)
    assert evaluate(node, {"name": record, "n": record}.get) is expected


@pytest.mark.parametrize(
    "text",
    [
        "accountid in ('00000000-0000-0000-0000-000000000001')",  # OData 4.01's `in` operator
        "Microsoft.Dynamics.CRM.In(PropertyName='name')",
        "Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=[])",
        "Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['a',])",
        "Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyName='x',PropertyValues=['a'])",
        "Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=['a']",
    ],
)
def test_malformed_in_and_the_4_01_in_operator_are_syntax_errors(text: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_filter(text)
    assert (caught.value.status, caught.value.code) == (400, "0x0")
    assert caught.value.message.startswith("Syntax error at position ")


def test_the_model_serves_in_and_refuses_the_in_operator(model: DataverseModel) -> None:
    rows = rows_of(read_all(model, "accounts", "$select=accountid,versionnumber"))
    wanted = [r["accountid"] for r in rows[10:40]] + guids(5, seed=11)  # 5 that do not exist
    query = "$select=accountid&$filter=" + quote(key_filter("accountid", wanted), safe=QUERY_SAFE)
    found = rows_of(read_all(model, "accounts", query))
    assert sorted(r["accountid"] for r in found) == sorted(r["accountid"] for r in rows[10:40])

    listed = ",".join(f"'{k}'" for k in wanted[:3])
    refused = get(model, "accounts", f"$select=accountid&$filter=accountid in ({listed})")
    status, code, message = error(refused)
    assert (status, code) == (400, "0x0")
    assert message.startswith("Syntax error at position 10 in 'accountid in (")

    unknown = get(model, "accounts", "$filter=" + key_filter("nosuchcolumn", wanted[:1]))
    assert error(unknown)[:2] == (400, "0x0")
    assert "nosuchcolumn" in error(unknown)[2]


# -- over HTTPS, through the governed client --------------------------------------------------


@pytest.fixture(scope="module", name="ready")
def _ready(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_simulator(
        Path(__file__).parent / "scenarios" / "client.toml", tmp_path_factory.mktemp("sim")
    ) as ready:
        yield ready


def exact_client(config: Config, env_name: str) -> ExactClient:
    tenant, environment = next((t, e) for t, e in config.environments() if e.name == env_name)
    return ExactClient(
        tenant,
        environment,
        TokenProviders(config).for_tenant(tenant),
        Governor(env_name),
        ca_bundle=config.app_for(tenant).ca_bundle,
    )


@pytest.mark.usefixtures("no_ca_env")
async def test_thousands_of_listed_keys_take_as_few_requests_as_fit(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """2,000 keys (the table's 100 among them): `versions_of` and `rows_of` each read them in
    ⌈2,000 / keys per URL⌉ requests, find exactly the 100 that exist, with their versions, and
    the simulator refused nothing (no 414, no 400)."""
    config = write_config(tmp_path, ready, environments=["beta_env"])
    existing = {
        r["accountid"]: r["versionnumber"] for r in admin_rows(ready, "beta_env", "account")
    }
    assert len(existing) == 100
    keys = sorted([*existing, *guids(1_900, seed=13)])
    admin(ready, "POST", "/stats/reset")
    async with exact_client(config, "beta_env") as client:
        schema = await discover_table(client, client.environment.url, "account")
        before = user_stats(ready, "beta_env")["requests"]
        measured = source.Measured()
        versions = await source.versions_of(client, client.environment.url, schema, keys, measured)
        asked = user_stats(ready, "beta_env")["requests"] - before
        chunks = await source.rows_of(client, client.environment.url, RowShaper(schema), keys)
    assert versions == {k.lower(): int(v) for k, v in existing.items()}
    select = [("$select", "accountid,versionnumber")]
    base = collection_url(client.environment.url, schema.entity_set, select)
    per_url = len(next(key_chunks("accountid", keys, room=MAX_URL - len(base) - 9)))
    assert asked == math.ceil(2_000 / per_url) <= 3
    assert sum(len(c) for c in chunks) == 100
    rejections = next(
        e for e in admin(ready, "GET", "/stats")["environments"] if e["environment"] == "beta_env"
    )["rejections"]
    assert not rejections, rejections


@pytest.mark.usefixtures("no_ca_env")
async def test_a_url_of_32768_characters_is_served_and_one_more_is_refused(
    ready: dict[str, Any],
) -> None:
    """The limit is the documented 32,768 characters (reference 2.1): an In filter padded to
    exactly that is answered (200), one character more is refused with 414 before sign-in is
    even looked at. The verify client keeps its URLs NEXT_LINK_ROOM below it."""
    env = environment(ready, "beta_env")
    token = await asyncio.to_thread(token_for, ready, "beta_env")
    context = ssl.create_default_context(cafile=ready["ca_file"])
    path = "/api/data/v9.2/accounts?$select=accountid&$filter="
    keys: list[str] = []
    for key in guids(2_000, seed=17):
        encoded = quote(key_filter("accountid", [*keys, key]), safe=QUERY_SAFE)
        if len(path) + len(encoded) > URL_LIMIT - 10:
            break
        keys.append(key)
    query = path + quote(key_filter("accountid", keys), safe=QUERY_SAFE)
    exact = query + "&x=" + "y" * (URL_LIMIT - len(query) - 3)
    assert len(exact) == URL_LIMIT
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.get(yarl.URL(env["url"] + exact, encoded=True), headers=headers) as reply:
            assert reply.status == 200, (await reply.text())[:300]
            assert (await reply.json())["value"] == []
        longer = yarl.URL(env["url"] + exact + "y", encoded=True)
        async with http.get(longer, headers=headers) as reply:
            assert reply.status == 414
            assert "32768" in await reply.text()
