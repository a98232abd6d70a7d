"""The console's sign-in over real HTTPS with real MSAL, against an independent identity
provider written from Microsoft's documentation (tests/oidc_idp.py): what signs in, and every
refusal of issue 22 item 7, each leaving no session cookie behind."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sync.console.tokens import KID_REFETCH_INTERVAL, DiscoveryClient, TokenRefused
from tests.console_harness import (
    CONTOSO,
    FABRIKAM,
    STRANGERS,
    Harness,
    query_of,
    running_console,
    session_cookie,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="h")
async def _harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_console(tmp_path) as harness:
        yield harness


async def test_operator_signs_in_and_sees_only_their_tenant(h: Harness) -> None:
    """A Contoso operator signs in (302 to next), gets a session cookie and sees Contoso's
    environment on `/`, but not Fabrikam's."""
    browser = h.browser()
    response = await h.sign_in(browser, "olga", next_path="/env/contoso_prod")
    assert response.status == 302, await response.text()
    assert response.headers["Location"] == "/env/contoso_prod"
    assert session_cookie(browser)
    page = await browser.get(f"{h.url}/")
    text = await page.text()
    assert page.status == 200
    assert 'id="env-contoso_prod"' in text
    assert "fabrikam_prod" not in text
    assert "Olga Operator" in text


async def _refused(h: Harness, user: str, *, status: int = 401) -> str:
    """Sign in as `user`; the console answers `status` and the browser keeps no session."""
    browser = h.browser()
    response = await h.sign_in(browser, user)
    text = await response.text()
    assert response.status == status, text
    assert session_cookie(browser) is None
    follow = await browser.get(f"{h.url}/", allow_redirects=False)
    assert follow.status == 302 and follow.headers["Location"].startswith("/auth/login")
    return text


@pytest.mark.parametrize(
    ("signing", "words"),
    [
        ("other-key", "signature does not verify"),
        ("none", "algorithm &#39;none&#39; is not accepted"),
        ("hs256-public", "algorithm &#39;HS256&#39; is not accepted"),
    ],
)
async def test_badly_signed_id_tokens_are_refused(h: Harness, signing: str, words: str) -> None:
    """A forged signature (another key), alg none and HS256 keyed with the public key are each
    refused, with no session cookie."""
    h.idp.signing = signing
    assert words in await _refused(h, "olga")
    assert any(r["action"] == "sign_in_refused" for r in await h.audit_rows())


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {
                "exp": int(time.time()) - 400,
                "nbf": int(time.time()) - 4000,
                "iat": int(time.time()) - 4000,
            },
            "expired",
        ),
        ({"aud": "00000000-0000-4000-8000-000000000000"}, "another application"),
        ({"iss": f"https://login.example/{FABRIKAM}/v2.0"}, "iss and tid differ"),
    ],
    ids=["expired", "wrong-aud", "iss-not-tid"],
)
async def test_invalid_claims_are_refused(
    h: Harness, overrides: dict[str, object], words: str
) -> None:
    """Expired (beyond the 5-minute skew), another audience, and an issuer that does not match
    the token's tid are refused, with no session cookie."""
    h.idp.overrides = overrides
    assert words in await _refused(h, "olga")


async def test_issuer_of_another_tenant_is_refused(h: Harness) -> None:
    """A Contoso user's token whose iss names Fabrikam (another configured tenant) is refused."""
    h.idp.overrides = {"iss": h.idp.issuer(FABRIKAM)}
    assert "iss and tid differ" in await _refused(h, "olga")


async def test_unconfigured_tenant_gets_a_page_naming_it(h: Harness) -> None:
    """A user of a tenant that is neither a customer nor an admin tenant gets 403 and a page
    naming their tenant; the refusal is audited with their tenant id."""
    text = await _refused(h, "sam", status=403)
    assert STRANGERS in text and "not configured" in text
    rows = [r for r in await h.audit_rows() if r["action"] == "sign_in_refused"]
    assert rows[-1]["tenant_id"] == STRANGERS


async def test_user_without_role_is_told_which_role_and_where(h: Harness) -> None:
    """No app role: 403, the page names both roles and Enterprise applications → Users and
    groups; no session."""
    text = await _refused(h, "nora", status=403)
    assert "Mirror.Viewer" in text and "Mirror.Operator" in text
    assert "Enterprise applications" in text and "Users and groups" in text


async def test_replayed_code_is_refused(h: Harness) -> None:
    """The same callback (code and state) presented again with the pending-flow cookie it was
    issued for is refused: the code is single use, and no second session appears."""
    browser = h.browser()
    callback = await h.start_login(browser, "olga")
    flow_cookie = session_cookie(browser)
    assert flow_cookie
    first = await browser.get(callback, allow_redirects=False)
    assert first.status == 302
    attacker = h.browser()
    attacker.cookie_jar.update_cookies(
        {"dvmirror_console": flow_cookie}, response_url=__import__("yarl").URL(h.url)
    )
    second = await attacker.get(callback, allow_redirects=False)
    assert second.status == 401
    assert "already used" in await second.text()
    assert session_cookie(attacker) is None


