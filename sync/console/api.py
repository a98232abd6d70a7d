"""The JSON API: `/api/v1/environments` and `/api/v1/environments/<env>/tables`.

The same figures as the pages, under the same authorization: a browser session, or an Entra
bearer token issued for the registration (aud: its client id or App ID URI `api://<client id>`),
validated like an id_token, with the tenant and the roles from its claims. Errors are JSON
with a WWW-Authenticate header where OAuth says so.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sync.console import actions, figures, queries
from sync.console.authz import Principal
from sync.console.context import context_of, session_principal
from sync.console.oidc import SignInRefused
from sync.console.tokens import TokenRefused


def _json(status: int, document: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=orjson.dumps(document).decode(),
        content_type="application/json",
        headers=headers,
    )


def _unauthorized(reason: str) -> web.HTTPException:
    return web.HTTPUnauthorized(
        text=orjson.dumps({"error": "invalid_token", "error_description": reason}).decode(),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def caller(request: web.Request) -> Principal:
    """The session's user, else the bearer token's subject, else 401."""
    context = context_of(request)
    header = request.headers.get("Authorization", "")
    if not header:
        principal = await session_principal(request)
        if principal is None:
            raise web.HTTPUnauthorized(
                text=orjson.dumps(
                    {
                        "error": "unauthorized",
                        "error_description": "sign in or send an Entra bearer token",
                    }
                ).decode(),
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return principal
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send Authorization: Bearer <token>")
    try:
        identity = await context.validator.validate(token.strip(), audiences=context.api_audiences)
        signed_in = context.sign_in.authorize(identity)
    except TokenRefused as exc:
        await actions.audit(
            context.store,
            actions.actor_for(None, tid=exc.tenant_id),
            "api_refused",
            outcome=f"refused: {exc.reason}"[:255],
        )
        raise _unauthorized(exc.reason) from None
    except SignInRefused as exc:
        who = exc.identity
        await actions.audit(
            context.store,
            actions.actor_for(None, tid=who.tid if who else None, oid=who.oid if who else None),
            "api_refused",
            outcome=f"refused: {exc.reason}"[:255],
        )
        raise web.HTTPForbidden(
            text=orjson.dumps({"error": "forbidden", "error_description": exc.reason}).decode(),
            content_type="application/json",
        ) from None
    return signed_in.principal


async def environments(request: web.Request) -> web.Response:
    principal = await caller(request)
    context = context_of(request)
    now = context.now()
    raw = await queries.control_rows(context.store, since=now - figures.WINDOW)
    tenants = figures.overview(
        context.config, raw, context.directory.visible_tenants(principal), now
    )
    out = []
    for tenant in tenants:
        for env in tenant["environments"]:
            out.append({k: v for k, v in env.items() if k != "tables"})
    return _json(200, {"generated_at": now.isoformat(), "environments": out})


async def tables(request: web.Request) -> web.Response:
    principal = await caller(request)
    context = context_of(request)
    found = figures.find_environment(
        context.config, request.match_info["env"], context.directory.visible_tenants(principal)
    )
    if found is None:
        return _json(404, {"error": "not_found"})
    tenant, env = found
    now = context.now()
    raw = await queries.control_rows(context.store, since=now - figures.WINDOW)
    entry = figures.environment_entry(context.config, tenant, env, raw, now)
    return _json(
        200,
        {
            "generated_at": now.isoformat(),
            "environment": env.name,
            "tenant": tenant.name,
            "tables": entry["tables"],
            "resync_requests": await actions.recent_requests(
                context.store, env.name, since=now - figures.WINDOW
            ),
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/environments", environments)
    app.router.add_get("/api/v1/environments/{env}/tables", tables)
