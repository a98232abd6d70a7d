"""The simulated environments over real HTTPS: authentication, authorisation, service protection and faults."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    environment,
    running_simulator,
    token_for,
    user_stats,
)

pytestmark = pytest.mark.usefixtures("no_ca_env")

CERT_APP = "22222222-2222-2222-2222-222222222222"
PROTECTION_SCENARIO = Path(__file__).parent / "scenarios" / "protection.toml"
TIME_REMAINING = re.compile(r"^\d{1,3}(,\d{3})*\.\d{2}$")


@pytest.fixture(scope="module", name="auth_sim")
def _auth_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim-http-auth")) as ready:
        yield ready


@pytest.fixture(scope="module", name="limits_sim")
def _limits_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(
        PROTECTION_SCENARIO, tmp_path_factory.mktemp("sim-http-limits")
    ) as ready:
        yield ready


def session(sim: dict[str, Any]) -> aiohttp.ClientSession:
    """A client that trusts only the simulator's CA and keeps no cookies (no server affinity)."""
    context = ssl.create_default_context(cafile=sim["ca_file"])
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context), cookie_jar=aiohttp.DummyCookieJar()
    )


def api(sim: dict[str, Any], env: str, path: str = "WhoAmI") -> str:
    return f"{environment(sim, env)['url']}/api/data/v9.2/{path}"


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", **extra}


async def test_missing_token_gets_bearer_challenge(auth_sim: dict[str, Any]) -> None:
    """No Authorization header: 401 with the documented bearer challenge naming authority and resource."""
    env = environment(auth_sim, "contoso_prod")
    async with session(auth_sim) as http, http.get(api(auth_sim, "contoso_prod")) as response:
        assert response.status == 401
        expected = (
            f"Bearer authorization_uri={auth_sim['authority_host']}/{env['tenant']['tenant_id']}/oauth2/authorize, "
            f"resource_id={env['url']}/"
        )
        assert response.headers["WWW-Authenticate"] == expected
        assert response.headers["x-ms-service-request-id"] == response.headers["REQ_ID"]


async def test_empty_and_garbage_tokens_are_401(auth_sim: dict[str, Any]) -> None:
    """An empty bearer token and a token that is not ours both get 401."""
    async with session(auth_sim) as http:
        for header in ("Bearer ", "Bearer not.a.jwt", "Basic abc"):
            async with http.get(
                api(auth_sim, "contoso_prod"), headers={"Authorization": header}
            ) as response:
                assert response.status == 401, header


async def test_token_for_one_environment_is_rejected_by_another(auth_sim: dict[str, Any]) -> None:
    """A valid token minted for contoso_prod is refused (401) by contoso_nouser, another origin of the same tenant."""
    token = token_for(auth_sim, "contoso_prod")
    async with session(auth_sim) as http:
        async with http.get(api(auth_sim, "contoso_prod"), headers=bearer(token)) as response:
            assert response.status == 200
        async with http.get(api(auth_sim, "contoso_nouser"), headers=bearer(token)) as response:
            assert response.status == 401


async def test_no_application_user_is_403_not_member(auth_sim: dict[str, Any]) -> None:
    """A valid token in an environment without an application user for the app gets 403 0x80072560."""
    token = token_for(auth_sim, "contoso_nouser")
    async with (
        session(auth_sim) as http,
        http.get(api(auth_sim, "contoso_nouser"), headers=bearer(token)) as response,
    ):
        assert response.status == 403
        assert orjson.loads(await response.read()) == {
            "error": {
                "code": "0x80072560",
                "message": "The user is not a member of the organization.",
            }
        }


async def test_denied_table_is_403_missing_privilege(auth_sim: dict[str, Any]) -> None:
    """Reading a table the app user may not read gets 403 0x80040220 naming prvReadContact and the entity."""
    token = token_for(auth_sim, "contoso_prod")
    async with session(auth_sim) as http:
        async with http.get(
            api(auth_sim, "contoso_prod", "contacts"), headers=bearer(token)
        ) as response:
            assert response.status == 403
            error = orjson.loads(await response.read())["error"]
        async with http.get(
            api(auth_sim, "contoso_prod", "accounts?$top=1"), headers=bearer(token)
        ) as response:
            assert response.status == 200
    assert error["code"] == "0x80040220"
    assert error["message"].startswith("Principal user (Id=")
    assert "type=8" in error["message"]
    assert "is missing prvReadContact privilege" in error["message"]
    assert "for entity 'contact'" in error["message"]


async def test_impersonation_needs_the_privilege(auth_sim: dict[str, Any]) -> None:
    """CallerObjectId/MSCRMCallerID get 403 0x8004A110 unless the app user may act on behalf of others."""
    someone = "33333333-3333-3333-3333-333333333333"
    denied_token = token_for(auth_sim, "contoso_prod")
    allowed_token = token_for(auth_sim, "contoso_prod", client_id=CERT_APP)
    async with session(auth_sim) as http:
        for header in ("CallerObjectId", "MSCRMCallerID"):
            headers = bearer(denied_token, **{header: someone})
            async with http.get(api(auth_sim, "contoso_prod"), headers=headers) as response:
                assert response.status == 403
                assert orjson.loads(await response.read())["error"]["code"] == "0x8004A110"
        headers = bearer(allowed_token, CallerObjectId=someone)
        async with http.get(api(auth_sim, "contoso_prod"), headers=headers) as response:
            assert response.status == 200


