"""`BudgetStore` on the control database: `dv_request_budget` (tenant, window_start, used)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.errors import StoreError
from sync.store.control import request_budget


class SqlBudgetStore:
    """Persists each tenant's daily request counter; one row per tenant, overwritten."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self, tenant: str) -> tuple[datetime, int] | None:
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(request_budget.c.window_start, request_budget.c.used).where(
                            request_budget.c.tenant == tenant
                        )
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the request budget of {tenant}: {exc}") from exc
        if row is None:
            return None
        start = row.window_start
        if start.tzinfo is None:  # SQLite hands back naive datetimes
            start = start.replace(tzinfo=UTC)
        return start, int(row.used)

    async def save(self, tenant: str, window_start: datetime, used: int) -> None:
        try:
            async with self._engine.begin() as conn:
                updated = await conn.execute(
                    request_budget.update()
                    .where(request_budget.c.tenant == tenant)
                    .values(window_start=window_start, used=used)
                )
                if updated.rowcount == 0:
                    await conn.execute(
                        request_budget.insert().values(
                            tenant=tenant, window_start=window_start, used=used
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save the request budget of {tenant}: {exc}") from exc
