"""The Dataverse client: real HTTPS against the simulator, and small local servers for hostile
cases (a nextLink to another origin, 401 then 200, 503s, garbage bodies, a stalled server)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.dataverse.auth import TokenProviders
from sync.dataverse.client import DataverseClient
from sync.dataverse.odata import collection_url
from sync.dataverse.seams import RetryPolicy
from sync.errors import (
    AuthError,
    ForeignLinkError,
    HostileResponseError,
    ImpersonationError,
    TableError,
)
from sync.governor.gate import Governor
from tests.h3_helpers import write_config
from tests.simfixtures import admin, running_simulator, user_stats

FAST_RETRY = RetryPolicy(attempts=3, max_delay=10, backoff_initial=0.01, backoff_max=0.05)


# -- against the simulator -----------------------------------------------------------------


@pytest.fixture(scope="module", name="ready")
def _ready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(
        Path(__file__).parent / "scenarios" / "client.toml", tmp_path_factory.mktemp("sim")
    ) as ready:
        yield ready


@pytest.fixture(scope="module", name="auth_ready")
def _auth_ready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim_auth")) as ready:
        yield ready


def client_for(
    config: Config, env_name: str, providers: TokenProviders, **kwargs: Any
) -> DataverseClient:
    tenant, environment = next((t, e) for t, e in config.environments() if e.name == env_name)
    governor = kwargs.pop("governor", None) or Governor(env_name)
    return DataverseClient(
        tenant,
        environment,
        providers.for_tenant(tenant),
        governor,
        ca_bundle=config.app_for(tenant).ca_bundle,
        **kwargs,
    )


async def scan(client: DataverseClient, table: str = "account", page_size: int = 10) -> int:
    rows = 0
    url = collection_url(client.environment.url, "accounts")
    async for page in client.pages(url, table=table, page_size=page_size):
        rows += len(page.rows)
    return rows


async def test_whoami_and_paging(ready: dict[str, Any], tmp_path: Path) -> None:
    """WhoAmI answers with the app user's ids; a scan follows every nextLink to the end."""
    config = write_config(tmp_path, ready, environments=["beta_env"])
    async with client_for(config, "beta_env", TokenProviders(config)) as client:
        who = await client.whoami()
        assert who["UserId"] and who["OrganizationId"]
        assert await scan(client) == 100


