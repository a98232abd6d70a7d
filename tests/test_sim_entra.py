"""The simulated Entra token endpoint, driven by real MSAL and raw HTTPS over the simulator's CA."""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sync.simulator.tokens import InvalidToken, TokenAuthority
from tests.simfixtures import (
    _no_ca_env,  # noqa: F401 - registers the no_ca_env fixture
    admin,
    async_running_simulator,
    environment,
    msal_client,
    running_simulator,
    tenant,
)

pytestmark = pytest.mark.usefixtures("no_ca_env")

SECRET_APP = "11111111-1111-1111-1111-111111111111"
CERT_APP = "22222222-2222-2222-2222-222222222222"
EXPIRED_APP = "44444444-4444-4444-4444-444444444444"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim-entra")) as ready:
        yield ready


def scope(sim: dict[str, Any], env: str) -> str:
    return f"{environment(sim, env)['url']}/.default"


def token_url(sim: dict[str, Any], tenant_name: str) -> str:
    return f"{sim['authority_host']}/{tenant(sim, tenant_name)['tenant_id']}/oauth2/v2.0/token"


def post_token(
    sim: dict[str, Any], tenant_name: str, form: dict[str, str], **kwargs: Any
) -> requests.Response:
    return requests.post(
        token_url(sim, tenant_name), data=form, verify=sim["ca_file"], timeout=30, **kwargs
    )


def cert_paths(sim: dict[str, Any]) -> dict[str, str]:
    return next(a for a in sim["apps"] if a["client_id"] == CERT_APP)["certificate"]


def assertion(
    sim: dict[str, Any],
    *,
    tenant_name: str = "contoso",
    key: Any = None,
    alg: str = "RS256",
    header: str = "x5t",
    lifetime: int = 600,
    jti: str | None = None,
    audience: str | None = None,
) -> str:
    paths = cert_paths(sim)
    certificate = x509.load_pem_x509_certificate(Path(paths["cert"]).read_bytes())
    digest = hashes.SHA1() if header == "x5t" else hashes.SHA256()
    thumbprint = base64.urlsafe_b64encode(certificate.fingerprint(digest)).rstrip(b"=").decode()
    signing_key = key or serialization.load_pem_private_key(Path(paths["key"]).read_bytes(), None)
    now = int(time.time())
    claims = {
        "aud": audience or token_url(sim, tenant_name),
        "iss": CERT_APP,
        "sub": CERT_APP,
        "jti": jti or str(uuid.uuid4()),
        "iat": now,
        "exp": now + lifetime,
    }
    return jwt.encode(claims, signing_key, algorithm=alg, headers={header: thumbprint})


