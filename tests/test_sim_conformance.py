"""Conformance: a plain HTTP client with an MSAL token follows change tracking through the
simulator the way it follows Dataverse, checked against the admin API's dump of the table.

Third-party clients (Microsoft's SDK, Airbyte's connector) run unmodified from their own venvs in
the opt-in `peers` group: tests/test_peers_*.py.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    admin_rows,
    environment,
    running_simulator,
    token_for,
)

pytestmark = pytest.mark.usefixtures("no_ca_env")

ENV = "contoso_prod"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("sim-conformance")) as ready:
        yield ready


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row without OData annotations (what the admin dump holds)."""
    return {k: v for k, v in row.items() if "@" not in k}


def by_id(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: plain(row) for row in rows}


async def read_all(
    http: aiohttp.ClientSession, url: str, token: str, prefer: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Follow @odata.nextLink to the end; return every entry and the final @odata.deltaLink."""
    entries: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Prefer": prefer}
    next_url: str | None = url
    delta_link = None
    while next_url:
        async with http.get(next_url, headers=headers) as response:
            assert response.status == 200, await response.text()
            page = orjson.loads(await response.read())
        entries.extend(page["value"])
        next_url = page.get("@odata.nextLink")
        delta_link = page.get("@odata.deltaLink", delta_link)
    return entries, delta_link


async def test_delta_read_returns_exactly_the_changes(sim: dict[str, Any]) -> None:
    """After churn, following the delta link yields exactly the changed rows and a tombstone per deleted row."""
    env = environment(sim, ENV)
    token = token_for(sim, ENV)
    url = f"{env['url']}/api/data/v9.2/contacts"
    prefer = "odata.track-changes, odata.maxpagesize=60"
    context = ssl.create_default_context(cafile=sim["ca_file"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        initial, delta_link = await read_all(http, url, token, prefer)
        before = by_id(admin_rows(sim, ENV, "contact"), "contactid")
        assert by_id(initial, "contactid") == before
        assert delta_link is not None

        admin(
            sim,
            "POST",
            f"/environments/{ENV}/tables/contact/churn",
            {"creates": 6, "updates": 9, "deletes": 5, "seed": 3},
        )
        after = by_id(admin_rows(sim, ENV, "contact"), "contactid")

        changes, next_delta = await read_all(http, delta_link, token, prefer)
        tombstones = {
            e["id"] for e in changes if str(e.get("@odata.context", "")).endswith("/$deletedEntity")
        }
        upserts = by_id([e for e in changes if "id" not in e or "contactid" in e], "contactid")
        expected_upserts = {key: row for key, row in after.items() if before.get(key) != row}
        assert upserts == expected_upserts
        assert len(expected_upserts) >= 6
        assert set(before) - set(after) <= tombstones
        assert not tombstones & set(after)
        assert all(e["reason"] == "deleted" for e in changes if "id" in e and "contactid" not in e)

        mirror = by_id(initial, "contactid")
        mirror.update(upserts)
        for key in tombstones:
            mirror.pop(key, None)
        assert mirror == after

        quiet, _ = await read_all(http, next_delta or "", token, prefer)
        assert quiet == []
