"""The simulated Microsoft Entra ID authority (OAuth 2.0 client credentials, v2.0 endpoint).

Routes, per tenant (GUID or verified domain) [reference 1, checklist 10]:
``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``,
``GET /{tenant}/discovery/v2.0/keys`` and MSAL's ``GET /common/discovery/instance``.
The token endpoint takes a client secret (form body or HTTP Basic) or a client assertion JWT
signed with the app's registered certificate (assertion.py). Failures use Entra's full error
shape and the documented AADSTS codes (aadsts.py); success returns ``token_type``,
``expires_in``, ``ext_expires_in`` and ``access_token`` (no ``scope``, no refresh token).
An app may sign in to its home tenant, and — when multi-tenant — to tenants that consented.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import orjson
from aiohttp import web

from sync.simulator import aadsts
from sync.simulator.assertion import ASSERTION_TYPE, AssertionChecker
from sync.simulator.credentials import AppCredential
from sync.simulator.faults import EntraFaultInjector
from sync.simulator.scenario import AppSpec, Scenario, TenantSpec
from sync.simulator.tokens import TokenAuthority, normalise_resource

RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})


@dataclass
class EntraStats:
    """Tokens issued per tenant/app and errors per AADSTS code."""

    tokens_issued: Counter[str] = field(default_factory=Counter)  # "tenant/client_id"
    errors: Counter[str] = field(default_factory=Counter)  # "AADSTS<code>"

    def as_dict(self) -> dict[str, Any]:
        return {"tokens_issued": dict(self.tokens_issued), "errors": dict(self.errors)}


def _json(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache", **(headers or {})},
    )


class Entra:
    """One simulated authority serving every tenant of the scenario."""

    def __init__(
        self,
        scenario: Scenario,
        credentials: Mapping[str, AppCredential],
        tokens: TokenAuthority,
        *,
        host: str,
        resources: Mapping[str, Sequence[str]],
        faults: EntraFaultInjector,
    ) -> None:
        self._scenario = scenario
        self._credentials = credentials
        self._tokens = tokens
        self._host = host.rstrip("/")
        self._resources = {
            name: {normalise_resource(u) for u in urls} for name, urls in resources.items()
        }
        self.faults = faults
        self.stats = EntraStats()
        self.assertions = AssertionChecker(reject_replays=scenario.entra.reject_replayed_assertions)

    def credential(self, client_id: str) -> AppCredential | None:
        """One app's credential (the admin API adds and revokes its secrets)."""
        return self._credentials.get(client_id.strip().lower())

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/common/discovery/instance", self._instance_discovery)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        return app

    # -- discovery -------------------------------------------------------------------------

    async def _instance_discovery(self, request: web.Request) -> web.Response:
        authorize = urlsplit(request.query.get("authorization_endpoint", ""))
        tenant = authorize.path.strip("/").split("/")[0] or "common"
        netloc = urlsplit(self._host).netloc
        discovery = f"{self._host}/{tenant}/v2.0/.well-known/openid-configuration"
        return _json(
            200,
            {
                "tenant_discovery_endpoint": discovery,
                "api-version": "1.1",
                "metadata": [
                    {"preferred_network": netloc, "preferred_cache": netloc, "aliases": [netloc]}
                ],
            },
        )

    async def _openid(self, request: web.Request) -> web.Response:
        identifier = request.match_info["tenant"]
        tenant = self._scenario.tenant(identifier)
        if tenant is None:
            return self._error_response(request, aadsts.unknown_tenant(identifier))
        base = f"{self._host}/{tenant.tenant_id}"
        return _json(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": self._tokens.issuer(tenant.tenant_id),
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "cloud_instance_name": urlsplit(self._host).netloc,
            },
        )

    async def _keys(self, request: web.Request) -> web.Response:
        identifier = request.match_info["tenant"]
        if self._scenario.tenant(identifier) is None:
            return self._error_response(request, aadsts.unknown_tenant(identifier))
        return _json(200, self._tokens.jwks())

    # -- token -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        delay = self.faults.delay()
        if delay:
            await asyncio.sleep(delay)
        if self.faults.unavailable():
            self.stats.errors["503"] += 1
            retry_after = {"Retry-After": str(self.faults.rates.retry_after)}
            return self._error_response(request, aadsts.unavailable(), retry_after)
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            payload = self.grant(
                request.match_info["tenant"], fields, request.headers.get("Authorization")
            )
        except aadsts.EntraError as error:
            self.stats.errors[f"AADSTS{error.code}"] += 1
            return self._error_response(request, error)
        return _json(200, payload)

    def grant(
        self, identifier: str, form: Mapping[str, str], authorization: str | None
    ) -> dict[str, Any]:
        """Decide one client-credentials token request (raises `aadsts.EntraError`)."""
        tenant = self._scenario.tenant(identifier)
        if tenant is None:
            raise aadsts.unknown_tenant(identifier)
        basic_id, basic_secret = _basic_credentials(authorization)
        client_id = (form.get("client_id") or basic_id or "").strip().lower()
        if not client_id:
            raise aadsts.missing("client_id")
        if basic_id is not None and form.get("client_id") and basic_id.lower() != client_id:
            raise aadsts.malformed_request()
        grant_type = form.get("grant_type")
        if not grant_type:
            raise aadsts.missing("grant_type")
        if grant_type != "client_credentials":
            raise aadsts.unsupported_grant(grant_type)
        app = self._scenario.app(client_id)
        if app is None or not self._scenario.can_sign_in(app, tenant):
            raise aadsts.app_not_found(client_id, tenant.domain)
        self._authenticate(app, tenant, form, basic_secret)
        resource = self._resource(tenant, form.get("scope", ""))
        lifetime = self._scenario.token_lifetime
        self.stats.tokens_issued[f"{tenant.name}/{client_id}"] += 1
        token = self._tokens.issue(
            audience=resource, tenant_id=tenant.tenant_id, app_id=client_id, lifetime=lifetime
        )
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _authenticate(
        self, app: AppSpec, tenant: TenantSpec, form: Mapping[str, str], basic_secret: str | None
    ) -> None:
        credential = self._credentials[app.client_id]
        assertion = form.get("client_assertion")
        secret = form.get("client_secret") or basic_secret
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise aadsts.missing("client_assertion_type")
            audiences = [
                f"{self._host}/{t}/oauth2/{path}"
                for t in (tenant.tenant_id, tenant.domain)
                for path in ("v2.0/token", "token")
            ]
            resource = normalise_resource(form.get("scope", ""))
            self.assertions.check(assertion, credential, audiences=audiences, resource=resource)
        elif secret is not None:
            # Any of the app's live secrets will do (a rotation holds two for a while).
            if not credential.accepts_secret(secret):
                raise aadsts.bad_secret(app.client_id)
            if app.secret_expired:
                raise aadsts.expired_secret(app.client_id)
        else:
            raise aadsts.no_credential()

    def _resource(self, tenant: TenantSpec, scope: str) -> str:
        """The environment URL a ``<resource>/.default`` scope names, if this tenant has it."""
        scopes = [s for s in scope.split() if s not in RESERVED_SCOPES]
        if not scopes:
            raise aadsts.missing("scope")
        if len(scopes) > 1:
            raise aadsts.invalid_scope(scope)
        if not scopes[0].endswith("/.default"):
            raise aadsts.scope_without_default(scopes[0])
        resource = normalise_resource(scopes[0].removesuffix("/.default"))
        parts = urlsplit(resource)
        if parts.scheme != "https" or not parts.netloc:
            raise aadsts.invalid_scope(scopes[0])
        if resource not in self._resources.get(tenant.name, set()):
            raise aadsts.unknown_resource(resource, tenant.domain)
        return resource

    # -- errors ----------------------------------------------------------------------------

    def _error_response(
        self,
        request: web.Request,
        error: aadsts.EntraError,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        # Entra echoes the caller's client-request-id (MSAL sends one) as the correlation id.
        body = error.body(host=self._host, correlation_id=request.headers.get("client-request-id"))
        return _json(error.status, body, headers)


def _basic_credentials(authorization: str | None) -> tuple[str | None, str | None]:
    """RFC 6749 §2.3.1: Basic base64(urlencode(id):urlencode(secret))."""
    if not authorization or not authorization.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None, None
    return unquote_plus(client_id), unquote_plus(secret)
