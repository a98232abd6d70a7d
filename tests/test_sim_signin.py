"""The simulated Entra's OpenID Connect sign-in, driven by real MSAL over real HTTPS: the
authorize endpoint and its account picker, the authorization_code grant, id_tokens checked
against the published JWKS, key rotation, logout, API access tokens, and the admin API's
minted (good and forged) id_tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from sync.errors import ConfigError
from sync.simulator.authcodes import s256
from sync.simulator.scenario import load_scenario
from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    app_info,
    running_simulator,
    tenant,
)

pytestmark = pytest.mark.usefixtures("no_ca_env")

WEB = "a1a1a1a1-0000-4000-8000-000000000001"
CERT = "a2a2a2a2-0000-4000-8000-000000000002"
SINGLE = "a3a3a3a3-0000-4000-8000-000000000003"
AUTOMATION = "a4a4a4a4-0000-4000-8000-000000000004"
CALLBACK = "http://127.0.0.1/auth/callback"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("signin", tmp_path_factory.mktemp("sim-signin")) as ready:
        yield ready


def tid(sim: dict[str, Any], name: str) -> str:
    return str(tenant(sim, name)["tenant_id"])


def client(
    sim: dict[str, Any], authority: str = "organizations", client_id: str = WEB
) -> msal.ConfidentialClientApplication:
    """A real MSAL web app (secret or certificate) for one authority of the simulator."""
    info = app_info(sim, client_id)
    if info["credential"] == "secret":
        credential: Any = info["client_secret"]
    else:
        cert = info["certificate"]
        credential = {
            "private_key": Path(cert["key"]).read_text(),
            "thumbprint": cert["thumbprint_sha1"],
        }
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{sim['authority_host']}/{authority}",
        instance_discovery=False,
        verify=sim["ca_file"],
    )


def get(sim: dict[str, Any], url: str, **kwargs: Any) -> requests.Response:
    return requests.get(url, verify=sim["ca_file"], allow_redirects=False, timeout=30, **kwargs)


def post(sim: dict[str, Any], url: str, data: dict[str, str]) -> requests.Response:
    return requests.post(url, data=data, verify=sim["ca_file"], allow_redirects=False, timeout=30)


def redirected(response: requests.Response) -> dict[str, str]:
    """The parameters of a redirect back to the app (query or fragment)."""
    assert response.status_code == 302, response.text[:500]
    parts = urlsplit(response.headers["Location"])
    return {k: v[0] for k, v in parse_qs(parts.query or parts.fragment).items()}


def back(response: requests.Response, redirect_uri: str = CALLBACK) -> dict[str, str]:
    """The parameters of a form_post response (the auto-submitting form to the redirect URI)."""
    assert response.status_code == 200, response.text[:500]
    assert f'action="{redirect_uri}"' in response.text, response.text[:500]
    return dict(re.findall(r'name="([^"]+)" value="([^"]*)"', response.text))


def pick(sim: dict[str, Any], picker: requests.Response, login: str) -> requests.Response:
    """Submit the account picker's form for `login`, as a browser would."""
    assert picker.status_code == 200, picker.text[:500]
    ctx = re.search(r'name="ctx" value="([^"]+)"', picker.text)
    action = re.search(r'<form method="post" action="([^"]+)"', picker.text)
    assert ctx is not None and action is not None
    return post(sim, sim["authority_host"] + action.group(1), {"ctx": ctx.group(1), "login": login})


def sign_in(
    sim: dict[str, Any],
    app: msal.ConfidentialClientApplication,
    upn: str,
    *,
    hint: bool = False,
    redirect_uri: str = CALLBACK,
    **flow_args: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """An auth code flow through the picker (or a login_hint): (MSAL flow, auth response)."""
    flow = app.initiate_auth_code_flow(
        [],
        redirect_uri=redirect_uri,
        login_hint=upn if hint else None,
        response_mode="form_post",
        **flow_args,
    )
    response = get(sim, flow["auth_uri"])
    if "Pick an account" in response.text:
        response = pick(sim, response, upn)
    return flow, back(response, redirect_uri)


def jwks(sim: dict[str, Any], authority: str = "organizations") -> dict[str, Any]:
    config = get(sim, f"{sim['authority_host']}/{authority}/v2.0/.well-known/openid-configuration")
    return dict(get(sim, config.json()["jwks_uri"]).json())


def verify(sim: dict[str, Any], token: str, audience: str = WEB) -> dict[str, Any]:
    """Validate a token as a relying party must: key by kid, RS256 pinned, aud, iss from tid."""
    header = jwt.get_unverified_header(token)
    keys = {k["kid"]: k for k in jwks(sim)["keys"]}
    if header.get("kid") not in keys:
        raise jwt.InvalidKeyError(f"unknown kid {header.get('kid')}")
    key = jwt.PyJWK(keys[header["kid"]], algorithm="RS256")
    unverified = jwt.decode(token, options={"verify_signature": False})
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=audience,
        issuer=f"{sim['authority_host']}/{unverified.get('tid')}/v2.0",
        leeway=300,
    )
    return claims


