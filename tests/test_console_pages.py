"""The console once signed in: CSRF and role checks on resync (nothing written when refused),
tenant isolation (404 for another tenant's environment, in pages and the JSON API), session
expiry with an injected clock, a tampered cookie, headers, sign-out and bearer tokens."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yarl
from cryptography.fernet import Fernet

from sync.console.sessions import derive_key
from sync.store import checkpoints
from tests.console_harness import (
    CLIENT_ID,
    SESSION_KEY,
    USERS,
    Harness,
    running_console,
    session_cookie,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="h")
async def _harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_console(tmp_path) as harness:
        now = dt.datetime.now(dt.UTC)
        await checkpoints.ensure(harness.store, "contoso_prod", "account", now=now)
        await checkpoints.record_success(harness.store, "contoso_prod", "account", now=now)
        yield harness


async def _signed_in(h: Harness, user: str) -> object:
    browser = h.browser()
    response = await h.sign_in(browser, user)
    assert response.status == 302, await response.text()
    return browser


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


async def test_resync_needs_the_sessions_csrf_token(h: Harness) -> None:
    """An operator's resync POST without the token, or with a wrong one, answers 403 and writes
    no request; with the page's token it queues one request and redirects back (303)."""
    browser = await _signed_in(h, "olga")
    page = await browser.get(f"{h.url}/env/contoso_prod")  # type: ignore[attr-defined]
    token = _csrf(await page.text())
    url = f"{h.url}/env/contoso_prod/resync"
    for form in ({}, {"csrf_token": "0" * 64}):
        refused = await browser.post(url, data=form, allow_redirects=False)  # type: ignore[attr-defined]
        assert refused.status == 403
        assert await h.resync_rows() == []
    done = await browser.post(url, data={"csrf_token": token}, allow_redirects=False)  # type: ignore[attr-defined]
    assert done.status == 303 and done.headers["Location"] == "/env/contoso_prod"
    rows = await h.resync_rows()
    assert [(r["environment"], r["table_name"], r["state"]) for r in rows] == [
        ("contoso_prod", None, "requested")
    ]
    table = await browser.post(  # type: ignore[attr-defined]
        f"{h.url}/env/contoso_prod/table/account/resync",
        data={"csrf_token": token},
        allow_redirects=False,
    )
    assert table.status == 303
    assert {r["table_name"] for r in await h.resync_rows()} == {None, "account"}
    actions = [r["action"] for r in await h.audit_rows()]
    assert actions.count("resync_refused") == 2


async def test_resync_of_a_table_the_environment_does_not_mirror_is_404(tmp_path: Path) -> None:
    """An operator's POST (valid CSRF token) for a table not in the environment's list, or, with
    `tables = "all"`, one that has no state yet, answers 404 and writes no request; a table the
    "all" environment did take up is queued."""
    extra = '[[tenants.environments]]\nname = "contoso_all"\nurl = "https://contoso-all.crm.dynamics.com"\ntables = "all"\n'
    async with running_console(tmp_path, contoso_extra=extra) as h:
        now = dt.datetime.now(dt.UTC)
        await checkpoints.ensure(h.store, "contoso_all", "account", now=now)
        browser = await _signed_in(h, "olga")
        token = _csrf(await (await browser.get(f"{h.url}/env/contoso_prod")).text())  # type: ignore[attr-defined]
        for env, table in (("contoso_prod", "opportunity"), ("contoso_all", "acount")):
            refused = await browser.post(  # type: ignore[attr-defined]
                f"{h.url}/env/{env}/table/{table}/resync",
                data={"csrf_token": token},
                allow_redirects=False,
            )
            assert refused.status == 404, (env, table)
        assert await h.resync_rows() == []
        queued = await browser.post(  # type: ignore[attr-defined]
            f"{h.url}/env/contoso_all/table/account/resync",
            data={"csrf_token": token},
            allow_redirects=False,
        )
        assert queued.status == 303
        assert [(r["environment"], r["table_name"]) for r in await h.resync_rows()] == [
            ("contoso_all", "account")
        ]


