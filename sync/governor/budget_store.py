"""`BudgetStore` on the control database: `dv_request_budget` (tenant, window_start, used)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sync.errors import StoreError
from sync.governor.gate import merged_budget
from sync.store.control import request_budget
from sync.store.dialect_insert import upsert_insert


class SqlBudgetStore:
    """Each tenant's daily request counter: one row per tenant, added to by every process."""

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
        return _utc(row.window_start), int(row.used)  # SQLite hands back naive datetimes

    async def add(self, tenant: str, window_start: datetime, spent: int) -> tuple[datetime, int]:
        """One transaction: lock the tenant's row, add `spent` (see `merged_budget`), return it.
        Processes that flush at once queue on the row lock, so none overwrites another."""
        try:
            async with self._engine.begin() as conn:
                row = await self._locked_row(conn, tenant)
                if row is None:
                    await conn.execute(
                        upsert_insert(conn, request_budget)
                        .values(tenant=tenant, window_start=window_start, used=0)
                        .on_conflict_do_nothing()
                    )
                    row = await self._locked_row(conn, tenant)
                stored = None if row is None else (_utc(row.window_start), int(row.used))
                merged = merged_budget(stored, window_start, spent)
                await conn.execute(
                    request_budget.update()
                    .where(request_budget.c.tenant == tenant)
                    .values(window_start=merged[0], used=merged[1])
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save the request budget of {tenant}: {exc}") from exc
        return merged

    @staticmethod
    async def _locked_row(conn: AsyncConnection, tenant: str) -> Any:
        query = (
            select(request_budget.c.window_start, request_budget.c.used)
            .where(request_budget.c.tenant == tenant)
            .with_for_update()
        )
        return (await conn.execute(query)).first()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