async def test_every_answer_carries_rate_headers_and_affinity(auth_sim: dict[str, Any]) -> None:
    """A normal answer has the documented rate headers, request ids, OData-Version and the ARRAffinity cookie."""
    token = token_for(auth_sim, "contoso_prod")
    async with (
        session(auth_sim) as http,
        http.get(api(auth_sim, "contoso_prod"), headers=bearer(token)) as response,
    ):
        assert response.status == 200
        assert int(response.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) < 6000
        assert TIME_REMAINING.match(response.headers["x-ms-ratelimit-time-remaining-xrm-requests"])
        assert response.headers["x-ms-dop-hint"] == "8"
        assert response.headers["OData-Version"] == "4.0"
        assert "x-ms-service-request-id" in response.headers
        assert "ARRAffinity=" in response.headers["Set-Cookie"]
        body = orjson.loads(await response.read())
        assert body["UserId"] and body["OrganizationId"] and body["BusinessUnitId"]


async def test_token_expired_early_is_401(auth_sim: dict[str, Any]) -> None:
    """With early token expiry injected, a token that worked is refused with 401 from then on."""
    token = token_for(auth_sim, "fabrikam_prod")
    async with session(auth_sim) as http:
        async with http.get(api(auth_sim, "fabrikam_prod"), headers=bearer(token)) as response:
            assert response.status == 200
        admin(
            auth_sim, "POST", "/faults", {"environment": "fabrikam_prod", "early_token_expiry": 1.0}
        )
        try:
            async with http.get(api(auth_sim, "fabrikam_prod"), headers=bearer(token)) as response:
                assert response.status == 401
        finally:
            admin(
                auth_sim,
                "POST",
                "/faults",
                {"environment": "fabrikam_prod", "early_token_expiry": 0.0},
            )
        async with http.get(api(auth_sim, "fabrikam_prod"), headers=bearer(token)) as response:
            assert response.status == 401  # once expired, always expired


async def test_request_count_429_body_and_headers(limits_sim: dict[str, Any]) -> None:
    """The fourth request in a 2-second window of 3 gets 429 0x80072322 with the exact message, Retry-After and rate headers."""
    token = token_for(limits_sim, "count_env")
    statuses = []
    async with session(limits_sim) as http:
        for _ in range(4):
            async with http.get(api(limits_sim, "count_env"), headers=bearer(token)) as response:
                statuses.append(response.status)
                last_headers, last_body = response.headers, await response.read()
    assert statuses == [200, 200, 200, 429]
    assert orjson.loads(last_body) == {
        "error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 3 over time window of 2 seconds.",
        }
    }
    assert 1 <= int(last_headers["Retry-After"]) <= 2
    assert last_headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "0"
    assert "x-ms-dop-hint" in last_headers


@pytest.mark.slow
async def test_client_ignoring_retry_after_shows_as_violations(limits_sim: dict[str, Any]) -> None:
    """An obedient client has no violations; one that retries every 0.4 s regardless of Retry-After is counted."""
    token = token_for(limits_sim, "count_env")
    admin(limits_sim, "POST", "/stats/reset")
    async with session(limits_sim) as http:
        admitted = 0
        while admitted < 5:
            async with http.get(api(limits_sim, "count_env"), headers=bearer(token)) as response:
                if response.status == 429:
                    await asyncio.sleep(int(response.headers["Retry-After"]))
                else:
                    assert response.status == 200
                    admitted += 1
        obedient = user_stats(limits_sim, "count_env")
        assert obedient["throttled"]["0x80072322"] >= 1
        assert obedient["violations"] == 0
        for _ in range(8):
            async with http.get(api(limits_sim, "count_env"), headers=bearer(token)) as response:
                await response.read()
            await asyncio.sleep(0.4)
    pushy = user_stats(limits_sim, "count_env")
    assert pushy["violations"] >= 1
    assert pushy["requests"] == pushy["admitted"] + sum(pushy["throttled"].values())