async def test_environment_audit_shows_its_tenants_sign_ins(h: Harness) -> None:
    """The operator's environment page lists the sign-ins (and refused sign-ins) of its tenant's
    users next to the environment's actions, and none of another tenant's users."""
    for user in ("victor", "fay"):
        assert (await h.sign_in(h.browser(), user)).status == 302
    await h.sign_in(h.browser(), "nora")  # no role: refused, audited with her tenant
    browser = await _signed_in(h, "olga")
    html = await (await browser.get(f"{h.url}/env/contoso_prod")).text()  # type: ignore[attr-defined]
    rows = re.findall(
        r'<tr class="audit-row">.*?data-label="User">([^<]*)<.*?data-label="Action">([^<]*)<',
        html,
    )
    shown = {(user, action) for user, action in rows}
    assert (USERS["victor"].upn, "sign_in") in shown and (USERS["olga"].upn, "sign_in") in shown
    assert any(action == "sign_in_refused" and "nora" in user for user, action in rows), rows
    assert not any("fabrikam" in user for user, _ in rows), rows


async def test_a_viewer_cannot_resync(h: Harness) -> None:
    """A viewer sees no resync button, and a POST with a valid CSRF token is still 403 with no
    request written."""
    browser = await _signed_in(h, "victor")
    page = await (await browser.get(f"{h.url}/env/contoso_prod")).text()  # type: ignore[attr-defined]
    assert "resync-env-button" not in page
    # The viewer's page carries no form; the session's real token is read from the cookie.
    cookie = session_cookie(browser)  # type: ignore[arg-type]
    fernet = Fernet(base64.urlsafe_b64encode(derive_key(SESSION_KEY, "session cookie")))
    data = json.loads(fernet.decrypt(cookie.encode()))["session"]  # type: ignore[union-attr]
    session_token = h.server.context.policy.csrf_token(data)
    response = await browser.post(  # type: ignore[attr-defined]
        f"{h.url}/env/contoso_prod/resync",
        data={"csrf_token": session_token},
        allow_redirects=False,
    )
    assert response.status == 403
    assert await h.resync_rows() == []


async def test_another_tenants_environment_answers_404(h: Harness) -> None:
    """A Contoso user guessing Fabrikam's environment gets the same 404 as for a name that does
    not exist, in pages, the resync POST and the JSON API; the API lists only Contoso."""
    browser = await _signed_in(h, "olga")
    for path in ("/env/fabrikam_prod", "/env/fabrikam_prod/table/account", "/env/nope"):
        response = await browser.get(f"{h.url}{path}")  # type: ignore[attr-defined]
        assert response.status == 404, path
    post = await browser.post(f"{h.url}/env/fabrikam_prod/resync", data={}, allow_redirects=False)  # type: ignore[attr-defined]
    assert post.status == 404
    api = await browser.get(f"{h.url}/api/v1/environments/fabrikam_prod/tables")  # type: ignore[attr-defined]
    assert api.status == 404
    listing = await (await browser.get(f"{h.url}/api/v1/environments")).json()  # type: ignore[attr-defined]
    assert [e["name"] for e in listing["environments"]] == ["contoso_prod"]
    tables = await (await browser.get(f"{h.url}/api/v1/environments/contoso_prod/tables")).json()  # type: ignore[attr-defined]
    assert [t["table"] for t in tables["tables"]] == ["account", "contact"]
    assert tables["tables"][0]["lag_seconds"] is not None


