"""The console signs users in against dvmirror's own simulator too (its Entra sign-in side):
real MSAL, the simulator over HTTPS, the console on a loopback http URL (whose registered
redirect URI ignores the port, as Entra does for loopback)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sync.config.loading import load_config
from sync.console.app import ConsoleServer, start_console
from sync.store.open import open_store
from tests.console_harness import free_port, session_cookie
from tests.simfixtures import app_info, async_running_simulator, tenant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
WEB = "a1a1a1a1-0000-4000-8000-000000000001"


@pytest.fixture(name="console")
async def _console(tmp_path: Path) -> AsyncIterator[tuple[ConsoleServer, dict[str, Any]]]:
    async with async_running_simulator("signin", tmp_path / "sim") as ready:
        port = free_port()
        path = tmp_path / "dvmirror.toml"
        path.write_text(
            f"""
[app]
client_id = "{WEB}"
client_secret = {{ env = "WEB_SECRET" }}
authority_host = "{ready["authority_host"]}"
ca_bundle = "{ready["ca_file"]}"

[store]
url = "sqlite+aiosqlite:///{tmp_path / "mirror.db"}"

[console]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
session_key = {{ env = "SESSION_KEY" }}

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenants.environments]]
name = "contoso_prod"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]
"""
        )
        environ = {"WEB_SECRET": app_info(ready, WEB)["client_secret"], "SESSION_KEY": "s" * 40}
        config = load_config(path, environ=environ)
        store = await open_store(config)
        server = await start_console(config, store)
        try:
            yield server, ready
        finally:
            await server.stop()
            await store.dispose()


async def test_operator_signs_in_through_the_simulator(
    console: tuple[ConsoleServer, dict[str, Any]],
) -> None:
    """An operator of Contoso signs in with a login_hint through the simulated authority, sees
    Contoso's environment with the resync button, and signs out to the tenant's
    end_session_endpoint; the cookie is not Secure on this loopback http URL."""
    server, ready = console
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(
            ssl=__import__("ssl").create_default_context(cafile=ready["ca_file"])
        ),
    ) as browser:
        login = await browser.get(
            f"{server.url}/auth/login",
            params={"login_hint": "ada@contoso.onmicrosoft.com"},
            allow_redirects=False,
        )
        assert login.status == 302
        answer = await browser.get(login.headers["Location"], allow_redirects=False)
        assert answer.status == 302, await answer.text()
        callback = await browser.get(answer.headers["Location"], allow_redirects=False)
        assert callback.status == 302, await callback.text()
        assert "Secure" not in callback.headers.getall("Set-Cookie")[-1]
        assert session_cookie(browser)
        page = await browser.get(f"{server.url}/env/contoso_prod")
        html = await page.text()
        assert page.status == 200 and 'id="resync-env-button"' in html
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
        assert token, html[:2000]
        out = await browser.post(
            f"{server.url}/auth/logout",
            data={"csrf_token": token.group(1)},
            allow_redirects=False,
        )
        contoso = tenant(ready, "contoso")["tenant_id"]
        assert out.status == 303 and f"/{contoso}/oauth2/v2.0/logout" in out.headers["Location"]


def test_dvmirror_run_serves_the_console_beside_metrics(tmp_path: Path) -> None:
    """`dvmirror run` with a [console] section serves the console in the same process, on its
    own listener next to /metrics: an operator signs in and sees the table synced by that
    daemon; SIGTERM stops both and the daemon exits 0."""
    import re
    import ssl
    import urllib.request

    from tests.daemonproc import DaemonProcess, EnvSpec, wait_until, write_config
    from tests.simfixtures import running_simulator

    with running_simulator("signin", tmp_path / "sim") as ready:
        port = free_port()
        config = write_config(ready, tmp_path, {"contoso_prod": EnvSpec(("account",))})
        config.write_text(
            config.read_text().replace(
                "[[tenants]]",
                f'[console]\nlisten = "127.0.0.1:{port}"\npublic_url = "http://127.0.0.1:{port}"\n'
                'session_key = { env = "SESSION_KEY" }\n\n[[tenants]]',
                1,
            )
        )
        daemon = DaemonProcess.start(config, tmp_path / "daemon.log", env={"SESSION_KEY": "s" * 40})
        try:
            daemon.wait_event("console_listening")
            assert daemon.get("/healthz")[0] == 200
            context = ssl.create_default_context(cafile=ready["ca_file"])
            opener = urllib.request.build_opener(
                urllib.request.HTTPCookieProcessor(), urllib.request.HTTPSHandler(context=context)
            )
            base = f"http://127.0.0.1:{port}"
            hint = "ada@contoso.onmicrosoft.com"

            def synced() -> str | None:
                with opener.open(
                    f"{base}/auth/login?login_hint={hint}&next=/env/contoso_prod", timeout=30
                ) as r:
                    html = r.read().decode()
                found = re.search(r'id="table-account".*?class="num rows">([\d,]+)<', html, re.S)
                return html if found and found.group(1) != "0" else None

            html = wait_until(synced, timeout=60, every=1.0, what="the account table's rows")
            assert 'id="resync-env-button"' in html
        finally:
            code = daemon.stop()
        assert code == 0, daemon.tail()


FORGERIES = [
    ({"signing": "forged"}, "signature"),
    ({"signing": "none"}, "'none'"),
    ({"signing": "hs256-public-key"}, "'HS256'"),
    ({"signing": "unknown-key"}, "no signing key"),
    ({"expires_in": -600}, "expired"),
    ({"claims": {"aud": "a4a4a4a4-0000-4000-8000-000000000004"}}, "another application"),
]


@pytest.mark.parametrize(("change", "words"), FORGERIES, ids=[str(f[0]) for f in FORGERIES])
async def test_simulator_forgeries_are_refused_like_the_independent_providers(
    console: tuple[ConsoleServer, dict[str, Any]], change: dict[str, Any], words: str
) -> None:
    """Tokens the simulator forges on demand (its admin API) meet the same validation: the
    genuine one is accepted as a bearer token, each forgery answers 401 with the reason."""
    import asyncio

    from tests.simfixtures import admin

    server, ready = console
    body = {"tenant": "contoso", "user": "ada@contoso.onmicrosoft.com", "client_id": WEB}
    genuine = (await asyncio.to_thread(admin, ready, "POST", "/id-tokens", body))["id_token"]
    forged = (await asyncio.to_thread(admin, ready, "POST", "/id-tokens", {**body, **change}))[
        "id_token"
    ]
    async with aiohttp.ClientSession() as api:
        url = f"{server.url}/api/v1/environments"
        ok = await api.get(url, headers={"Authorization": f"Bearer {genuine}"})
        assert ok.status == 200, await ok.text()
        refused = await api.get(url, headers={"Authorization": f"Bearer {forged}"})
        assert refused.status == 401
        assert words in (await refused.json())["error_description"]
