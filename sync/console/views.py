"""The pages: `/`, `/env/<env>`, `/env/<env>/table/<table>` and the resync POSTs (thin).

Each page needs a signed-in user (else: to the sign-in, with `next=` this path). An environment
the user may not see answers 404, exactly like one that does not exist. A resync POST needs the
session's CSRF token and the operator role; otherwise 403 and nothing is written.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session
from markupsafe import Markup

from sync.config.tenants import Environment, Tenant
from sync.console import actions, figures, queries, svg
from sync.console.authz import Principal
from sync.console.context import ConsoleContext, context_of, session_principal
from sync.console.security import safe_next
from sync.console.verify_figures import verify_entry
from sync.store.open import redact_url
from sync.store.requests import unmirrored

REFRESH_SECONDS = 10


async def require_user(request: web.Request) -> Principal:
    principal = await session_principal(request)
    if principal is None:
        target = safe_next(request.path_qs)
        raise web.HTTPFound(f"/auth/login?next={_quote(target)}")
    return principal


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def visible_environment(
    context: ConsoleContext, principal: Principal, name: str
) -> tuple[Tenant, Environment]:
    found = figures.find_environment(
        context.config, name, context.directory.visible_tenants(principal)
    )
    if found is None:
        raise web.HTTPNotFound(text="not found")
    return found


async def page_context(request: web.Request, principal: Principal) -> dict[str, Any]:
    context = context_of(request)
    session = await get_session(request)
    return {
        "user": principal,
        "is_operator": context.directory.can_operate(principal),
        "csrf_token": context.policy.csrf_token(session),
        "refresh": REFRESH_SECONDS,
        "generated_at": context.now().isoformat(timespec="seconds"),
        "store": redact_url(context.config.store_url),
    }


async def index(request: web.Request) -> web.StreamResponse:
    principal = await require_user(request)
    context = context_of(request)
    now = context.now()
    raw = await queries.control_rows(context.store, since=now - figures.WINDOW)
    tenants = figures.overview(
        context.config, raw, context.directory.visible_tenants(principal), now
    )
    page = await page_context(request, principal)
    return aiohttp_jinja2.render_template(
        "index.html", request, {**page, "tenants": tenants, "title": "Environments"}
    )


async def environment_page(request: web.Request) -> web.StreamResponse:
    principal = await require_user(request)
    context = context_of(request)
    tenant, env = visible_environment(context, principal, request.match_info["env"])
    now = context.now()
    raw = await queries.control_rows(context.store, since=now - figures.WINDOW)
    entry = figures.environment_entry(context.config, tenant, env, raw, now)
    page = await page_context(request, principal)
    operator = page["is_operator"]
    from sync.dataverse.auth import consent_url_for

    return aiohttp_jinja2.render_template(
        "environment.html",
        request,
        {
            **page,
            "title": env.name,
            "env": entry,
            "consent_url": consent_url_for(context.config.app_for(tenant), tenant),
            "requests": await actions.recent_requests(
                context.store, env.name, since=now - figures.WINDOW
            ),
            "audit": await actions.audit_rows(
                context.store, env.name, context.directory.tenants.get(tenant.name)
            )
            if operator
            else [],
        },
    )


async def table_page(request: web.Request) -> web.StreamResponse:
    principal = await require_user(request)
    context = context_of(request)
    tenant, env = visible_environment(context, principal, request.match_info["env"])
    table = request.match_info["table"]
    now = context.now()
    raw = await queries.control_rows(context.store, since=now - figures.WINDOW)
    entry = figures.environment_entry(context.config, tenant, env, raw, now)
    found = [t for t in entry["tables"] if t["table"] == table]
    if not found:
        raise web.HTTPNotFound(text="not found")
    rows = await queries.table_rows(context.store, env.name, table, since=now - figures.WINDOW)
    plot = svg.plot(rows["window_runs"], rows["success_before"][0]["finished_at"], now)
    page = await page_context(request, principal)
    return aiohttp_jinja2.render_template(
        "table.html",
        request,
        {
            **page,
            "title": f"{env.name} / {table}",
            "env": entry,
            "table": found[0],
            "columns": [figures.column_entry(r) for r in rows["columns"]],
            "runs": [figures.run_entry(r) for r in rows["recent_runs"]],
            "verify_runs": [verify_entry(r) for r in rows["verify_runs"]],
            "plot": Markup(plot),  # noqa: S704 - built by svg.plot, every text in it escaped
            "requests": [
                r
                for r in await actions.recent_requests(
                    context.store, env.name, since=now - figures.WINDOW
                )
                if r["table"] in (table, None)
            ],
        },
    )


async def _resync(request: web.Request, table: str | None) -> web.StreamResponse:
    context = context_of(request)
    principal = await session_principal(request)
    if principal is None:
        raise web.HTTPForbidden(text="sign in first")
    _, env = visible_environment(context, principal, request.match_info["env"])
    target = f"{env.name}/{table or '*'}"
    form = await request.post()
    session = await get_session(request)
    token = form.get("csrf_token")
    actor = actions.actor_for(principal)
    if not context.policy.csrf_ok(session, token if isinstance(token, str) else None):
        await actions.audit(
            context.store,
            actor,
            "resync_refused",
            outcome="refused: bad or missing CSRF token",
            environment=env.name,
            target=target,
        )
        raise web.HTTPForbidden(text="the form's CSRF token is missing or wrong; reload the page")
    if not context.directory.can_operate(principal):
        await actions.audit(
            context.store,
            actor,
            "resync_refused",
            outcome="refused: not an operator",
            environment=env.name,
            target=target,
        )
        raise web.HTTPForbidden(text=f"resync needs the {context.directory.operator_role} role")
    if table is not None and await unmirrored(context.store, env, table) is not None:
        raise web.HTTPNotFound(text="not found")
    await actions.request_resync(context.store, principal, env.name, table)
    back = f"/env/{env.name}" + (f"/table/{table}" if table else "")
    raise web.HTTPSeeOther(back)


async def resync_environment(request: web.Request) -> web.StreamResponse:
    return await _resync(request, None)


async def resync_table(request: web.Request) -> web.StreamResponse:
    return await _resync(request, request.match_info["table"])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/env/{env}", environment_page)
    app.router.add_get("/env/{env}/table/{table}", table_page)
    app.router.add_post("/env/{env}/resync", resync_environment)
    app.router.add_post("/env/{env}/table/{table}/resync", resync_table)