async def test_many_workers_under_tight_limits_have_zero_violations(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """Eight workers sharing one governor read 80 pages from an environment allowing 30
    requests per 3 s and 6 at once: every row arrives and the simulator counts no violation."""
    config = write_config(tmp_path, ready, environments=["alpha_env"])
    admin(ready, "POST", "/stats/reset")
    governor = Governor("alpha_env")
    async with client_for(config, "alpha_env", TokenProviders(config), governor=governor) as client:
        totals = await asyncio.gather(*(scan(client) for _ in range(8)))
    assert totals == [100] * 8
    stats = user_stats(ready, "alpha_env")
    assert stats["violations"] == 0
    assert stats["max_concurrency"] <= 6
    assert stats["throttled_total"] <= 3, stats


class _ThrottledWhileConnecting:
    """The real governor, except that right after granting the first slot it reads a 429
    (Retry-After 1 s) as if another request's had just come back: the moment between a grant
    and the write that a new connection's handshakes stretch out."""

    def __init__(self, governor: Governor) -> None:
        self.governor = governor
        self.injected_at: float | None = None

    @contextlib.asynccontextmanager
    async def slot(self, cost_class: str = "") -> AsyncIterator[Any]:
        async with self.governor.slot(cost_class) as slot:
            if self.injected_at is None:
                self.injected_at = time.monotonic()
                self.governor.observe(429, {"Retry-After": "1"}, error_code="0x80072322")
            yield slot


async def test_a_slot_granted_before_a_429_is_recalled_at_the_last_look(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """A request whose slot was granted before a 429 arrived, and which had not been written
    yet, is held back by the connector's last look: it leaves only after the Retry-After, the
    simulator sees nothing inside the window, and the recalled slot counts nowhere."""
    config = write_config(tmp_path, ready, environments=["beta_env"])
    admin(ready, "POST", "/stats/reset")
    gate = _ThrottledWhileConnecting(Governor("beta_env"))
    async with client_for(config, "beta_env", TokenProviders(config), governor=gate) as client:
        await client.whoami()
    assert gate.injected_at is not None
    assert time.monotonic() - gate.injected_at >= 1.0
    core = gate.governor.core
    assert core.stats.recalled == 1
    assert core.stats.requests == 1
    log = admin(ready, "GET", f"/environments/beta_env/arrivals?client_id={ready['client_id']}")
    assert len(log["arrivals"]) == 1  # the recalled attempt never reached the server


async def test_one_environments_throttling_does_not_slow_another(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """While alpha_tight's governor waits out its spent budget, beta_env (another tenant, its
    own governor and token) reads its whole table."""
    config = write_config(tmp_path, ready, environments=["alpha_tight", "beta_env"])
    admin(ready, "POST", "/stats/reset")
    providers = TokenProviders(config)
    async with (
        client_for(config, "alpha_tight", providers) as alpha,
        client_for(config, "beta_env", providers) as beta,
    ):
        # 20 rows in pages of 2 = 10 requests; alpha_tight allows 3 per 60 s.
        alpha_task = asyncio.create_task(scan(alpha, page_size=2))
        core = alpha.governor.core
        while (core.available(time.monotonic()) or 1) >= 1 or core.in_flight:
            await asyncio.sleep(0.01)  # until alpha's governor holds its requests back
        assert await scan(beta) == 100
        assert not alpha_task.done()
        assert beta.governor.core.stats.paused_seconds == 0
        alpha_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await alpha_task
    environments = {e["environment"]: e for e in admin(ready, "GET", "/stats")["environments"]}
    assert environments["beta_env"]["rejections"].get("401_invalid_token", 0) == 0
    assert environments["alpha_tight"]["rejections"].get("401_invalid_token", 0) == 0


async def test_tokens_are_per_environment(ready: dict[str, Any], tmp_path: Path) -> None:
    """Each environment gets a token for its own scope; a token is never reused across them."""
    config = write_config(tmp_path, ready, environments=["alpha_env", "beta_env"])
    providers = TokenProviders(config)
    tokens = []
    for tenant, environment in config.environments():
        tokens.append(await providers.for_tenant(tenant).token(f"{environment.url}/.default"))
    assert len(set(tokens)) == 2


async def test_impersonation_without_privilege(auth_ready: dict[str, Any], tmp_path: Path) -> None:
    """Reading with CallerObjectId when the app user may not impersonate is an ImpersonationError."""
    config = write_config(tmp_path, auth_ready, environments=["contoso_prod"])
    async with client_for(config, "contoso_prod", TokenProviders(config)) as client:
        url = collection_url(client.environment.url, "accounts")
        with pytest.raises(ImpersonationError):
            await client.page(
                url, table="account", impersonate="99999999-0000-0000-0000-000000000001"
            )


async def test_denied_table_is_a_table_error(auth_ready: dict[str, Any], tmp_path: Path) -> None:
    """A table the application user may not read fails that table only (TableError)."""
    config = write_config(tmp_path, auth_ready, environments=["contoso_prod"])
    async with client_for(config, "contoso_prod", TokenProviders(config)) as client:
        with pytest.raises(TableError) as caught:
            await client.page(collection_url(client.environment.url, "contacts"), table="contact")
    assert caught.value.code == "0x80040220"


# -- against small local servers -------------------------------------------------------------


class CountingTokens:
    """A token source for local servers (the seam the client takes; not our auth module)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def token(self, scope: str, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return f"token-{len(self.calls)}"


def local_environment(url: str) -> tuple[Tenant, Environment]:
    context = {"allow_insecure": True}
    environment = Environment.model_validate({"name": "local", "url": url}, context=context)
    tenant = Tenant.model_validate(
        {
            "name": "local",
            "tenant_id": "aaaaaaaa-0000-0000-0000-000000000001",
            "environments": [{"name": "local", "url": url}],
        },
        context=context,
    )
    return tenant, environment


async def serve(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture(name="recorder")
async def _recorder() -> AsyncIterator[tuple[TestServer, list[dict[str, str]]]]:
    """Another origin that records the headers of every request it receives."""
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"value": []})

    server = await serve(record)
    yield server, seen
    await server.close()


async def local_client(
    server: TestServer, tokens: CountingTokens, **kwargs: Any
) -> DataverseClient:
    tenant, environment = local_environment(str(server.make_url("")).rstrip("/"))
    return DataverseClient(tenant, environment, tokens, Governor("local"), **kwargs)


async def test_foreign_next_link_never_receives_the_token(
    recorder: tuple[TestServer, list[dict[str, str]]],
) -> None:
    """A page whose nextLink points at another origin stops the table (ForeignLinkError) and
    that origin receives nothing at all, let alone an Authorization header."""
    other, seen = recorder
    foreign = str(other.make_url("/api/data/v9.2/accounts?$skiptoken=2"))

    async def first_page(request: web.Request) -> web.Response:
        return web.json_response({"value": [{"accountid": "a"}], "@odata.nextLink": foreign})

    home = await serve(first_page)
    tokens = CountingTokens()
    client = await local_client(home, tokens)
    pages = []

    async def read_all() -> None:
        async for page in client.pages(
            str(home.make_url("/api/data/v9.2/accounts")), table="account"
        ):
            pages.append(page)

    async with client:
        with pytest.raises(ForeignLinkError):
            await read_all()
        with pytest.raises(ForeignLinkError):
            await client.get(foreign)
    await home.close()
    assert len(pages) == 1
    assert seen == []


async def test_redirect_to_another_origin_is_not_followed(
    recorder: tuple[TestServer, list[dict[str, str]]],
) -> None:
    """A 302 to another origin is not followed, so the token cannot leak through it."""
    other, seen = recorder

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(other.make_url("/steal")))

    home = await serve(redirect)
    async with await local_client(home, CountingTokens()) as client:
        with pytest.raises(TableError):
            await client.get(str(home.make_url("/api/data/v9.2/accounts")), table="account")
    await home.close()
    assert seen == []


async def test_401_refreshes_the_token_once_and_retries_once() -> None:
    """A 401 forces one token refresh and one retry; a second 401 is an AuthError."""
    answers = [401, 200, 401, 401]
    authorizations: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        authorizations.append(request.headers["Authorization"])
        status = answers.pop(0)
        return web.json_response({"value": []} if status == 200 else {}, status=status)

    server = await serve(handler)
    tokens = CountingTokens()
    async with await local_client(server, tokens) as client:
        url = str(server.make_url("/api/data/v9.2/WhoAmI"))
        assert await client.get(url) == {"value": []}
        with pytest.raises(AuthError):
            await client.get(url)
    await server.close()
    assert tokens.calls == [False, True, False, True]
    assert authorizations[:2] == ["Bearer token-1", "Bearer token-2"]


async def test_transient_errors_are_retried_with_backoff() -> None:
    """503 (with Retry-After) and 502 are retried; the third attempt succeeds."""
    answers = [503, 502, 200]

    async def handler(request: web.Request) -> web.Response:
        status = answers.pop(0)
        headers = {"Retry-After": "0"} if status == 503 else {}
        return web.json_response(
            {"value": [1]} if status == 200 else {}, status=status, headers=headers
        )

    server = await serve(handler)
    async with await local_client(server, CountingTokens(), retry=FAST_RETRY) as client:
        assert await client.get(str(server.make_url("/api/data/v9.2/x"))) == {"value": [1]}
    await server.close()
    assert answers == []


async def test_a_body_that_stays_garbage_is_hostile() -> None:
    """A 200 whose body is never JSON is retried (it may be a cut connection), then hostile."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(body=b'{"value": [', content_type="application/json")

    server = await serve(handler)
    async with await local_client(server, CountingTokens(), retry=FAST_RETRY) as client:
        with pytest.raises(HostileResponseError) as refused:
            await client.get(str(server.make_url("/api/data/v9.2/x")), table="account")
        name = client.environment.name
    await server.close()
    assert FAST_RETRY.attempts == calls
    assert f"environment {name}, table account" in str(refused.value)
    assert "not JSON" in str(refused.value)


async def test_a_decoder_gets_the_raw_body_and_its_refusals_follow_the_same_policy() -> None:
    """A custom decoder sees the exact 2xx bytes; None from it is retried then hostile, while
    error responses are still classified from their JSON (a 503 is retried, not decoded)."""
    answers = [(503, b"{}"), (200, b'{"revenue":12.30}'), (200, b"cut"), (200, b"cut")]
    decoded: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        status, body = answers.pop(0)
        return web.Response(status=status, body=body, content_type="application/json")

    def decoder(body: bytes) -> object:
        decoded.append(body)
        return None if body == b"cut" else ("exact", body.decode())

    server = await serve(handler)
    retry = RetryPolicy(attempts=2, max_delay=10, backoff_initial=0.01, backoff_max=0.05)
    async with await local_client(server, CountingTokens(), retry=retry) as client:
        url = str(server.make_url("/api/data/v9.2/x"))
        assert await client.get(url, table="account", decoder=decoder) == (
            "exact",
            '{"revenue":12.30}',
        )
        with pytest.raises(HostileResponseError, match="table account"):
            await client.get(url, table="account", decoder=decoder)
    await server.close()
    assert decoded == [b'{"revenue":12.30}', b"cut", b"cut"]
    assert answers == []


async def test_a_page_without_value_is_hostile() -> None:
    """JSON that is not an object with a value list is refused at once (not retried)."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"rows": []})

    server = await serve(handler)
    async with await local_client(server, CountingTokens()) as client:
        with pytest.raises(HostileResponseError):
            await client.page(str(server.make_url("/api/data/v9.2/accounts")), table="account")
    await server.close()


async def test_cancellation_propagates_and_frees_the_slot() -> None:
    """Cancelling a request in flight raises CancelledError (never retried) and releases the slot."""
    started = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(30)
        return web.json_response({})

    server = await serve(stall)
    async with await local_client(server, CountingTokens()) as client:
        task = asyncio.create_task(client.get(str(server.make_url("/api/data/v9.2/x"))))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.governor.core.in_flight == 0
    await server.close()
