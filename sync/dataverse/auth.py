"""Server-to-server tokens: one MSAL confidential client per tenant authority, off the loop.

`TokenProvider.token(scope)` returns a bearer token for `<environment url>/.default`, from a
small in-memory cache while it has more than `REFRESH_MARGIN` seconds left, else from MSAL
(whose own cache sits behind ours) in a worker thread, so the event loop never blocks on
HTTP. `force_refresh=True` (after a 401) evicts the token from both caches first.

TLS: MSAL talks through our own `requests.Session` pinned to `app.ca_bundle`; requests'
environment merging (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) cannot override it.
Instance discovery is off: MSAL would otherwise call login.microsoftonline.com, which is
wrong for sovereign clouds, private authorities and the simulator alike.

AADSTS errors become `AuthError` subclasses whose message and `fix` say what to do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from sync.config.credentials import AppRegistration
from sync.config.model import Config
from sync.config.tenants import Tenant
from sync.errors import (
    AuthError,
    ConsentError,
    CredentialError,
    DvmirrorError,
    NetworkError,
    ServerError,
    UnknownTenantError,
)
from sync.logs import get_logger, register_secret

log = get_logger("dvmirror.auth")

# Ask MSAL again when our cached token has less than this left (MSAL itself uses 5 minutes).
REFRESH_MARGIN = 300.0
TOKEN_HTTP_TIMEOUT = 30.0

SECRET_CODES = frozenset({7000215, 7000222, 7000218})
CERTIFICATE_CODES = frozenset({700027, 50012, 700024, 7000274, 7000277})
CONSENT_CODES = frozenset({700016, 65001, 650052, 650057})
TENANT_CODES = frozenset({90002, 900023, 90072})
# Entra cannot issue tokens right now: OAuth's `temporarily_unavailable` (reference 1.4: apps
# should go by `error`, not AADSTS numbers), or AADSTS90055, a throttled tenant. The request is
# good, so it is retried later like any 5xx; it is not the tenant's fault.
UNAVAILABLE_CODES = frozenset({90055})


class PinnedSession(requests.Session):
    """A requests session whose TLS trust is exactly `verify`, whatever the environment says.

    requests merges REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE into every request whose own
    `verify` is unset (MSAL never sets it), which would silently replace our CA bundle.
    Proxies from the environment still apply.
    """

    # What Entra said in its last error answer (`AADSTS90055: …`): MSAL's throttle replays a 5xx
    # as a bare "HTTP Error: 503", and the code is what an operator needs to see.
    last_error: str | None = None

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(*args, **kwargs)
        settings["verify"] = self.verify
        return settings


def make_http_client(ca_bundle: Path | None) -> PinnedSession:
    session = PinnedSession()
    session.verify = str(ca_bundle) if ca_bundle else True
    adapter = requests.adapters.HTTPAdapter(max_retries=1)
    session.mount("https://", adapter)
    session.request = _with_timeout(session, session.request)  # type: ignore[method-assign]
    return session


def _entra_error(response: Any) -> str | None:
    """The first line of an Entra error answer's description (it names the AADSTS code)."""
    try:
        document = response.json()
    except ValueError:
        return None
    description = document.get("error_description") if isinstance(document, dict) else None
    return str(description).splitlines()[0][:200] if description else None