async def test_tampered_cookie_is_no_session(h: Harness) -> None:
    """A session cookie with one character changed is not a session: back to the sign-in."""
    browser = await _signed_in(h, "olga")
    value = session_cookie(browser)  # type: ignore[arg-type]
    assert value
    forged = value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:]
    other = h.browser()
    other.cookie_jar.update_cookies({"dvmirror_console": forged}, response_url=yarl.URL(h.url))
    response = await other.get(f"{h.url}/", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"].startswith("/auth/login")


async def test_idle_and_absolute_expiry(h: Harness) -> None:
    """A session idle for an hour ends; one kept busy ends 8 hours after the sign-in."""
    idle = await _signed_in(h, "olga")
    h.clock.advance(3601)
    response = await idle.get(f"{h.url}/", allow_redirects=False)  # type: ignore[attr-defined]
    assert response.status == 302
    busy = await _signed_in(h, "victor")
    for _ in range(9):  # every 55 minutes: never idle, 8 h 15 min in all
        h.clock.advance(55 * 60)
        response = await busy.get(f"{h.url}/", allow_redirects=False)  # type: ignore[attr-defined]
        if response.status == 302:
            break
    assert response.status == 302
    assert h.clock.offset >= 8 * 3600 + 3601 - 1


async def test_headers_and_cookie_attributes(h: Harness) -> None:
    """CSP default-src 'self' with frame-ancestors 'none', no-referrer, no-store on data pages;
    the session cookie is Secure, HttpOnly and SameSite=Lax."""
    browser = h.browser()
    callback = await h.start_login(browser, "olga")
    response = await browser.get(callback, allow_redirects=False)
    cookie = response.headers.getall("Set-Cookie")[-1]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = await browser.get(f"{h.url}/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    html = await page.text()
    assert "style=" not in html and "<script" not in html
    assert '<meta http-equiv="refresh" content="10">' in html
    css = await browser.get(f"{h.url}/static/console.css")
    assert css.status == 200 and "@media (max-width: 700px)" in await css.text()


async def test_table_page_shows_columns_runs_and_plot(h: Harness) -> None:
    """The table page renders its plot as inline SVG (no script) and the run/column tables."""
    browser = await _signed_in(h, "olga")
    html = await (await browser.get(f"{h.url}/env/contoso_prod/table/account")).text()  # type: ignore[attr-defined]
    assert 'id="lag-plot"' in html and 'id="runs"' in html and 'id="columns"' in html
    assert 'id="resync-table"' in html


async def test_sign_out_goes_to_the_tenants_end_session_endpoint(h: Harness) -> None:
    """Sign-out is a POST with the session's CSRF token: a GET only shows the button, a POST
    without or with a wrong token is 403 and the session stays; with it, the session is cleared
    and the browser goes to the user's tenant's end_session_endpoint with the console as
    post_logout_redirect_uri."""
    browser = await _signed_in(h, "olga")
    page = await browser.get(f"{h.url}/auth/logout", allow_redirects=False)  # type: ignore[attr-defined]
    html = await page.text()
    assert page.status == 200 and 'id="sign-out-button"' in html
    assert (await browser.get(f"{h.url}/", allow_redirects=False)).status == 200  # type: ignore[attr-defined]
    for form in ({}, {"csrf_token": "0" * 64}):
        refused = await browser.post(f"{h.url}/auth/logout", data=form, allow_redirects=False)  # type: ignore[attr-defined]
        assert refused.status == 403
        assert (await browser.get(f"{h.url}/", allow_redirects=False)).status == 200  # type: ignore[attr-defined]
    response = await browser.post(  # type: ignore[attr-defined]
        f"{h.url}/auth/logout", data={"csrf_token": _csrf(html)}, allow_redirects=False
    )
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith(f"{h.idp.host}/{USERS['olga'].tenant_id}/oauth2/v2.0/logout?")
    assert "post_logout_redirect_uri=" in location
    assert session_cookie(browser) is None  # type: ignore[arg-type]
    assert (await browser.get(f"{h.url}/", allow_redirects=False)).status == 302  # type: ignore[attr-defined]


async def test_bearer_tokens_for_the_app_id_uri(h: Harness) -> None:
    """The JSON API accepts a bearer token issued for api://<client id> with the viewer role,
    shows only the caller's tenant, and refuses a forged one (401) or one without a role (403)."""
    api = h.browser()
    url = f"{h.url}/api/v1/environments"
    good = h.idp.mint(USERS["fay"], f"api://{CLIENT_ID}")
    response = await api.get(url, headers={"Authorization": f"Bearer {good}"})
    assert response.status == 200
    assert [e["name"] for e in (await response.json())["environments"]] == ["fabrikam_prod"]
    h.idp.signing = "other-key"
    forged = h.idp.mint(USERS["fay"], f"api://{CLIENT_ID}")
    h.idp.signing = "rs256"
    response = await api.get(url, headers={"Authorization": f"Bearer {forged}"})
    assert response.status == 401 and "WWW-Authenticate" in response.headers
    norole = h.idp.mint(USERS["nora"], f"api://{CLIENT_ID}")
    response = await api.get(url, headers={"Authorization": f"Bearer {norole}"})
    assert response.status == 403
    other_aud = h.idp.mint(USERS["fay"], "api://someone-else")
    response = await api.get(url, headers={"Authorization": f"Bearer {other_aud}"})
    assert response.status == 401
    anonymous = await api.get(url)
    assert anonymous.status == 401
