"""The dv_environments rows: what WhoAmI said about each environment's application user."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment, Tenant
from sync.store.control import environments


async def record_environment(
    engine: AsyncEngine,
    tenant: Tenant,
    environment: Environment,
    *,
    organization_id: str | None,
    application_user_id: str | None,
) -> None:
    now = datetime.now(UTC)
    values = {
        "tenant": tenant.name,
        "tenant_id": tenant.tenant_id,
        "url": environment.url,
        "organization_id": organization_id,
        "application_user_id": application_user_id,
        "updated_at": now,
    }
    async with engine.begin() as conn:
        updated = await conn.execute(
            update(environments).where(environments.c.name == environment.name).values(**values)
        )
        if updated.rowcount == 0:
            await conn.execute(
                insert(environments).values(name=environment.name, first_seen=now, **values)
            )
