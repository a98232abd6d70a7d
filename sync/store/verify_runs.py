"""Read dv_verify_runs: the latest verify run of each table (status, console, alerts)."""

from __future__ import annotations

from sqlalchemy import Select, func, select

from sync.store.control import verify_runs


def latest_query() -> Select[tuple[object, ...]]:
    """The newest dv_verify_runs row of each environment and table."""
    newest = select(func.max(verify_runs.c.id)).group_by(
        verify_runs.c.environment, verify_runs.c.table_name
    )
    return (
        select(verify_runs)
        .where(verify_runs.c.id.in_(newest))
        .order_by(verify_runs.c.environment, verify_runs.c.table_name)
    )