async def test_nonce_of_another_browser_is_refused(h: Harness) -> None:
    """Browser B's authorization request carrying browser A's nonce yields an id_token whose
    nonce is not B's: refused, no session in B."""
    a, b = h.browser(), h.browser()
    login_a = await a.get(
        f"{h.url}/auth/login", params={"login_hint": "olga@contoso.example"}, allow_redirects=False
    )
    nonce_a = query_of(login_a.headers["Location"])["nonce"]
    login_b = await b.get(
        f"{h.url}/auth/login", params={"login_hint": "olga@contoso.example"}, allow_redirects=False
    )
    auth_b = login_b.headers["Location"]
    nonce_b = query_of(auth_b)["nonce"]
    callback = await h.authorize(b, auth_b.replace(f"nonce={nonce_b}", f"nonce={nonce_a}"))
    response = await b.get(callback, allow_redirects=False)
    assert response.status == 401, await response.text()
    assert session_cookie(b) is None


@pytest.mark.parametrize("change", ["missing", "mismatched"])
async def test_state_must_match(h: Harness, change: str) -> None:
    """A callback without state, or with another state, is refused before the code is redeemed
    (the provider issued no token) and leaves no session."""
    browser = h.browser()
    callback = await h.start_login(browser, "olga")
    state = query_of(callback)["state"]
    bad = callback.replace(f"state={state}", "" if change == "missing" else "state=forged")
    response = await browser.get(bad, allow_redirects=False)
    assert response.status == 401
    assert "state" in await response.text()
    assert session_cookie(browser) is None
    assert h.idp.issued == 0


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
async def test_next_is_same_origin_paths_only(h: Harness, target: str) -> None:
    """`next=` pointing anywhere but a path of this origin lands on `/` after sign-in."""
    response = await h.sign_in(h.browser(), "olga", next_path=target)
    assert response.status == 302
    assert response.headers["Location"] == "/"


async def test_key_rotation_during_a_session(h: Harness) -> None:
    """The provider rotates its signing key: a signed-in browser stays signed in, and the next
    sign-in (a kid the cache does not know) refetches the keys once and succeeds."""
    first = h.browser()
    assert (await h.sign_in(first, "olga")).status == 302
    h.idp.rotate()
    assert (await first.get(f"{h.url}/")).status == 200
    second = h.browser()
    assert (await h.sign_in(second, "victor")).status == 302
    assert (await second.get(f"{h.url}/")).status == 200


async def test_unknown_kids_refetch_the_keys_at_most_once_per_interval(h: Harness) -> None:
    """Tokens naming made-up kids make at most one JWKS request per interval (the first one
    after the cache was filled), whatever their number; after the interval a rotated key is
    found again. The API refuses such bearer tokens with 401 without a fetch each."""
    clock = [1000.0]
    discovery = DiscoveryClient(h.idp.host, ssl_context=h.ssl, clock=lambda: clock[0])
    try:
        jwks_uri = str((await discovery.metadata(CONTOSO))["jwks_uri"])
        await discovery.signing_key(jwks_uri, h.idp.kid)
        assert h.idp.keys_served == 1
        for n in range(20):
            with pytest.raises(TokenRefused):
                await discovery.signing_key(jwks_uri, f"forged-{n}")
        assert h.idp.keys_served == 2
        h.idp.rotate()
        clock[0] += KID_REFETCH_INTERVAL - 1
        with pytest.raises(TokenRefused):
            await discovery.signing_key(jwks_uri, h.idp.kid)
        assert h.idp.keys_served == 2
        clock[0] += 1
        await discovery.signing_key(jwks_uri, h.idp.kid)
        assert h.idp.keys_served == 3
    finally:
        await discovery.close()

    browser = h.browser()
    assert (await h.sign_in(browser, "olga")).status == 302
    served = h.idp.keys_served
    forged = h.idp.mint(h.idp.users[0], "api://" + h.config.console_app().client_id)
    for n in range(10):
        token = jwt_with_kid(forged, f"random-{n}")
        response = await browser.get(
            f"{h.url}/api/v1/environments", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status == 401
    assert h.idp.keys_served <= served + 1


def jwt_with_kid(token: str, kid: str) -> str:
    """The same claims and signature under a header naming another kid (a forgery)."""
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    decoded["kid"] = kid
    raw = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{raw}.{payload}.{signature}"


async def test_admin_tenant_sees_every_tenant(h: Harness) -> None:
    """A user of an admin tenant (configured by domain) sees both customer tenants."""
    browser = h.browser()
    assert (await h.sign_in(browser, "ada")).status == 302
    text = await (await browser.get(f"{h.url}/")).text()
    assert 'id="env-contoso_prod"' in text and 'id="env-fabrikam_prod"' in text