def assert_entra_error(
    response: requests.Response, status: int, error: str, code: int
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    description = body["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    for line in ("\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "):
        assert line in description
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }
    assert body["error_uri"].endswith(f"error?code={code}")
    return dict(body)


def test_msal_gets_token_with_secret(sim: dict[str, Any]) -> None:
    """MSAL with a client secret gets a Bearer token whose claims name the environment, tenant and app."""
    contoso = tenant(sim, "contoso")
    result = msal_client(sim, contoso["tenant_id"]).acquire_token_for_client(
        [scope(sim, "contoso_prod")]
    )
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3600
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["aud"] == environment(sim, "contoso_prod")["url"]
    assert claims["tid"] == contoso["tenant_id"]
    assert claims["appid"] == claims["azp"] == SECRET_APP
    assert {"oid", "iss", "exp", "nbf", "iat"} <= set(claims)


def test_raw_success_shape_has_no_scope(sim: dict[str, Any]) -> None:
    """A successful reply carries exactly token_type, expires_in, ext_expires_in and access_token."""
    response = post_token(
        sim,
        "contoso",
        {
            "client_id": SECRET_APP,
            "client_secret": sim["client_secret"],
            "grant_type": "client_credentials",
            "scope": scope(sim, "contoso_prod"),
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["expires_in"] == body["ext_expires_in"] == 3600


def test_secret_by_http_basic(sim: dict[str, Any]) -> None:
    """The client secret may come as HTTP Basic authentication instead of a form field."""
    response = post_token(
        sim,
        "contoso",
        {"grant_type": "client_credentials", "scope": scope(sim, "contoso_prod")},
        auth=(SECRET_APP, sim["client_secret"]),
    )
    assert response.status_code == 200, response.text


def test_tenant_by_domain(sim: dict[str, Any]) -> None:
    """An authority naming the tenant by its domain works and the token carries the tenant GUID."""
    contoso = tenant(sim, "contoso")
    result = msal_client(sim, contoso["domain"]).acquire_token_for_client(
        [scope(sim, "contoso_prod")]
    )
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["tid"] == contoso["tenant_id"]


def test_msal_certificate_with_thumbprint(sim: dict[str, Any]) -> None:
    """MSAL with a PEM key and SHA-1 thumbprint (RS256, x5t) gets a token for the single-tenant app."""
    contoso = tenant(sim, "contoso")
    result = msal_client(sim, contoso["tenant_id"], client_id=CERT_APP).acquire_token_for_client(
        [scope(sim, "contoso_prod")]
    )
    assert "access_token" in result, result


def test_msal_certificate_with_x5c(sim: dict[str, Any]) -> None:
    """MSAL with the public certificate (PS256, x5t#S256 and x5c) gets a token too."""
    paths = cert_paths(sim)
    credential = {
        "private_key": Path(paths["key"]).read_text(),
        "public_certificate": Path(paths["cert"]).read_text(),
    }
    client = msal_client(
        sim, tenant(sim, "contoso")["tenant_id"], client_id=CERT_APP, credential=credential
    )
    result = client.acquire_token_for_client([scope(sim, "contoso_prod")])
    assert "access_token" in result, result


def test_raw_ps256_assertion_with_sha256_thumbprint(sim: dict[str, Any]) -> None:
    """A hand-made PS256 assertion naming the certificate by x5t#S256 is accepted."""
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(sim, alg="PS256", header="x5t#S256"),
    }
    assert post_token(sim, "contoso", form).status_code == 200


def test_bad_secret_is_7000215(sim: dict[str, Any]) -> None:
    """A wrong secret gets 401 invalid_client AADSTS7000215 in Entra's full error shape, echoing client-request-id."""
    form = {
        "client_id": SECRET_APP,
        "client_secret": "not-the-secret",
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
    }
    body = assert_entra_error(
        post_token(
            sim,
            "contoso",
            form,
            headers={"client-request-id": "0e0e0e0e-1111-2222-3333-444444444444"},
        ),
        401,
        "invalid_client",
        7000215,
    )
    assert body["correlation_id"] == "0e0e0e0e-1111-2222-3333-444444444444"
    assert "not-the-secret" not in str(body)


def test_expired_secret_is_7000222(sim: dict[str, Any]) -> None:
    """The right secret of an app whose secret has expired gets 401 invalid_client AADSTS7000222."""
    expired = next(a for a in sim["apps"] if a["client_id"] == EXPIRED_APP)
    form = {
        "client_id": EXPIRED_APP,
        "client_secret": expired["client_secret"],
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
    }
    assert_entra_error(post_token(sim, "contoso", form), 401, "invalid_client", 7000222)


def test_msal_reports_bad_secret(sim: dict[str, Any]) -> None:
    """MSAL surfaces the 7000215 error dict (no exception) for a wrong secret."""
    client = msal_client(sim, tenant(sim, "contoso")["tenant_id"], credential="wrong")
    result = client.acquire_token_for_client([scope(sim, "contoso_prod")])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]


def test_not_consented_tenant_is_700016(sim: dict[str, Any]) -> None:
    """A multi-tenant app in a tenant that never consented gets 400 unauthorized_client AADSTS700016."""
    form = {
        "client_id": SECRET_APP,
        "client_secret": sim["client_secret"],
        "grant_type": "client_credentials",
        "scope": scope(sim, "northwind_prod"),
    }
    assert_entra_error(post_token(sim, "northwind", form), 400, "unauthorized_client", 700016)


def test_unknown_client_is_700016(sim: dict[str, Any]) -> None:
    """An unknown client id gets AADSTS700016 as well."""
    form = {
        "client_id": str(uuid.uuid4()),
        "client_secret": "x",
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
    }
    assert_entra_error(post_token(sim, "contoso", form), 400, "unauthorized_client", 700016)


def test_single_tenant_app_only_in_home_tenant(sim: dict[str, Any]) -> None:
    """The single-tenant certificate app is unknown in another tenant, even one that consented other apps."""
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "fabrikam_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(sim, tenant_name="fabrikam"),
    }
    assert_entra_error(post_token(sim, "fabrikam", form), 400, "unauthorized_client", 700016)


def test_unknown_tenant_is_90002_also_in_discovery(sim: dict[str, Any]) -> None:
    """An unknown tenant gets 400 invalid_tenant AADSTS90002 from discovery and token endpoint; MSAL refuses to build."""
    unknown = "dddddddd-0000-0000-0000-000000000009"
    discovery = requests.get(
        f"{sim['authority_host']}/{unknown}/v2.0/.well-known/openid-configuration",
        verify=sim["ca_file"],
        timeout=30,
    )
    assert_entra_error(discovery, 400, "invalid_tenant", 90002)
    token = requests.post(
        f"{sim['authority_host']}/{unknown}/oauth2/v2.0/token",
        data={
            "client_id": SECRET_APP,
            "client_secret": "x",
            "grant_type": "client_credentials",
            "scope": "x",
        },
        verify=sim["ca_file"],
        timeout=30,
    )
    assert_entra_error(token, 400, "invalid_tenant", 90002)
    with pytest.raises(ValueError):
        msal.ConfidentialClientApplication(
            SECRET_APP,
            client_credential="x",
            authority=f"{sim['authority_host']}/{unknown}",
            instance_discovery=False,
            verify=sim["ca_file"],
        )