def entra_error(body: dict[str, Any] | dict[str, str], error: str, code: int) -> None:
    assert body["error"] == error, body
    assert str(body["error_description"]).startswith(f"AADSTS{code}: "), body


# -- discovery and keys ------------------------------------------------------------------------


def test_discovery_names_the_signin_endpoints_and_the_issuer_template(sim: dict[str, Any]) -> None:
    """A tenant's discovery document names authorize, token, logout and jwks endpoints and its
    issuer; organizations' issuer is the {tenantid} template; the JWKS carries kid = x5t."""
    host, contoso = sim["authority_host"], tid(sim, "contoso")
    for segment, issuer in ((contoso, contoso), ("organizations", "{tenantid}")):
        doc = get(sim, f"{host}/{segment}/v2.0/.well-known/openid-configuration").json()
        assert doc["issuer"] == f"{host}/{issuer}/v2.0"
        assert doc["authorization_endpoint"] == f"{host}/{segment}/oauth2/v2.0/authorize"
        assert doc["end_session_endpoint"] == f"{host}/{segment}/oauth2/v2.0/logout"
        assert doc["jwks_uri"] == f"{host}/{segment}/discovery/v2.0/keys"
        assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
        assert "form_post" in doc["response_modes_supported"]
        assert {"sub", "iss", "aud", "nonce", "tid"} <= set(doc["claims_supported"])
    (key,) = jwks(sim)["keys"]
    assert {"kty", "use", "kid", "x5t", "n", "e", "x5c"} <= set(key)
    assert key["kid"] == key["x5t"] and key["kty"] == "RSA" and key["use"] == "sig"


# -- a sign-in that works ----------------------------------------------------------------------


def test_msal_signs_in_through_the_picker_and_the_id_token_verifies(sim: dict[str, Any]) -> None:
    """Organizations authority, picker, MSAL redeems the code: the id_token verifies against the
    JWKS and carries the v2 claims, the user's app role and MSAL's nonce; the HTML escapes names."""
    app = client(sim)
    flow = app.initiate_auth_code_flow([], redirect_uri=CALLBACK, response_mode="form_post")
    picker = get(sim, flow["auth_uri"])
    assert "Ada &lt;Operator&gt; &amp; Co" in picker.text and "<Operator>" not in picker.text
    assert "fatima@fabrikam.onmicrosoft.com" in picker.text  # organizations lists every tenant
    auth = back(pick(sim, picker, "ada@contoso.onmicrosoft.com"))
    assert auth["state"] == flow["state"] and "session_state" in auth
    result = app.acquire_token_by_auth_code_flow(flow, auth)
    assert "id_token" in result, result
    claims = verify(sim, result["id_token"])
    header = jwt.get_unverified_header(result["id_token"])
    assert header["typ"] == "JWT" and header["alg"] == "RS256"
    assert claims["tid"] == tid(sim, "contoso") and claims["ver"] == "2.0"
    assert claims["oid"] == "c0c0c0c0-1111-4000-8000-000000000001"
    assert claims["preferred_username"] == "ada@contoso.onmicrosoft.com"
    assert claims["name"] == "Ada <Operator> & Co"
    assert claims["roles"] == ["Mirror.Operator"]
    assert claims["nonce"] == result["id_token_claims"]["nonce"]
    assert len(claims["sub"]) == 43 and claims["iat"] == claims["nbf"] < claims["exp"]
    assert result["token_type"] == "Bearer" and "User.Read" in result["scope"]
    graph = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert graph["aud"] == GRAPH_APP_ID  # openid profile alone: a Graph token, as Entra does
    assert "refresh_token" not in result


