"""Checking an authorization request the way the v2.0 authorize endpoint does (pure).

Order matters, because it decides where an error goes: until the app and its ``redirect_uri``
are known good, Entra cannot trust the redirect and shows the error on its own page (unknown
tenant AADSTS90002, unknown app AADSTS700016, missing reply address AADSTS900971, unregistered
one AADSTS50011); after that, errors go back to the ``redirect_uri`` with ``error``,
``error_description`` (``AADSTSnnnn: …``) and ``state``, in the response mode asked for.

Redirect URIs match exactly (case-sensitive), except that the port of a ``localhost`` or
``127.0.0.1`` URI is ignored ("Redirect URI restrictions": loopback exceptions, RFC 8252).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

from sync.simulator import aadsts
from sync.simulator.scenario import LOOPBACK_HOSTS, AppSpec, Scenario, TenantSpec

MULTI_TENANT_AUTHORITIES = frozenset({"common", "organizations"})
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
GRAPH = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
RESPONSE_MODES = frozenset({"query", "fragment", "form_post"})
PROMPTS = frozenset({"none", "login", "consent", "select_account"})


class PageError(Exception):
    """An error Entra shows on its own page: the redirect URI cannot be trusted."""

    def __init__(self, error: aadsts.EntraError) -> None:
        super().__init__(error.text)
        self.error = error


class RedirectError(Exception):
    """An error sent back to the (verified) redirect URI."""

    def __init__(self, error: aadsts.EntraError, request: AuthorizationRequest) -> None:
        super().__init__(error.text)
        self.error = error
        self.request = request


@dataclass(frozen=True)
class AuthorizationRequest:
    """A request whose app and redirect URI are verified."""

    authority: str  # the {tenant} path segment, lower-case
    tenant: TenantSpec | None  # None for organizations/common
    app: AppSpec
    redirect_uri: str
    response_mode: str
    state: str | None
    scopes: tuple[str, ...] = ()
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    prompt: str | None = None
    login_hint: str | None = None
    max_age: int | None = None
    client_info: bool = False


def redirect_matches(requested: str, registered: Iterable[str]) -> bool:
    """Exact match, ignoring the port of a loopback URI."""
    asked = urlsplit(requested)
    for uri in registered:
        if uri == requested:
            return True
        known = urlsplit(uri)
        if asked.hostname in LOOPBACK_HOSTS and (
            known.scheme,
            known.hostname,
            known.path,
            known.query,
        ) == (asked.scheme, asked.hostname, asked.path, asked.query):
            return True
    return False


def parse(
    authority: str,
    query: Mapping[str, str],
    scenario: Scenario,
    redirect_uris: Mapping[str, Iterable[str]],
) -> AuthorizationRequest:
    """Verify the request or raise `PageError` / `RedirectError`."""
    authority = authority.lower()
    tenant = None
    if authority not in MULTI_TENANT_AUTHORITIES:
        tenant = scenario.tenant(authority)
        if tenant is None:
            raise PageError(aadsts.unknown_tenant(authority))
    client_id = (query.get("client_id") or "").strip().lower()
    if not client_id:
        raise PageError(aadsts.missing("client_id"))
    app = scenario.app(client_id)
    if app is None:
        raise PageError(aadsts.app_not_found(client_id, authority))
    redirect_uri = query.get("redirect_uri")
    if not redirect_uri:
        raise PageError(aadsts.no_reply_address())
    if not redirect_matches(redirect_uri, redirect_uris.get(app.client_id, ())):
        raise PageError(aadsts.reply_mismatch(redirect_uri, app.client_id))
    mode = query.get("response_mode") or "query"
    request = AuthorizationRequest(
        authority=authority,
        tenant=tenant,
        app=app,
        redirect_uri=redirect_uri,
        response_mode=mode if mode in RESPONSE_MODES else "query",
        state=query.get("state"),
    )
    if mode not in RESPONSE_MODES:
        raise RedirectError(aadsts.unsupported_response_mode(mode), request)
    return _checked(request, query, scenario)


def _checked(
    request: AuthorizationRequest, query: Mapping[str, str], scenario: Scenario
) -> AuthorizationRequest:
    def fail(error: aadsts.EntraError) -> RedirectError:
        return RedirectError(error, request)

    response_type = query.get("response_type")
    if not response_type:
        raise fail(aadsts.missing("response_type"))
    if response_type.strip() != "code":
        raise fail(aadsts.unsupported_response_type(response_type))
    scope = query.get("scope", "").split()
    if not scope:
        raise fail(aadsts.missing("scope"))
    for item in scope:
        if item not in OIDC_SCOPES and resource_of(item, scenario) is None:
            raise fail(aadsts.invalid_scope(item))
    if request.authority in MULTI_TENANT_AUTHORITIES and not request.app.multi_tenant:
        raise fail(aadsts.non_multitenant_common(request.app.client_id))
    challenge, method = _pkce(query, scenario, fail)
    prompt = query.get("prompt")
    if prompt is not None and prompt not in PROMPTS:
        raise fail(aadsts.invalid_request(f"The prompt value '{prompt}' is not supported."))
    max_age = query.get("max_age")
    if max_age is not None and not max_age.isdigit():
        raise fail(aadsts.invalid_request("max_age must be a number of seconds."))
    return AuthorizationRequest(
        authority=request.authority,
        tenant=request.tenant,
        app=request.app,
        redirect_uri=request.redirect_uri,
        response_mode=request.response_mode,
        state=request.state,
        scopes=tuple(scope),
        nonce=query.get("nonce"),
        code_challenge=challenge,
        code_challenge_method=method,
        prompt=prompt,
        login_hint=(query.get("login_hint") or "").strip().lower() or None,
        max_age=int(max_age) if max_age is not None else None,
        client_info=query.get("client_info") == "1",
    )


def _pkce(
    query: Mapping[str, str],
    scenario: Scenario,
    raise_: Callable[[aadsts.EntraError], RedirectError],
) -> tuple[str | None, str | None]:
    challenge = query.get("code_challenge")
    method = query.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            raise raise_(aadsts.missing("code_challenge"))
        if scenario.entra.pkce_required:
            raise raise_(
                aadsts.invalid_request(
                    "PKCE is required: send code_challenge and code_challenge_method=S256."
                )
            )
        return None, None
    method = method or "plain"  # the documented default when only the challenge is sent
    if method not in ("S256", "plain"):
        raise raise_(aadsts.invalid_request(f"code_challenge_method '{method}' is unknown."))
    if method == "plain" and not scenario.entra.pkce_plain_allowed:
        raise raise_(aadsts.invalid_request("code_challenge_method 'plain' is refused; use S256."))
    if (method == "S256" and len(challenge) != 43) or not 43 <= len(challenge) <= 128:
        raise raise_(aadsts.code_challenge_size())
    return challenge, method


def resource_of(scope: str, scenario: Scenario) -> str | None:
    """The resource a delegated scope names: Microsoft Graph, or an API app of the scenario
    (by App ID URI or client id); None when unknown."""
    if "/" not in scope:
        return GRAPH if scope in ("User.Read", "User.ReadBasic.All") else None
    base, _, name = scope.rpartition("/")
    if not name:
        return None
    if base.rstrip("/").lower() == GRAPH:
        return GRAPH
    app = scenario.api_app(base)
    return app.client_id if app is not None else None


def redirect_target(
    request: AuthorizationRequest, params: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """Where the response goes and its parameters; ``state`` is echoed when it was sent.

    A redirect URI without a path gets a trailing slash in query and fragment modes."""
    values = dict(params)
    if request.state is not None:
        values["state"] = request.state
    parts = urlsplit(request.redirect_uri)
    path = parts.path or ("/" if request.response_mode != "form_post" else "")
    encoded = urlencode(values)
    if request.response_mode == "fragment":
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, encoded)), values
    if request.response_mode == "query":
        query = f"{parts.query}&{encoded}" if parts.query else encoded
        return urlunsplit((parts.scheme, parts.netloc, path, query, "")), values
    return request.redirect_uri, values