def test_assertion_signed_by_another_key_is_700027(sim: dict[str, Any]) -> None:
    """An assertion naming the registered thumbprint but signed by another key fails signature validation."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(sim, key=other),
    }
    assert_entra_error(post_token(sim, "contoso", form), 401, "invalid_client", 700027)


def test_expired_assertion_is_700024(sim: dict[str, Any]) -> None:
    """An assertion whose exp has passed is outside its valid time range."""
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(sim, lifetime=-600),
    }
    assert_entra_error(post_token(sim, "contoso", form), 401, "invalid_client", 700024)


def test_assertion_for_another_audience_is_rejected(sim: dict[str, Any]) -> None:
    """An assertion whose aud is not this tenant's token URL is rejected."""
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(
            sim, audience="https://login.example.com/x/oauth2/v2.0/token"
        ),
    }
    assert_entra_error(post_token(sim, "contoso", form), 401, "invalid_client", 50013)


def test_replayed_assertion_is_rejected_for_the_same_resource(sim: dict[str, Any]) -> None:
    """The same jti is refused a second time for the same resource, as MSAL's reuse across resources is not a replay."""
    signed = assertion(sim, jti=str(uuid.uuid4()))
    form = {
        "client_id": CERT_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    assert post_token(sim, "contoso", form).status_code == 200
    assert_entra_error(post_token(sim, "contoso", form), 401, "invalid_client", 50013)
    other_resource = {**form, "scope": scope(sim, "contoso_nouser")}
    assert post_token(sim, "contoso", other_resource).status_code == 200


def test_scope_without_default_is_1002012(sim: dict[str, Any]) -> None:
    """A client-credentials scope without /.default gets invalid_scope AADSTS1002012."""
    form = {
        "client_id": SECRET_APP,
        "client_secret": sim["client_secret"],
        "grant_type": "client_credentials",
        "scope": f"{environment(sim, 'contoso_prod')['url']}/user_impersonation",
    }
    assert_entra_error(post_token(sim, "contoso", form), 400, "invalid_scope", 1002012)


def test_two_resources_is_70011(sim: dict[str, Any]) -> None:
    """Scopes of two resources in one request get invalid_scope AADSTS70011."""
    form = {
        "client_id": SECRET_APP,
        "client_secret": sim["client_secret"],
        "grant_type": "client_credentials",
        "scope": f"{scope(sim, 'contoso_prod')} {scope(sim, 'contoso_nouser')}",
    }
    assert_entra_error(post_token(sim, "contoso", form), 400, "invalid_scope", 70011)


def test_resource_of_another_tenant_is_500011(sim: dict[str, Any]) -> None:
    """Asking contoso for a token to fabrikam's environment gets invalid_resource AADSTS500011."""
    form = {
        "client_id": SECRET_APP,
        "client_secret": sim["client_secret"],
        "grant_type": "client_credentials",
        "scope": scope(sim, "fabrikam_prod"),
    }
    assert_entra_error(post_token(sim, "contoso", form), 400, "invalid_resource", 500011)


def test_missing_credential_is_7000218(sim: dict[str, Any]) -> None:
    """A request with neither secret nor assertion gets AADSTS7000218."""
    form = {
        "client_id": SECRET_APP,
        "grant_type": "client_credentials",
        "scope": scope(sim, "contoso_prod"),
    }
    assert_entra_error(post_token(sim, "contoso", form), 400, "invalid_client", 7000218)


def test_injected_503_carries_retry_after(sim: dict[str, Any]) -> None:
    """With the token endpoint's 503 fault switched on, replies are 503 with an integer Retry-After."""
    admin(sim, "POST", "/faults", {"entra": {"http_503": 1.0, "retry_after": 3}})
    try:
        form = {
            "client_id": SECRET_APP,
            "client_secret": sim["client_secret"],
            "grant_type": "client_credentials",
            "scope": scope(sim, "contoso_prod"),
        }
        response = post_token(sim, "contoso", form)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "3"
        assert response.json()["error"] == "temporarily_unavailable"
    finally:
        admin(sim, "POST", "/faults", {"entra": {"http_503": 0.0}})
    assert admin(sim, "GET", "/stats")["entra"]["errors"]["503"] >= 1  # this test's own reply


def test_token_expiry_follows_the_authority_clock() -> None:
    """A token is accepted until its exp by the authority's clock and refused after, with a reason but no token text."""
    now = [1_000_000.0]
    authority = TokenAuthority("https://127.0.0.1:1", clock=lambda: now[0])
    token = authority.issue(
        audience="https://127.0.0.1:2/", tenant_id="t", app_id=SECRET_APP, lifetime=120
    )
    assert authority.verify(token, audience="https://127.0.0.1:2").app_id == SECRET_APP
    now[0] += 120
    with pytest.raises(InvalidToken, match="expired") as caught:
        authority.verify(token, audience="https://127.0.0.1:2")
    assert token not in str(caught.value)


async def test_async_fixture_variant_starts_and_stops(tmp_path: Path) -> None:
    """The async wrapper yields the same ready line and stops the process on exit."""
    async with async_running_simulator("basic", tmp_path / "state") as ready:
        pid = ready["pid"]
        assert admin(ready, "GET", "/")["environments"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