def test_login_hint_skips_the_picker_and_form_post_carries_the_code(sim: dict[str, Any]) -> None:
    """A login_hint naming a user signs in without the picker; response_mode=form_post returns
    an auto-submitting form to the redirect URI; a user without a role gets no roles claim."""
    app = client(sim, tid(sim, "contoso"))
    flow = app.initiate_auth_code_flow(
        [],
        redirect_uri=CALLBACK,
        login_hint="nadia@contoso.onmicrosoft.com",
        response_mode="form_post",
    )
    fields = back(get(sim, flow["auth_uri"]))
    assert fields["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, fields)
    claims = verify(sim, result["id_token"])
    assert claims["preferred_username"] == "nadia@contoso.onmicrosoft.com"
    assert "roles" not in claims


def test_sub_is_pairwise_per_app_and_roles_are_per_app(sim: dict[str, Any]) -> None:
    """One user signing in to two apps (one with a certificate credential) gets the same oid,
    two different subs, and each app's own role assignments."""
    claims = {}
    for client_id, redirect in (
        (WEB, CALLBACK),
        (CERT, "https://cert.contoso.example/auth/callback"),
    ):
        app = client(sim, "contoso.onmicrosoft.com", client_id)
        flow, auth = sign_in(
            sim, app, "victor@contoso.onmicrosoft.com", hint=True, redirect_uri=redirect
        )
        result = app.acquire_token_by_auth_code_flow(flow, auth)
        claims[client_id] = verify(sim, result["id_token"], audience=client_id)
    assert claims[WEB]["oid"] == claims[CERT]["oid"]
    assert claims[WEB]["sub"] != claims[CERT]["sub"]
    assert claims[WEB]["roles"] == ["Mirror.Viewer"]
    # roles = [...] apply to every app defining them; app_roles adds the cert app's own
    assert claims[CERT]["roles"] == ["Mirror.Viewer", "Mirror.Operator"]


def test_a_consented_tenants_user_gets_an_issuer_with_their_tid(sim: dict[str, Any]) -> None:
    """A Fabrikam user signing in through organizations gets iss = <host>/<fabrikam tid>/v2.0."""
    app = client(sim)
    flow, auth = sign_in(sim, app, "fatima@fabrikam.onmicrosoft.com", hint=True)
    claims = verify(sim, app.acquire_token_by_auth_code_flow(flow, auth)["id_token"])
    assert claims["iss"] == f"{sim['authority_host']}/{tid(sim, 'fabrikam')}/v2.0"
    assert claims["tid"] == tid(sim, "fabrikam")


# -- PKCE, redirect URIs, codes ----------------------------------------------------------------


def authorize_url(sim: dict[str, Any], **params: str) -> str:
    query = {
        "client_id": WEB,
        "response_type": "code",
        "redirect_uri": CALLBACK,
        "scope": "openid profile",
        "state": "st-1",
        "code_challenge": s256("v" * 43),
        "code_challenge_method": "S256",
        "login_hint": "ada@contoso.onmicrosoft.com",
        **params,
    }
    return f"{sim['authority_host']}/organizations/oauth2/v2.0/authorize?{urlencode(query)}"


def test_pkce_wrong_verifier_is_refused_and_burns_the_code(sim: dict[str, Any]) -> None:
    """A wrong code_verifier is invalid_grant AADSTS501481, and the code cannot be retried."""
    app = client(sim)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    good_verifier = flow["code_verifier"]
    flow["code_verifier"] = "x" * 43
    entra_error(app.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 501481)
    flow["code_verifier"] = good_verifier
    entra_error(app.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 54005)


def test_pkce_plain_or_missing_is_refused_back_at_the_redirect_uri(sim: dict[str, Any]) -> None:
    """code_challenge_method=plain and a request without PKCE go back to the redirect URI as
    invalid_request with the state; a wrong-sized S256 challenge is AADSTS501491."""
    plain = redirected(
        get(sim, authorize_url(sim, code_challenge="p" * 43, code_challenge_method="plain"))
    )
    entra_error(plain, "invalid_request", 90023)
    assert plain["state"] == "st-1"
    no_pkce = authorize_url(sim).replace("code_challenge", "x_unused")
    entra_error(redirected(get(sim, no_pkce)), "invalid_request", 90023)
    entra_error(
        redirected(get(sim, authorize_url(sim, code_challenge="short"))), "invalid_request", 501491
    )


def test_unregistered_redirect_uri_is_an_error_page_never_a_redirect(sim: dict[str, Any]) -> None:
    """A redirect URI the app has not registered gets Entra's AADSTS50011 page (no Location);
    a loopback URI on another port matches (Entra ignores a loopback port); the admin API can
    register one more URI."""
    evil = "https://evil.example/auth/callback"
    page = get(sim, authorize_url(sim, redirect_uri=evil))
    assert page.status_code == 400 and "Location" not in page.headers
    assert "AADSTS50011" in page.text and 'data-code="50011"' in page.text
    other_port = "http://127.0.0.1:54321/auth/callback"
    assert (
        get(sim, authorize_url(sim, redirect_uri=other_port))
        .headers["Location"]
        .startswith(other_port + "?code=")
    )
    late = "https://late.contoso.example/cb"
    assert get(sim, authorize_url(sim, redirect_uri=late)).status_code == 400
    registered = admin(sim, "POST", f"/apps/{WEB}/redirect-uris", {"uri": late})
    assert late in registered["redirect_uris"]
    assert redirected(get(sim, authorize_url(sim, redirect_uri=late)))["state"] == "st-1"


def test_a_code_is_single_use_and_bound_to_its_client_and_redirect(sim: dict[str, Any]) -> None:
    """Redeeming a code twice is AADSTS54005; by another client it is invalid_grant; with
    another redirect_uri it is AADSTS500112."""
    app = client(sim)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    assert "id_token" in app.acquire_token_by_auth_code_flow(flow, auth)
    entra_error(app.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 54005)

    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    other = client(sim, client_id=AUTOMATION)
    entra_error(other.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 70000)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    flow["redirect_uri"] = "https://console.contoso.example/auth/callback"
    entra_error(app.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 500112)


def test_a_code_expires_after_ten_minutes(sim: dict[str, Any]) -> None:
    """A code redeemed 601 s (authority clock) after issue is invalid_grant AADSTS70008."""
    app = client(sim)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    try:
        assert admin(sim, "POST", "/clock", {"advance": 601})["offset"] == 601
        entra_error(app.acquire_token_by_auth_code_flow(flow, auth), "invalid_grant", 70008)
    finally:
        admin(sim, "POST", "/clock", {"offset": 0})


# -- who may sign in ---------------------------------------------------------------------------


def test_unknown_users_and_other_tenants_users_cannot_sign_in(sim: dict[str, Any]) -> None:
    """An unknown account stays on the picker with AADSTS50034 (no redirect); a user of another
    tenant at a tenant-specific authority gets the AADSTS50020 page."""
    flow = client(sim).initiate_auth_code_flow([], redirect_uri=CALLBACK, response_mode="form_post")
    stay = pick(sim, get(sim, flow["auth_uri"]), "nobody@contoso.onmicrosoft.com")
    assert stay.status_code == 200 and "AADSTS50034" in stay.text
    hinted = client(sim).initiate_auth_code_flow(
        [],
        redirect_uri=CALLBACK,
        login_hint="ghost@contoso.onmicrosoft.com",
        response_mode="form_post",
    )
    assert "AADSTS50034" in get(sim, hinted["auth_uri"]).text
    at_contoso = client(sim, tid(sim, "contoso")).initiate_auth_code_flow(
        [],
        redirect_uri=CALLBACK,
        login_hint="fatima@fabrikam.onmicrosoft.com",
        response_mode="form_post",
    )
    page = get(sim, at_contoso["auth_uri"])
    assert page.status_code == 400 and "AADSTS50020" in page.text


def test_consent_single_tenant_and_assignment_errors(sim: dict[str, Any]) -> None:
    """A user of a tenant that never consented gets consent_required AADSTS65001 (with state);
    a single-tenant app at organizations gets AADSTS50194; an app that requires assignment
    shows AADSTS50105 to a user without a role."""
    flow = client(sim).initiate_auth_code_flow(
        [],
        redirect_uri=CALLBACK,
        login_hint="nick@northwind.onmicrosoft.com",
        response_mode="form_post",
    )
    refused = back(get(sim, flow["auth_uri"]))
    entra_error(refused, "consent_required", 65001)
    assert refused["state"] == flow["state"]
    single = authorize_url(
        sim, client_id=SINGLE, redirect_uri="https://single.contoso.example/auth/callback"
    )
    entra_error(redirected(get(sim, single)), "invalid_request", 50194)
    cert = client(sim, tid(sim, "contoso"), CERT).initiate_auth_code_flow(
        [],
        redirect_uri="https://cert.contoso.example/auth/callback",
        login_hint="nadia@contoso.onmicrosoft.com",
        response_mode="form_post",
    )
    assert "AADSTS50105" in get(sim, cert["auth_uri"]).text


def test_prompt_none_needs_a_hint(sim: dict[str, Any]) -> None:
    """prompt=none with a login_hint signs in silently; without one it is login_required."""
    app = client(sim)
    flow = app.initiate_auth_code_flow(
        [], redirect_uri=CALLBACK, prompt="none", response_mode="form_post"
    )
    entra_error(back(get(sim, flow["auth_uri"])), "login_required", 50058)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True, prompt="none")
    assert "id_token" in app.acquire_token_by_auth_code_flow(flow, auth)


