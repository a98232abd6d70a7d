"""Waiting for a running daemon's next cycle of a table (verify beside a daemon, read-only)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.control import sync_state

POLL_SECONDS = 1.0


async def _last_success(store: AsyncEngine, environment: str, table: str) -> datetime | None:
    query = select(sync_state.c.last_success).where(
        sync_state.c.environment == environment, sync_state.c.table_name == table
    )
    async with store.connect() as conn:
        value = (await conn.execute(query)).scalar_one_or_none()
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def wait_for_cycle(store: AsyncEngine, environment: str, table: str, patience: float) -> bool:
    """Until the daemon records a cycle of the table that ended after now; False after
    `patience` seconds without one (a parked or stopped daemon)."""
    started = datetime.now(UTC)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while loop.time() < deadline:
        last = await _last_success(store, environment, table)
        if last is not None and last > started:
            return True
        await asyncio.sleep(POLL_SECONDS)
    return False
