"""`/auth/login`, `/auth/callback`, `/auth/logout`: thin handlers around oidc.SignIn.

Sign-out is a POST with the session's CSRF token (a GET only shows the button), so another
site cannot sign a user out with a link or an image.

A refused sign-in leaves no session behind (the pending flow is taken out of the cookie before
anything else) and is audited with what the refusal revealed about the user.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session, new_session

from sync.console import actions
from sync.console.context import context_of, session_principal
from sync.console.oidc import SignInRefused
from sync.console.security import safe_next
from sync.console.tokens import TokenRefused
from sync.logs import get_logger

log = get_logger("dvmirror.console")


async def login(request: web.Request) -> web.StreamResponse:
    context = context_of(request)
    next_path = safe_next(request.query.get("next"))
    try:
        auth_uri, flow = await context.sign_in.start(login_hint=request.query.get("login_hint"))
    except Exception as exc:  # noqa: BLE001 - MSAL or the network: one clear page, not a 500
        log.warning("sign_in_unavailable", error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return aiohttp_jinja2.render_template(
            "refused.html",
            request,
            {
                "title": "Sign-in unavailable",
                "reason": "Entra ID cannot be reached right now.",
                "kind": "unavailable",
                "user": None,
            },
            status=503,
        )
    session = await new_session(request)
    context.policy.start_flow(session, {**flow, "next": next_path})
    raise web.HTTPFound(auth_uri)


async def callback(request: web.Request) -> web.StreamResponse:
    context = context_of(request)
    session = await get_session(request)
    flow = context.policy.take_flow(session)
    session.invalidate()  # whatever happens next, the pending flow is gone from this browser
    next_path = safe_next(str(flow.pop("next", "/"))) if flow else "/"
    try:
        signed_in = await context.sign_in.finish(flow, dict(request.query))
    except SignInRefused as exc:
        return await _refused(request, exc)
    except TokenRefused as exc:  # the tenant's keys or configuration could not be read
        return await _refused(request, SignInRefused(exc.reason))
    session = await new_session(request)
    context.policy.sign_in(session, signed_in.principal)
    await actions.audit(
        context.store,
        actions.actor_for(signed_in.principal),
        "sign_in",
        outcome="ok",
        target=signed_in.access.value,
    )
    raise web.HTTPFound(next_path)


async def _refused(request: web.Request, exc: SignInRefused) -> web.StreamResponse:
    context = context_of(request)
    identity = exc.identity
    actor = actions.actor_for(
        None,
        tid=identity.tid if identity else None,
        oid=identity.oid if identity else None,
        username=identity.username if identity else None,
    )
    await actions.audit(
        context.store, actor, "sign_in_refused", outcome=f"refused: {exc.reason}"[:255]
    )
    log.info("sign_in_refused", reason=exc.reason, tenant_id=identity.tid if identity else None)
    app = context.sign_in.app
    page = {
        "tenant": ("Tenant not configured", 403),
        "role": ("No role assigned", 403),
    }.get(exc.kind, ("Sign-in refused", 401))
    return aiohttp_jinja2.render_template(
        "refused.html",
        request,
        {
            "title": page[0],
            "reason": exc.reason,
            "kind": exc.kind,
            "tenant_id": identity.tid if identity else None,
            "user": None,
            "client_id": app.client_id,
            "operator_role": context.directory.operator_role,
            "viewer_role": context.directory.viewer_role,
        },
        status=page[1],
    )


async def logout_page(request: web.Request) -> web.StreamResponse:
    """GET /auth/logout signs nobody out (a link or an image elsewhere must not): a page with
    the sign-out button, whose POST carries the session's CSRF token."""
    context = context_of(request)
    principal = await session_principal(request)
    if principal is None:
        raise web.HTTPFound("/")
    session = await get_session(request)
    return aiohttp_jinja2.render_template(
        "signout.html",
        request,
        {
            "title": "Sign out",
            "user": principal,
            "is_operator": context.directory.can_operate(principal),
            "csrf_token": context.policy.csrf_token(session),
        },
    )


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /auth/logout with the CSRF token: clear the session, then the tenant's
    end_session_endpoint. Without the right token: 403 and the session stays."""
    context = context_of(request)
    principal = await session_principal(request)
    session = await get_session(request)
    if principal is None:
        session.invalidate()
        raise web.HTTPSeeOther("/")
    form = await request.post()
    token = form.get("csrf_token")
    if not context.policy.csrf_ok(session, token if isinstance(token, str) else None):
        raise web.HTTPForbidden(text="the form's CSRF token is missing or wrong; reload the page")
    session.invalidate()
    await actions.audit(context.store, actions.actor_for(principal), "sign_out", outcome="ok")
    try:
        metadata = await context.discovery.metadata(principal.tid)
    except TokenRefused:
        raise web.HTTPSeeOther("/") from None
    endpoint = metadata.get("end_session_endpoint")
    if not isinstance(endpoint, str):
        raise web.HTTPSeeOther("/")
    raise web.HTTPSeeOther(
        context.sign_in.end_session_url(endpoint, context.settings.public_url + "/")
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/auth/login", login)
    app.router.add_get("/auth/callback", callback)
    app.router.add_get("/auth/logout", logout_page)
    app.router.add_post("/auth/logout", logout)