async def test_concurrency_excess_is_refused_at_once(limits_sim: dict[str, Any]) -> None:
    """Four parallel 400 ms requests against a concurrency limit of 2: two succeed, two get 0x80072326."""
    token = token_for(limits_sim, "concurrency_env")

    async def one(http: aiohttp.ClientSession) -> tuple[int, bytes]:
        async with http.get(api(limits_sim, "concurrency_env"), headers=bearer(token)) as response:
            return response.status, await response.read()

    async with session(limits_sim) as http:
        results = await asyncio.gather(*(one(http) for _ in range(4)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 429, 429]
    for status, body in results:
        if status == 429:
            assert orjson.loads(body)["error"] == {
                "code": "0x80072326",
                "message": "Number of concurrent requests exceeded the limit of 2.",
            }
    assert user_stats(limits_sim, "concurrency_env")["max_concurrency"] == 2


async def test_execution_time_budget_429(limits_sim: dict[str, Any]) -> None:
    """Requests costing 30 ms against a 50 ms budget: the third gets 0x80072321 with the configured numbers."""
    token = token_for(limits_sim, "execution_env")
    async with session(limits_sim) as http:
        statuses = []
        for _ in range(3):
            async with http.get(
                api(limits_sim, "execution_env"), headers=bearer(token)
            ) as response:
                statuses.append(response.status)
                body = await response.read()
    assert statuses == [200, 200, 429]
    message = orjson.loads(body)["error"]["message"]
    assert message.startswith(
        "Combined execution time of incoming requests exceeded limit of 50  milliseconds over time window of 30 seconds."
    )


async def test_injected_server_faults(limits_sim: dict[str, Any]) -> None:
    """Switched-on faults give 503, the SQL deadlock 500, a reset mid-body and a truncated JSON body."""
    token = token_for(limits_sim, "faulty_env")
    url = api(limits_sim, "faulty_env", "accounts")

    def switch(kind: str, rate: float) -> None:
        admin(limits_sim, "POST", "/faults", {"environment": "faulty_env", kind: rate})

    async with session(limits_sim) as http:
        switch("http_503", 1.0)
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 503
        switch("http_503", 0.0)
        switch("sql_deadlock", 1.0)
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 500
            error = orjson.loads(await response.read())["error"]
            assert error["code"] == "0x80044150"
            assert "Sql Number: 1205" in error["message"]
        switch("sql_deadlock", 0.0)
        switch("reset_mid_body", 1.0)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(url, headers=bearer(token)) as response:
                await response.read()
        switch("reset_mid_body", 0.0)
        switch("truncated_json", 1.0)
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(await response.read())
        switch("truncated_json", 0.0)
        async with http.get(url, headers=bearer(token)) as response:
            assert response.status == 200
            assert orjson.loads(await response.read())["value"]


#: One environment whose pages cost by the row: 50 ms per full row, nothing per request.
COLUMNS_SCENARIO = """
seed = 3
[[apps]]
client_id = "11111111-1111-1111-1111-111111111111"
home_tenant = "contoso"
[[tenants]]
name = "contoso"
tenant_id = "aaaaaaaa-0000-0000-0000-000000000001"
domain = "contoso.onmicrosoft.com"
[[tenants.environments]]
name = "columns_env"
application_users = ["11111111-1111-1111-1111-111111111111"]
[tenants.environments.limits]
execution_seconds = 100
window = 300
base_ms = 0
per_row_ms = 50
[[tenants.environments.tables]]
name = "account"
rows = 30
"""


async def test_execution_time_follows_the_columns_selected(tmp_path: Path) -> None:
    """A key-only page ($select=accountid) of 30 rows is charged one column's share of the full
    page (22 columns): seen in the time-remaining header, in /stats and in the real delay."""
    scenario = tmp_path / "columns.toml"
    scenario.write_text(COLUMNS_SCENARIO)
    with running_simulator(scenario, tmp_path / "state") as sim:
        token = token_for(sim, "columns_env")
        pages = api(sim, "columns_env", "accounts")

        async def remaining(http: aiohttp.ClientSession) -> float:
            """The time left in the window (a WhoAmI costs nothing here: base_ms = 0)."""
            async with http.get(api(sim, "columns_env"), headers=bearer(token)) as response:
                assert response.status == 200
                header = response.headers["x-ms-ratelimit-time-remaining-xrm-requests"]
                return float(header.replace(",", ""))

        async def page(http: aiohttp.ClientSession, query: str) -> tuple[float, float]:
            """(execution seconds charged, wall seconds taken) of one page."""
            before = user_stats(sim, "columns_env")["execution_seconds"]
            started = asyncio.get_running_loop().time()
            async with http.get(f"{pages}{query}", headers=bearer(token)) as response:
                assert response.status == 200
                assert len(orjson.loads(await response.read())["value"]) == 30
            took = asyncio.get_running_loop().time() - started
            return user_stats(sim, "columns_env")["execution_seconds"] - before, took

        async with session(sim) as http:
            assert await remaining(http) == 100.0
            key_only, key_wall = await page(http, "?$select=accountid")
            after_key = await remaining(http)
            full, full_wall = await page(http, "")
            after_full = await remaining(http)
            two, _ = await page(http, "?$select=name")
    assert full == pytest.approx(30 * 0.05, abs=0.002)  # every column: the full cost
    assert key_only == pytest.approx(full / 22, abs=0.002)  # one column of account's 22
    assert two == pytest.approx(2 * full / 22, abs=0.002)  # name and the key
    assert 100.0 - after_key == pytest.approx(key_only, abs=0.01)
    assert after_key - after_full == pytest.approx(full, abs=0.01)
    assert full_wall >= full and key_wall < full / 2  # the modelled time is really spent
