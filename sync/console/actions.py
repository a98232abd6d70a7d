"""The console's only writes: audit rows and resync requests, through the store's public
functions (sync.store.audit, sync.store.requests), plus the reads of both for the pages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.console.authz import Principal
from sync.console.figures import iso
from sync.store import audit as store_audit
from sync.store import requests as store_requests
from sync.store.audit import Actor

ANONYMOUS = Actor(requested_by="console:(not signed in)")


def actor_for(
    principal: Principal | None,
    *,
    tid: str | None = None,
    oid: str | None = None,
    username: str | None = None,
) -> Actor:
    """The audit's who: a signed-in user, or what a refused sign-in revealed (maybe nothing)."""
    if principal is not None:
        tid, oid, username = principal.tid, principal.oid, principal.username
    if tid is None and oid is None:
        return ANONYMOUS
    return Actor(
        requested_by=f"console:{username or '?'} ({oid or '?'})",
        tenant_id=tid,
        user_oid=oid,
        preferred_username=username,
    )


async def audit(
    store: AsyncEngine,
    actor: Actor,
    action: str,
    *,
    outcome: str,
    environment: str | None = None,
    target: str = "",
) -> None:
    await store_audit.record_audit(
        store, actor, action, outcome=outcome, environment=environment, target=target
    )


async def request_resync(
    store: AsyncEngine, principal: Principal, environment: str, table: str | None
) -> dict[str, Any]:
    queued = await store_requests.request_resync(
        store, environment, table, actor=actor_for(principal)
    )
    return {"id": queued.request.id, "created": queued.created}


async def recent_requests(
    store: AsyncEngine, environment: str, *, since: dt.datetime
) -> list[dict[str, Any]]:
    out = []
    for req in await store_requests.list_requests(store, environment, since=since, limit=20):
        percent = (
            min(100, round(100 * req.rows_done / req.rows_expected)) if req.rows_expected else None
        )
        out.append(
            {
                "id": req.id,
                "table": req.table,
                "requested_by": req.requested_by,
                "requested_at": iso(req.requested_at),
                "state": str(req.state),
                "percent": percent,
                "finished_at": iso(req.finished_at),
                "error": req.error,
            }
        )
    return out


async def audit_rows(
    store: AsyncEngine, environment: str, tenant_id: str | None
) -> list[dict[str, Any]]:
    """The environment's actions, and the sign-ins (and refusals, sign-outs) of the users of
    its tenant (`tenant_id`, the directory id)."""
    return [
        {
            "at": iso(entry.at),
            "tenant_id": entry.tenant_id,
            "user_oid": entry.user_oid,
            "username": entry.preferred_username,
            "action": entry.action,
            "target": entry.target,
            "outcome": entry.outcome,
        }
        for entry in await store_audit.list_audit(
            store, environment=environment, user_events_of=tenant_id, limit=50
        )
    ]