def _with_timeout(session: PinnedSession, request: Any) -> Any:
    def send(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", TOKEN_HTTP_TIMEOUT)
        response = request(*args, **kwargs)
        if response.status_code >= 400:
            session.last_error = _entra_error(response) or session.last_error
        return response

    return send


def scope_for(environment_url: str) -> str:
    return f"{environment_url.rstrip('/')}/.default"


def consent_url_for(app: AppRegistration, tenant: Tenant) -> str:
    """The admin-consent URL a customer's administrator opens to install the app."""
    return (
        f"{app.authority_host}/{quote(tenant.tenant_id, safe='.-')}/adminconsent"
        f"?client_id={quote(app.client_id, safe='-')}"
    )


def consent_url(config: Config, tenant_name: str) -> str:
    """`dvmirror consent-url --tenant NAME`: raises ConfigError for an unknown tenant."""
    tenant = config.tenant(tenant_name)
    return consent_url_for(config.app_for(tenant), tenant)


def client_credential(app: AppRegistration) -> str | dict[str, str]:
    """MSAL's client_credential: the secret, or the certificate (SHA-1 x5t, or x5c chain)."""
    if app.client_secret is not None:
        secret = app.client_secret.get_secret_value()
        register_secret(secret)
        return secret
    certificate = app.certificate
    assert certificate is not None  # config guarantees exactly one credential
    if certificate.send_x5c:
        # Subject-name/issuer auth: MSAL derives the SHA-256 thumbprint and sends x5c.
        return {
            "private_key": certificate.private_key_pem.get_secret_value(),
            "public_certificate": certificate.certificate_pem,
        }
    return {
        "private_key": certificate.private_key_pem.get_secret_value(),
        "thumbprint": certificate.thumbprint_sha1,
    }


@dataclass
class _Cached:
    token: str
    expires_at: float


class TokenProvider:
    """Tokens for one tenant authority with one app registration (shared by its environments)."""

    def __init__(self, app: AppRegistration, tenant: Tenant) -> None:
        self.app = app
        self.tenant = tenant
        self.authority = f"{app.authority_host}/{tenant.tenant_id}"
        self._msal: Any = None
        self._build_lock = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._cache: dict[str, _Cached] = {}
        self.last_entra_error: str | None = None  # what Entra said when it last refused
        self._http: PinnedSession | None = None

    def __repr__(self) -> str:
        return f"TokenProvider(authority={self.authority!r}, client_id={self.app.client_id!r})"

    async def token(self, scope: str, *, force_refresh: bool = False) -> str:
        """A bearer token for `scope`; refreshed ahead of expiry, or now if forced."""
        lock = self._locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._cache.get(scope)
            if (
                cached
                and not force_refresh
                and cached.expires_at - time.monotonic() > REFRESH_MARGIN
            ):
                return cached.token
            app = await self._client()
            result = await asyncio.to_thread(self._acquire, app, scope, force_refresh)
            token = result.get("access_token")
            if not isinstance(token, str) or not token:
                failure = entra_busy(result, self.tenant) or auth_error_from(
                    result, self.app, self.tenant
                )
                self.last_entra_error = failure.message
                raise failure
            register_secret(token)
            expires_in = float(result.get("expires_in") or 0)
            self._cache[scope] = _Cached(token, time.monotonic() + expires_in)
            log.debug(
                "token_acquired",
                tenant=self.tenant.name,
                scope=scope,
                expires_in=expires_in,
                token_source=result.get("token_source"),
            )
            return token

    async def _client(self) -> Any:
        async with self._build_lock:
            if self._msal is None:
                self._msal = await asyncio.to_thread(self._build)
            return self._msal

    def _build(self) -> Any:
        import msal

        self._http = make_http_client(self.app.ca_bundle)
        try:
            return msal.ConfidentialClientApplication(
                self.app.client_id,
                client_credential=client_credential(self.app),
                authority=self.authority,
                http_client=self._http,
                instance_discovery=False,
                token_cache=msal.TokenCache(),
            )
        except ValueError as exc:
            if "authority" in str(exc).lower():
                raise UnknownTenantError(
                    f"tenant {self.tenant.name}: {self.authority} is not a known tenant "
                    "(its OpenID configuration could not be read)",
                    fix=TENANT_FIX,
                    tenant=self.tenant.name,
                ) from None
            raise CredentialError(
                f"tenant {self.tenant.name}: MSAL refused the credential: {exc}",
                fix=CERTIFICATE_FIX,
                tenant=self.tenant.name,
            ) from None
        except requests.RequestException as exc:
            raise transport_error(exc, self.authority, self.tenant) from None
        except msal.exceptions.MsalServiceError as exc:
            raise entra_unavailable(exc, self.tenant) from None

    def _acquire(self, app: Any, scope: str, force_refresh: bool) -> Mapping[str, Any]:
        if force_refresh:
            cache = app.token_cache
            for item in list(cache.search(cache.CredentialType.ACCESS_TOKEN, target=[scope])):
                cache.remove_at(item)
        import msal

        try:
            result: Mapping[str, Any] = app.acquire_token_for_client(scopes=[scope])
        except requests.RequestException as exc:
            raise transport_error(exc, self.authority, self.tenant) from None
        except msal.exceptions.MsalServiceError as exc:
            said = self._http.last_error if self._http is not None else None
            raise entra_unavailable(exc, self.tenant, said or self.last_entra_error) from None
        except ValueError as exc:
            raise AuthError(
                f"tenant {self.tenant.name}: token request failed: {exc}", tenant=self.tenant.name
            ) from None
        return result


def entra_unavailable(exc: Exception, tenant: Tenant, last_error: str | None = None) -> ServerError:
    """MSAL's own exception for a failed service call (a 5xx during discovery, or a 5xx that
    MSAL's throttle replays without its body): transient. What Entra said last (its AADSTS code
    and description) goes with it, so status and /healthz show the code; it holds no secret."""
    error = str(getattr(exc, "_error", "") or "")
    description = str(getattr(exc, "_error_description", "") or "").splitlines()
    said = ": ".join(part for part in (error, description[0][:200] if description else "") if part)
    said = said or str(exc).splitlines()[0][:120] if str(exc) else said
    last = f"; Entra last said: {last_error}" if last_error else ""
    return ServerError(
        f"tenant {tenant.name}: the token endpoint failed ({said or type(exc).__name__}){last}; "
        "will retry",
        tenant=tenant.name,
    )


def transport_error(
    exc: requests.RequestException, authority: str, tenant: Tenant
) -> DvmirrorError:
    """A requests failure while talking to Entra, as one of ours."""
    if isinstance(exc, requests.exceptions.SSLError):
        return AuthError(
            f"tenant {tenant.name}: TLS verification failed for {authority}",
            fix="set app.ca_bundle to the CA that signs the authority's certificate",
            tenant=tenant.name,
        )
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return ServerError(
            f"tenant {tenant.name}: the token endpoint answered HTTP {status}",
            tenant=tenant.name,
            status=status,
        )
    return NetworkError(
        f"tenant {tenant.name}: cannot reach {authority}: {type(exc).__name__}",
        tenant=tenant.name,
    )


def entra_busy(result: Mapping[str, Any], tenant: Tenant) -> ServerError | None:
    """Entra answered that it cannot issue tokens right now: transient (None otherwise)."""
    codes = {int(c) for c in result.get("error_codes") or () if str(c).isdigit()}
    if not codes & UNAVAILABLE_CODES and result.get("error") != "temporarily_unavailable":
        return None
    description = str(result.get("error_description") or "").splitlines()
    return ServerError(
        f"tenant {tenant.name}: Entra cannot issue tokens right now "
        f"({description[0][:200] if description else result.get('error')}); will retry",
        tenant=tenant.name,
    )


def auth_error_from(result: Mapping[str, Any], app: AppRegistration, tenant: Tenant) -> AuthError:
    """An MSAL error result as a clear AuthError (no secrets: MSAL never echoes them)."""
    codes = {int(c) for c in result.get("error_codes") or () if str(c).isdigit()}
    error = str(result.get("error") or "")
    description = str(result.get("error_description") or "").split("\r\n")[0].split("\n")[0]
    context = {"tenant": tenant.name, "code": error}
    if codes & SECRET_CODES:
        expired = 7000222 in codes
        return CredentialError(
            f"tenant {tenant.name}: the client secret is {'expired' if expired else 'wrong'} "
            f"({description})",
            fix=CREDENTIAL_HELP.format(client_id=app.client_id),
            **context,
        )
    if codes & CERTIFICATE_CODES or (error == "invalid_client" and app.certificate is not None):
        thumbprint = app.certificate.thumbprint_sha1.upper() if app.certificate else "?"
        return CredentialError(
            f"tenant {tenant.name}: the certificate was rejected ({description})",
            fix=CERTIFICATE_FIX + f" Thumbprint (SHA-1): {thumbprint}.",
            **context,
        )
    if codes & CONSENT_CODES or error == "unauthorized_client":
        url = consent_url_for(app, tenant)
        return ConsentError(
            f"tenant {tenant.name}: the app {app.client_id} is not consented in this tenant "
            f"({description})",
            fix=f"An administrator of {tenant.tenant_id} must grant admin consent: open {url}",
            **context,
        )
    if codes & TENANT_CODES or error == "invalid_tenant":
        return UnknownTenantError(
            f"tenant {tenant.name}: unknown tenant {tenant.tenant_id} ({description})",
            fix=TENANT_FIX,
            **context,
        )
    if error == "invalid_client":
        return CredentialError(
            f"tenant {tenant.name}: the credential was rejected ({description})",
            fix=CREDENTIAL_HELP.format(client_id=app.client_id),
            **context,
        )
    return AuthError(
        f"tenant {tenant.name}: token request failed: {error or 'error'} ({description})",
        **context,
    )


CREDENTIAL_HELP = (
    "Create a new client secret in the Entra admin center → App registrations → {client_id} → "
    "Certificates & secrets, copy its Value (not its ID) and update app.client_secret."
)
CERTIFICATE_FIX = (
    "Upload the certificate (public part) to the app registration → Certificates & secrets, or "
    "check that the key matches and the certificate has not expired."
)
TENANT_FIX = (
    "Check tenants[].tenant_id (GUID or verified domain) and app.authority_host "
    "(sovereign clouds use another host)."
)


class TokenProviders:
    """One `TokenProvider` per (authority, client id), so each tenant authority gets one client."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._providers: dict[tuple[str, str], TokenProvider] = {}

    def for_tenant(self, tenant: Tenant) -> TokenProvider:
        app = self._config.app_for(tenant)
        key = (f"{app.authority_host}/{tenant.tenant_id}", app.client_id)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = TokenProvider(app, tenant)
        return provider
