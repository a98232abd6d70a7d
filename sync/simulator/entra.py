"""The simulated Microsoft Entra ID authority (v2.0 endpoints).

Routes, per tenant (GUID or verified domain; ``organizations``/``common`` where Entra takes
them) [reference 1 and 11, checklist 10]: ``GET /{tenant}/v2.0/.well-known/openid-configuration``,
``POST /{tenant}/oauth2/v2.0/token``, ``GET /{tenant}/discovery/v2.0/keys``, MSAL's
``GET /common/discovery/instance``, and the browser sign-in (signin_http.py: authorize, the
account picker, logout). The token endpoint takes a client secret (form body or HTTP Basic) or a
client assertion JWT signed with the app's registered certificate (assertion.py), for two grants:

- ``client_credentials``: scope ``<Dataverse URL>/.default`` gives the access token the
  simulated environments accept; scope ``<App ID URI or client id of an API app>/.default``
  gives a v2.0 API access token (claims.py: ``aud`` the API's client id, ``roles`` assigned to
  the caller in that tenant). No ``scope`` in the answer, no refresh token.
- ``authorization_code`` (authcodes.py, code_grant.py): PKCE, redirect URI, single use,
  10-minute codes, id_token.

Failures use Entra's full error shape and the documented AADSTS codes (aadsts.py). An app may
sign in to its home tenant, and — when multi-tenant — to tenants that consented.
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
from sync.simulator.authcodes import CodeStore
from sync.simulator.authorize import MULTI_TENANT_AUTHORITIES
from sync.simulator.claims import app_token_claims
from sync.simulator.code_grant import token_response
from sync.simulator.credentials import AppCredential
from sync.simulator.faults import EntraFaultInjector
from sync.simulator.scenario import AppSpec, Scenario, TenantSpec
from sync.simulator.signin_http import SignIn
from sync.simulator.tokens import TokenAuthority, normalise_resource, service_principal_id

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
        # Redirect URIs per app: the scenario's, plus any the admin API registers later.
        self.redirect_uris: dict[str, list[str]] = {
            a.client_id: list(a.redirect_uris) for a in scenario.apps
        }
        self.codes = CodeStore(tokens.now)
        self.signin = SignIn(
            scenario,
            self.codes,
            self.redirect_uris,
            host=self._host,
            clock=tokens.now,
            on_error=self._count_error,
        )

    @property
    def tokens(self) -> TokenAuthority:
        return self._tokens

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    def _count_error(self, error: aadsts.EntraError) -> None:
        self.stats.errors[f"AADSTS{error.code}"] += 1

    def credential(self, client_id: str) -> AppCredential | None:
        """One app's credential (the admin API adds and revokes its secrets)."""
        return self._credentials.get(client_id.strip().lower())

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/common/discovery/instance", self._instance_discovery)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        self.signin.add_routes(app)
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
        """The discovery document; for organizations/common the issuer is the template
        ``…/{tenantid}/v2.0`` that a multi-tenant app fills with the token's ``tid``."""
        identifier = request.match_info["tenant"]
        if identifier.lower() in MULTI_TENANT_AUTHORITIES:
            segment, issuer = identifier.lower(), self._tokens.issuer("{tenantid}")
        else:
            tenant = self._scenario.tenant(identifier)
            if tenant is None:
                return self._error_response(request, aadsts.unknown_tenant(identifier))
            segment, issuer = tenant.tenant_id, self._tokens.issuer(tenant.tenant_id)
        base = f"{self._host}/{segment}"
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
                "issuer": issuer,
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "cloud_instance_name",
                    "cloud_instance_host_name",
                    "cloud_graph_host_name",
                    "msgraph_host",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "acr",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "at_hash",
                    "c_hash",
                    "email",
                ],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": None if segment in MULTI_TENANT_AUTHORITIES else "EU",
                "cloud_instance_name": urlsplit(self._host).netloc,
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            },
        )

    async def _keys(self, request: web.Request) -> web.Response:
        identifier = request.match_info["tenant"]
        known = identifier.lower() in MULTI_TENANT_AUTHORITIES or self._scenario.tenant(identifier)
        if not known:
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
        """Decide one token request (raises `aadsts.EntraError`)."""
        multi = identifier.lower() in MULTI_TENANT_AUTHORITIES
        tenant = None if multi else self._scenario.tenant(identifier)
        if tenant is None and not (multi and form.get("grant_type") == "authorization_code"):
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
        if grant_type == "authorization_code":
            return self._code_grant(identifier, tenant, client_id, form, basic_secret)
        if grant_type != "client_credentials":
            raise aadsts.unsupported_grant(grant_type)
        assert tenant is not None
        app = self._scenario.app(client_id)
        if app is None or not self._scenario.can_sign_in(app, tenant):
            raise aadsts.app_not_found(client_id, tenant.domain)
        self._authenticate(app, self._audiences(tenant, identifier), form, basic_secret)
        scope = form.get("scope", "")
        api = self._api_resource(tenant, scope)
        lifetime = self._scenario.token_lifetime
        if api is not None:
            token = self._api_token(app, api, tenant, lifetime)
        else:
            resource = self._resource(tenant, scope)
            token = self._tokens.issue(
                audience=resource, tenant_id=tenant.tenant_id, app_id=client_id, lifetime=lifetime
            )
        self.stats.tokens_issued[f"{tenant.name}/{client_id}"] += 1
        return {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def _code_grant(
        self,
        identifier: str,
        tenant: TenantSpec | None,
        client_id: str,
        form: Mapping[str, str],
        basic_secret: str | None,
    ) -> dict[str, Any]:
        """Redeem an authorization code: client authentication first, then the code."""
        app = self._scenario.app(client_id)
        if app is None or (tenant is not None and not self._scenario.can_sign_in(app, tenant)):
            raise aadsts.app_not_found(client_id, tenant.domain if tenant else identifier)
        self._authenticate(app, self._audiences(tenant, identifier), form, basic_secret)
        code, redirect_uri = form.get("code"), form.get("redirect_uri")
        if not code:
            raise aadsts.missing("code")
        if not redirect_uri:
            raise aadsts.missing("redirect_uri")
        grant = self.codes.redeem(
            code,
            client_id=client_id,
            redirect_uri=redirect_uri,
            code_verifier=form.get("code_verifier"),
            authority=identifier.lower(),
            tenant_ids=(tenant.tenant_id,) if tenant is not None else (),
        )
        response = token_response(
            grant, self._scenario, self._tokens, want_client_info=form.get("client_info") == "1"
        )
        signed_in = self._scenario.tenant(grant.tenant_id)
        self.stats.tokens_issued[f"{signed_in.name if signed_in else '?'}/{client_id}"] += 1
        return response

    def _audiences(self, tenant: TenantSpec | None, identifier: str) -> list[str]:
        """The token URLs a client assertion may name as its ``aud``."""
        names = [identifier.lower()] if tenant is None else [tenant.tenant_id, tenant.domain]
        return [
            f"{self._host}/{t}/oauth2/{path}" for t in names for path in ("v2.0/token", "token")
        ]

    def _api_resource(self, tenant: TenantSpec, scope: str) -> AppSpec | None:
        """The API app a ``<App ID URI or client id>/.default`` scope names, if any."""
        scopes = [s for s in scope.split() if s not in RESERVED_SCOPES]
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return None
        api = self._scenario.api_app(scopes[0].removesuffix("/.default"))
        if api is not None and not self._scenario.can_sign_in(api, tenant):
            raise aadsts.unknown_resource(scopes[0].removesuffix("/.default"), tenant.domain)
        return api

    def _api_token(self, app: AppSpec, api: AppSpec, tenant: TenantSpec, lifetime: int) -> str:
        now = int(self._tokens.now())
        return self._tokens.sign(
            app_token_claims(
                issuer=self._tokens.issuer(tenant.tenant_id),
                audience=api.client_id,
                tenant_id=tenant.tenant_id,
                client_id=app.client_id,
                principal_id=service_principal_id(tenant.tenant_id, app.client_id),
                roles=self._scenario.app_roles_granted(tenant, app.client_id, api.client_id),
                credential=app.credential,
                now=now,
                lifetime=lifetime,
            )
        )

    def _authenticate(
        self,
        app: AppSpec,
        audiences: list[str],
        form: Mapping[str, str],
        basic_secret: str | None,
    ) -> None:
        credential = self._credentials[app.client_id]
        assertion = form.get("client_assertion")
        secret = form.get("client_secret") or basic_secret
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise aadsts.missing("client_assertion_type")
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
