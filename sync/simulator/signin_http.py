"""The browser half of the simulated sign-in: authorize, the account picker, and logout.

``GET /{tenant}/oauth2/v2.0/authorize`` (tenant: GUID, verified domain, ``organizations`` or
``common``) checks the request (authorize.py), then shows an account picker listing the users
of that tenant (of every tenant for organizations/common). A ``login_hint`` naming a user skips
the picker, unless ``prompt`` is ``login`` or ``select_account``; ``prompt=none`` signs in the
hinted user silently and is ``login_required`` (AADSTS50058) without a hint: the simulator keeps
no single-sign-on session. The picker's forms ``POST /{tenant}/login`` with an opaque ``ctx``
(single-use, one hour) and the chosen UPN. The account must exist (AADSTS50034, shown on the
picker), belong to the tenant asked for (AADSTS50020), the app must be usable there (home tenant
or, when multi-tenant, a tenant that consented: else ``consent_required`` AADSTS65001) and, when
the app requires assignment, the user must hold a role (AADSTS50105). Success returns ``code``,
``state``, ``session_state`` (and ``client_info`` when asked) in the response mode requested.

``GET|POST /{tenant}/oauth2/v2.0/logout`` redirects to ``post_logout_redirect_uri`` (with
``state``) when it is a registered redirect URI of an app of the scenario; otherwise it shows
the signed-out page and does not redirect.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson
from aiohttp import web

from sync.simulator import aadsts, signin_pages
from sync.simulator.authcodes import CodeStore, Grant
from sync.simulator.authorize import (
    AuthorizationRequest,
    PageError,
    RedirectError,
    parse,
    redirect_matches,
    redirect_target,
)
from sync.simulator.identities import UserSpec, user_roles
from sync.simulator.scenario import Scenario, TenantSpec

CONTEXT_LIFETIME = 3600.0


@dataclass(frozen=True)
class _Pending:
    request: AuthorizationRequest
    created: float


class SignIn:
    """Handlers over the scenario's directory, the code store and the registered URIs."""

    def __init__(
        self,
        scenario: Scenario,
        codes: CodeStore,
        redirect_uris: Mapping[str, list[str]],
        *,
        host: str,
        clock: Callable[[], float],
        on_error: Callable[[aadsts.EntraError], None],
    ) -> None:
        self._scenario = scenario
        self._codes = codes
        self._redirect_uris = redirect_uris
        self._host = host
        self._clock = clock
        self._on_error = on_error
        self._pending: dict[str, _Pending] = {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize)
        app.router.add_post("/{tenant}/login", self._login)
        app.router.add_route("GET", "/{tenant}/oauth2/v2.0/logout", self._logout)
        app.router.add_route("POST", "/{tenant}/oauth2/v2.0/logout", self._logout)

    # -- authorize -------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.Response:
        try:
            auth = parse(
                request.match_info["tenant"], request.query, self._scenario, self._redirect_uris
            )
        except PageError as failure:
            return self._page_error(request, failure.error)
        except RedirectError as failure:
            return self._redirect_error(request, failure.request, failure.error)
        if auth.login_hint and auth.prompt not in ("login", "select_account"):
            found = self._scenario.find_user(auth.login_hint)
            if found is not None:
                return self._complete(request, auth, *found)
        if auth.prompt == "none":
            return self._redirect_error(request, auth, aadsts.login_required())
        ctx = secrets.token_urlsafe(24)
        self._pending = {
            k: p
            for k, p in self._pending.items()
            if time.monotonic() - p.created < CONTEXT_LIFETIME
        }
        self._pending[ctx] = _Pending(auth, time.monotonic())
        error = ""
        if auth.login_hint and self._scenario.find_user(auth.login_hint) is None:
            unknown = aadsts.user_not_found(auth.login_hint, self._directory_name(auth))
            self._on_error(unknown)
            error = f"AADSTS{unknown.code}: {unknown.text}"
        return self._picker(auth, ctx, hint=auth.login_hint or "", error=error)

    def _picker(
        self, auth: AuthorizationRequest, ctx: str, *, hint: str = "", error: str = ""
    ) -> web.Response:
        tenants = (auth.tenant,) if auth.tenant is not None else self._scenario.tenants
        users = [
            {"name": u.name, "upn": u.upn, "tenant": t.domain} for t in tenants for u in t.users
        ]
        return signin_pages.picker(
            action=f"/{auth.authority}/login",
            ctx=ctx,
            client_id=auth.app.client_id,
            users=users,
            hint=hint,
            error=error,
        )

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        ctx, login = str(form.get("ctx", "")), str(form.get("login", "")).strip().lower()
        pending = self._pending.get(ctx)
        if pending is None or time.monotonic() - pending.created >= CONTEXT_LIFETIME:
            return self._page_error(
                request, aadsts.invalid_request("The sign-in session is unknown or has expired.")
            )
        auth = pending.request
        found = self._scenario.find_user(login) if login else None
        if found is None:
            failure = aadsts.user_not_found(login or "(empty)", self._directory_name(auth))
            self._on_error(failure)
            return self._picker(
                auth, ctx, hint=login, error=f"AADSTS{failure.code}: {failure.text}"
            )
        del self._pending[ctx]
        return self._complete(request, auth, *found)

    def _directory_name(self, auth: AuthorizationRequest) -> str:
        return auth.tenant.domain if auth.tenant is not None else auth.authority

    def _complete(
        self, request: web.Request, auth: AuthorizationRequest, tenant: TenantSpec, user: UserSpec
    ) -> web.Response:
        app = auth.app
        if auth.tenant is not None and tenant.tenant_id != auth.tenant.tenant_id:
            return self._page_error(
                request, aadsts.user_not_in_tenant(user.upn, auth.tenant.domain, app.client_id)
            )
        if tenant.name != app.home_tenant:
            if not app.multi_tenant:
                return self._redirect_error(
                    request, auth, aadsts.app_not_found(app.client_id, tenant.domain)
                )
            if app.client_id not in tenant.consented_apps:
                silent = auth.prompt == "none"
                return self._redirect_error(
                    request, auth, aadsts.consent_required(app.client_id, silent=silent)
                )
        if app.assignment_required and not user_roles(user, app):
            return self._page_error(request, aadsts.no_role_assignment(user.upn, app.client_id))
        code = self._codes.issue(
            Grant(
                client_id=app.client_id,
                redirect_uri=auth.redirect_uri,
                authority=auth.authority,
                tenant_id=tenant.tenant_id,
                user_oid=user.oid,
                scopes=auth.scopes,
                nonce=auth.nonce,
                code_challenge=auth.code_challenge,
                code_challenge_method=auth.code_challenge_method,
                auth_time=int(self._clock()),
                max_age=auth.max_age,
            )
        )
        params = {"code": code}
        if auth.client_info:
            params["client_info"] = client_info(user.oid, tenant.tenant_id)
        params["session_state"] = str(uuid.uuid4())
        return self._respond(auth, params)

    # -- responses -------------------------------------------------------------------------

    def _respond(self, auth: AuthorizationRequest, params: Mapping[str, str]) -> web.Response:
        target, fields = redirect_target(auth, params)
        if auth.response_mode == "form_post":
            return signin_pages.form_post(target, fields)
        raise web.HTTPFound(target, headers=signin_pages.HEADERS)

    def _redirect_error(
        self, request: web.Request, auth: AuthorizationRequest, error: aadsts.EntraError
    ) -> web.Response:
        self._on_error(error)
        body = error.body(host=self._host, correlation_id=request.headers.get("client-request-id"))
        return self._respond(
            auth,
            {
                "error": body["error"],
                "error_description": body["error_description"],
                "error_uri": body["error_uri"],
            },
        )

    def _page_error(self, request: web.Request, error: aadsts.EntraError) -> web.Response:
        self._on_error(error)
        body = error.body(host=self._host, correlation_id=request.headers.get("client-request-id"))
        return signin_pages.error_page(body)

    # -- logout ----------------------------------------------------------------------------

    async def _logout(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        identifier = request.match_info["tenant"].lower()
        if identifier not in ("common", "organizations") and not self._scenario.tenant(identifier):
            return self._page_error(request, aadsts.unknown_tenant(identifier))
        target = params.get("post_logout_redirect_uri")
        if not target:
            return signin_pages.signed_out()
        if not redirect_matches(target, self._registered(params.get("client_id"))):
            return signin_pages.signed_out(
                "post_logout_redirect_uri is not a redirect URI registered for the app, so "
                "you were not sent back to it."
            )
        if "state" in params:
            separator = "&" if "?" in target else "?"
            target = f"{target}{separator}{urlencode({'state': params['state']})}"
        raise web.HTTPFound(target, headers=signin_pages.HEADERS)

    def _registered(self, client_id: str | None) -> Iterable[str]:
        if client_id:
            return self._redirect_uris.get(client_id.lower(), [])
        return [uri for uris in self._redirect_uris.values() for uri in uris]


def client_info(oid: str, tenant_id: str) -> str:
    """base64url JSON ``{"uid", "utid"}``: what MSAL builds its home account id from."""
    raw = orjson.dumps({"uid": oid, "utid": tenant_id})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
