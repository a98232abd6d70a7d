"""A running console for tests: the independent identity provider (tests/oidc_idp.py) over
HTTPS, the console over HTTPS in this process (real MSAL, real SQLite store), an injectable
clock, and browsers (aiohttp sessions with their own cookie jars)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.loading import load_config
from sync.config.model import Config
from sync.console.app import ConsoleServer, start_console
from sync.console.sessions import COOKIE_NAME
from sync.simulator.tls import make_tls
from sync.store.control import audit, resync_requests
from sync.store.open import open_store
from tests.oidc_idp import IdentityProvider, User

CLIENT_ID = "7a3c1e55-0b7d-4c8a-9e21-5f6a7b8c9d01"
CLIENT_SECRET = "console-test-secret-value"
SESSION_KEY = "a-session-key-of-more-than-thirty-two-bytes-for-tests"
CONTOSO = "6f1d4c2b-3a5e-4b7d-8c9f-0a1b2c3d4e01"
FABRIKAM = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c02"
ADMINS = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c03"
STRANGERS = "0f0e0d0c-0b0a-4909-8807-060504030204"
OPERATOR, VIEWER = "Mirror.Operator", "Mirror.Viewer"

USERS = {
    "olga": User(
        "olga@contoso.example",
        "Olga Operator",
        "11111111-1111-4111-8111-111111111111",
        CONTOSO,
        (OPERATOR,),
    ),
    "victor": User(
        "victor@contoso.example",
        "Victor Viewer",
        "22222222-2222-4222-8222-222222222222",
        CONTOSO,
        (VIEWER,),
    ),
    "fay": User(
        "fay@fabrikam.example",
        "Fay Fabrikam",
        "33333333-3333-4333-8333-333333333333",
        FABRIKAM,
        (VIEWER,),
    ),
    "ada": User(
        "ada@admins.example",
        "Ada Admin",
        "44444444-4444-4444-8444-444444444444",
        ADMINS,
        (OPERATOR,),
    ),
    "nora": User(
        "nora@contoso.example", "Nora Norole", "55555555-5555-4555-8555-555555555555", CONTOSO, ()
    ),
    "sam": User(
        "sam@strangers.example",
        "Sam Stranger",
        "66666666-6666-4666-8666-666666666666",
        STRANGERS,
        (OPERATOR,),
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    """Wall time that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def write_config(
    directory: Path, idp_url: str, console_port: int, tls: Any, contoso_extra: str = ""
) -> Path:
    path = directory / "dvmirror.toml"
    path.write_text(
        f"""
[app]
client_id = "{CLIENT_ID}"
client_secret = {{ env = "CONSOLE_TEST_SECRET" }}
authority_host = "{idp_url}"
ca_bundle = "{tls.ca_file}"

[store]
url = "sqlite+aiosqlite:///{directory / "mirror.db"}"

[console]
listen = "127.0.0.1:{console_port}"
public_url = "https://127.0.0.1:{console_port}"
tls_cert = "{tls.cert_file}"
tls_key = "{tls.key_file}"
session_key = {{ env = "CONSOLE_SESSION_KEY" }}
admin_tenants = ["admins.example"]

[[tenants]]
name = "contoso"
tenant_id = "contoso.example"

[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account", "contact"]
{contoso_extra}
[[tenants]]
name = "fabrikam"
tenant_id = "{FABRIKAM}"

[[tenants.environments]]
name = "fabrikam_prod"
url = "https://fabrikam.crm.dynamics.com"
tables = ["account"]
""",
        encoding="utf-8",
    )
    return path


ENVIRON = {"CONSOLE_TEST_SECRET": CLIENT_SECRET, "CONSOLE_SESSION_KEY": SESSION_KEY}


@dataclass
class Harness:
    idp: IdentityProvider
    config: Config
    store: AsyncEngine
    server: ConsoleServer
    clock: Clock
    ssl: ssl.SSLContext
    browsers: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def browser(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=self.ssl),
        )
        self.browsers.append(session)
        return session

    async def start_login(
        self, browser: aiohttp.ClientSession, user: str, *, next_path: str = "/"
    ) -> str:
        """Up to the IdP's answer: the callback URL the browser is sent to."""
        upn = USERS[user].upn
        response = await browser.get(
            f"{self.url}/auth/login",
            params={"login_hint": upn, "next": next_path},
            allow_redirects=False,
        )
        assert response.status == 302, await response.text()
        return await self.authorize(browser, response.headers["Location"])

    async def authorize(self, browser: aiohttp.ClientSession, auth_uri: str) -> str:
        response = await browser.get(auth_uri, allow_redirects=False)
        assert response.status == 302, await response.text()
        return response.headers["Location"]

    async def sign_in(
        self, browser: aiohttp.ClientSession, user: str, *, next_path: str = "/"
    ) -> aiohttp.ClientResponse:
        callback = await self.start_login(browser, user, next_path=next_path)
        return await browser.get(callback, allow_redirects=False)

    async def resync_rows(self) -> list[dict[str, Any]]:
        async with self.store.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(resync_requests))]

    async def audit_rows(self) -> list[dict[str, Any]]:
        async with self.store.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(select(audit))]


def session_cookie(browser: aiohttp.ClientSession) -> str | None:
    """The console's session cookie as the browser holds it (None: no session)."""
    for cookie in browser.cookie_jar:
        if cookie.key == COOKIE_NAME and cookie.value:
            return cookie.value
    return None


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@contextlib.asynccontextmanager
async def running_console(directory: Path, contoso_extra: str = "") -> AsyncIterator[Harness]:
    """`contoso_extra`: TOML added after contoso_prod (more of Contoso's environments)."""
    tls = make_tls(directory / "tls", extra_names=())
    idp = IdentityProvider(
        host="",
        clients={CLIENT_ID: CLIENT_SECRET},
        tenants={
            "contoso.example": CONTOSO,
            "admins.example": ADMINS,
            "strangers.example": STRANGERS,
            "fabrikam.example": FABRIKAM,
        },
        users=list(USERS.values()),
    )
    runner = web.AppRunner(idp.application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context())
    await site.start()
    port = next(a for a in runner.addresses if isinstance(a, tuple))[1]
    idp.host = f"https://127.0.0.1:{port}"
    config = load_config(
        write_config(directory, idp.host, free_port(), tls, contoso_extra), environ=ENVIRON
    )
    store = await open_store(config)
    clock = Clock()
    server = await start_console(config, store, clock=clock)
    harness = Harness(idp, config, store, server, clock, tls.client_context())
    try:
        yield harness
    finally:
        for browser in harness.browsers:
            await browser.close()
        await server.stop()
        await store.dispose()
        await runner.cleanup()