# -- keys, logout, API tokens, minted tokens ---------------------------------------------------


def test_key_rotation_keeps_the_old_key_published_until_it_is_retired(sim: dict[str, Any]) -> None:
    """After a rotation new id_tokens carry the new kid and the old key stays in the JWKS, so
    older tokens still verify; once retired, its tokens meet an unknown kid."""
    app = client(sim)
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    before = app.acquire_token_by_auth_code_flow(flow, auth)["id_token"]
    old_kid = jwt.get_unverified_header(before)["kid"]
    rotated = admin(sim, "POST", "/signing-keys")
    assert rotated["active"] == rotated["added"] != old_kid
    assert set(rotated["published"]) == {old_kid, rotated["added"]}
    flow, auth = sign_in(sim, app, "ada@contoso.onmicrosoft.com", hint=True)
    after = app.acquire_token_by_auth_code_flow(flow, auth)["id_token"]
    assert jwt.get_unverified_header(after)["kid"] == rotated["added"]
    verify(sim, before)
    verify(sim, after)
    with pytest.raises(requests.HTTPError, match="409"):
        requests_admin(sim, "DELETE", f"/signing-keys/{rotated['added']}")
    assert admin(sim, "DELETE", f"/signing-keys/{old_kid}")["published"] == [rotated["added"]]
    with pytest.raises(jwt.InvalidKeyError, match="unknown kid"):
        verify(sim, before)


