"""S2S authentication against the simulated Entra ID over HTTPS, with real MSAL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sync.dataverse.auth import (
    PinnedSession,
    TokenProviders,
    auth_error_from,
    consent_url,
    make_http_client,
    scope_for,
)
from sync.errors import AuthError, ConsentError, CredentialError, UnknownTenantError
from tests.h3_helpers import write_config
from tests.simfixtures import running_simulator

CERT_APP = "22222222-2222-2222-2222-222222222222"


@pytest.fixture(scope="module", name="ready")
def _ready(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("auth", tmp_path_factory.mktemp("sim")) as ready:
        yield ready


def env_url(ready: dict[str, Any], name: str) -> str:
    return next(e["url"] for t in ready["tenants"] for e in t["environments"] if e["name"] == name)


async def token(config: Any, tenant: str, env: str, **kwargs: Any) -> str:
    providers = TokenProviders(config)
    tenant_ = config.tenant(tenant)
    environment = next(e for e in tenant_.environments if e.name == env)
    return await providers.for_tenant(tenant_).token(scope_for(environment.url), **kwargs)


def test_pinned_session_ignores_ca_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE cannot replace the session's CA bundle."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    session = make_http_client(Path("/tmp/our-ca.pem"))
    settings = session.merge_environment_settings("https://login.example", {}, None, None, None)
    assert settings["verify"] == "/tmp/our-ca.pem"
    plain = requests.Session()
    plain.verify = "/tmp/our-ca.pem"
    overridden = plain.merge_environment_settings("https://login.example", {}, None, None, None)
    assert overridden["verify"] != "/tmp/our-ca.pem"  # the trap PinnedSession closes
    assert isinstance(session, PinnedSession)


async def test_secret_token_despite_system_ca_bundle_in_environment(
    ready: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client secret gets a token over TLS trusting only the simulator CA, whatever
    REQUESTS_CA_BUNDLE says; the cached token is reused, a forced refresh gets a new one."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    config = write_config(tmp_path, ready, environments=["contoso_prod"])
    providers = TokenProviders(config)
    provider = providers.for_tenant(config.tenant("contoso"))
    scope = scope_for(env_url(ready, "contoso_prod"))
    first = await provider.token(scope)
    assert first == await provider.token(scope)
    assert first != await provider.token(scope, force_refresh=True)
    assert first not in repr(provider)


@pytest.mark.parametrize("send_x5c", [False, True])
async def test_certificate_credential(
    ready: dict[str, Any], tmp_path: Path, send_x5c: bool
) -> None:
    """The single-tenant certificate app gets a token in its home tenant (x5t, or x5c chain)."""
    config = write_config(
        tmp_path, ready, environments=["contoso_prod"], client_id=CERT_APP, send_x5c=send_x5c
    )
    assert await token(config, "contoso", "contoso_prod")


async def test_single_tenant_app_outside_its_home_tenant(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """A single-tenant registration used in another tenant fails with an auth error and a fix."""
    config = write_config(tmp_path, ready, environments=["fabrikam_prod"], client_id=CERT_APP)
    with pytest.raises(AuthError) as caught:
        await token(config, "fabrikam", "fabrikam_prod")
    assert caught.value.fix


async def test_wrong_secret(ready: dict[str, Any], tmp_path: Path) -> None:
    """A wrong secret is a CredentialError naming the fix; the secret never appears in it."""
    config = write_config(
        tmp_path, ready, environments=["contoso_prod"], secret="not-the-secret-1234"
    )
    with pytest.raises(CredentialError) as caught:
        await token(config, "contoso", "contoso_prod")
    assert "Certificates & secrets" in (caught.value.fix or "")
    assert "not-the-secret-1234" not in str(caught.value) + (caught.value.fix or "")


async def test_missing_consent_gives_the_admin_consent_url(
    ready: dict[str, Any], tmp_path: Path
) -> None:
    """No consent in the customer tenant is a ConsentError whose fix is the consent URL."""
    config = write_config(tmp_path, ready, environments=["northwind_prod"])
    with pytest.raises(ConsentError) as caught:
        await token(config, "northwind", "northwind_prod")
    assert consent_url(config, "northwind") in (caught.value.fix or "")


async def test_unknown_tenant(ready: dict[str, Any], tmp_path: Path) -> None:
    """A tenant the authority does not know is an UnknownTenantError."""
    config = write_config(
        tmp_path,
        ready,
        environments=["contoso_prod"],
        extra_tenants=[
            ("ghost", "dddddddd-0000-0000-0000-00000000dead", env_url(ready, "contoso_prod"))
        ],
    )
    with pytest.raises(UnknownTenantError):
        await token(config, "ghost", "ghost_env")


def test_consent_url_shape(ready: dict[str, Any], tmp_path: Path) -> None:
    """consent-url prints {authority_host}/{tenant}/adminconsent?client_id=..."""
    config = write_config(tmp_path, ready, environments=["northwind_prod"])
    assert (
        f"{ready['authority_host']}/cccccccc-0000-0000-0000-000000000003/adminconsent"
        f"?client_id={ready['client_id']}" == consent_url(config, "northwind")
    )


@pytest.mark.parametrize(
    ("result", "error_class", "words"),
    [
        (
            {
                "error": "invalid_client",
                "error_codes": [7000222],
                "error_description": "AADSTS7000222: x\r\nTrace ID: 1",
            },
            CredentialError,
            "expired",
        ),
        (
            {
                "error": "invalid_client",
                "error_codes": [700027],
                "error_description": "AADSTS700027: sig",
            },
            CredentialError,
            "certificate",
        ),
        (
            {
                "error": "invalid_tenant",
                "error_codes": [90002],
                "error_description": "AADSTS90002: t",
            },
            UnknownTenantError,
            "unknown tenant",
        ),
        ({"error": "temporarily_unavailable", "error_description": "busy"}, AuthError, "busy"),
    ],
)
def test_aadsts_mapping(
    ready: dict[str, Any],
    tmp_path: Path,
    result: dict[str, Any],
    error_class: type[AuthError],
    words: str,
) -> None:
    """AADSTS error results become the matching AuthError, first line of the description only."""
    config = write_config(tmp_path, ready, environments=["contoso_prod"])
    tenant = config.tenant("contoso")
    error = auth_error_from(result, config.app_for(tenant), tenant)
    assert type(error) is error_class
    assert words in error.message
    assert "Trace ID" not in error.message