def requests_admin(sim: dict[str, Any], method: str, path: str) -> Any:
    response = requests.request(method, f"{sim['admin_url']}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def test_logout_redirects_only_to_a_registered_uri(sim: dict[str, Any]) -> None:
    """The end_session_endpoint sends the browser to a registered post_logout_redirect_uri
    (with state); an unregistered one gets the signed-out page and no redirect."""
    doc = get(sim, f"{sim['authority_host']}/organizations/v2.0/.well-known/openid-configuration")
    logout = doc.json()["end_session_endpoint"]
    back = get(
        sim,
        logout,
        params={"post_logout_redirect_uri": "https://console.contoso.example/", "state": "s9"},
    )
    assert back.status_code == 302
    assert back.headers["Location"] == "https://console.contoso.example/?state=s9"
    stay = get(sim, logout, params={"post_logout_redirect_uri": "https://evil.example/"})
    assert stay.status_code == 200 and "Location" not in stay.headers
    assert "not a redirect URI registered" in stay.text


def test_client_credentials_for_the_apps_api_carry_assigned_roles(sim: dict[str, Any]) -> None:
    """An automation app asking for <App ID URI>/.default gets a v2 token for the API: aud the
    API's client id, azp the caller, idtyp app, roles assigned in that tenant (none: no claim)."""
    scope = [f"api://{WEB}/.default"]
    contoso = client(sim, tid(sim, "contoso"), AUTOMATION).acquire_token_for_client(scope)
    claims = verify(sim, contoso["access_token"])
    assert claims["azp"] == AUTOMATION and claims["idtyp"] == "app"
    assert claims["tid"] == tid(sim, "contoso") and claims["roles"] == ["Mirror.Viewer"]
    assert claims["ver"] == "2.0" and claims["oid"] == claims["sub"]
    fabrikam = client(sim, tid(sim, "fabrikam"), AUTOMATION).acquire_token_for_client(scope)
    assert "roles" not in verify(sim, fabrikam["access_token"])
    by_client_id = client(sim, tid(sim, "contoso"), AUTOMATION).acquire_token_for_client(
        [f"{WEB}/.default"]
    )
    assert verify(sim, by_client_id["access_token"])["aud"] == WEB


def mint(sim: dict[str, Any], **body: Any) -> str:
    base = {"tenant": "contoso", "user": "ada@contoso.onmicrosoft.com", "client_id": WEB}
    return str(admin(sim, "POST", "/id-tokens", {**base, **body})["id_token"])


def test_minted_id_tokens_for_refusal_tests(sim: dict[str, Any]) -> None:
    """The admin API mints a valid id_token and the forgeries a relying party must refuse:
    another key, alg none, HS256 keyed with the public key, expired, wrong aud, iss of another
    tenant; each fails the validation a relying party does."""
    good = verify(sim, mint(sim, nonce="n-1"))
    assert good["nonce"] == "n-1" and good["roles"] == ["Mirror.Operator"]
    with pytest.raises(jwt.InvalidKeyError):
        verify(sim, mint(sim, signing="unknown-key"))
    with pytest.raises(jwt.InvalidSignatureError):
        verify(sim, mint(sim, signing="forged"))
    unsecured = mint(sim, signing="none")
    assert jwt.get_unverified_header(unsecured)["alg"] == "none" and unsecured.endswith(".")
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(sim, unsecured)
    confused = mint(sim, signing="hs256-public-key")
    signing_input, _, signature = confused.rpartition(".")
    public_pem = jwt.PyJWK(jwks(sim)["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(expected).rstrip(b"=").decode() == signature
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(sim, confused)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(sim, mint(sim, expires_in=-600))
    with pytest.raises(jwt.InvalidAudienceError):
        verify(sim, mint(sim, claims={"aud": CERT}))
    other_issuer = f"{sim['authority_host']}/{tid(sim, 'fabrikam')}/v2.0"
    with pytest.raises(jwt.InvalidIssuerError):
        verify(sim, mint(sim, claims={"iss": other_issuer}))
    assert "roles" not in jwt.decode(
        mint(sim, claims={"roles": None}), options={"verify_signature": False}
    )


def test_no_secret_or_code_reaches_the_simulators_output(sim: dict[str, Any]) -> None:
    """After the sign-ins above the simulator's stderr holds no client secret and no code."""
    stderr = (Path(sim["state_dir"]) / "simulator.stderr").read_text()
    assert app_info(sim, WEB)["client_secret"] not in stderr
    assert "1.A" not in stderr and "Traceback" not in stderr


# -- the scenario ------------------------------------------------------------------------------

BASE = """
[[apps]]
client_id = "a1a1a1a1-0000-4000-8000-000000000001"
home_tenant = "contoso"
app_roles = ["Mirror.Viewer"]
{app}
[[tenants]]
name = "contoso"
tenant_id = "c0c0c0c0-0000-4000-8000-000000000001"
domain = "contoso.onmicrosoft.com"
[[tenants.users]]
name = "A"
oid = "c0c0c0c0-1111-4000-8000-000000000001"
{user}
[[tenants.environments]]
name = "contoso_prod"
[[tenants.environments.tables]]
name = "account"
rows = 1
"""


@pytest.mark.parametrize(
    ("app", "user", "message"),
    [
        (
            "",
            'upn = "a@contoso.onmicrosoft.com"\nroles = ["Mirror.Admin"]',
            "no app defines role 'Mirror.Admin'",
        ),
        ("", 'upn = "a@fabrikam.onmicrosoft.com"', "is not in domain contoso.onmicrosoft.com"),
        (
            'redirect_uris = ["http://console.example/cb"]',
            'upn = "a@contoso.onmicrosoft.com"',
            "http is allowed only for localhost",
        ),
        ('app_id_uri = "urn:x"', 'upn = "a@contoso.onmicrosoft.com"', "is not an App ID URI"),
    ],
)
def test_bad_identities_in_a_scenario_are_one_clear_line(
    tmp_path: Path, app: str, user: str, message: str
) -> None:
    """An unknown role, a user outside the tenant's domain, an http redirect URI off loopback
    and a malformed App ID URI each give one ConfigError line naming the file and the key."""
    path = tmp_path / "bad.toml"
    path.write_text(BASE.format(app=app, user=user))
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
