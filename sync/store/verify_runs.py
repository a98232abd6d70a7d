"""Read dv_verify_runs: the latest verify run of each table (status, console, alerts), a
table's recent runs (console), and one row as the entry status and the console both show."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

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


def recent_query(environment: str, table: str, limit: int) -> Select[tuple[object, ...]]:
    """A table's newest `limit` verify runs, newest first."""
    return (
        select(verify_runs)
        .where(verify_runs.c.environment == environment, verify_runs.c.table_name == table)
        .order_by(verify_runs.c.id.desc())
        .limit(limit)
    )


def _iso(value: Any) -> str | None:
    if not isinstance(value, dt.datetime):
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # SQLite: naive UTC
    return moment.astimezone(dt.UTC).isoformat()


def entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One run: outcome, level, when, what level 3 found and what is left unrepaired."""
    missing, ghost, stale = int(row["missing"]), int(row["ghost"]), int(row["stale"])
    return {
        "environment": row["environment"],
        "table": row["table_name"],
        "outcome": row["outcome"],
        "level": int(row["level"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "missing": missing,
        "ghost": ghost,
        "stale": stale,
        "repaired": int(row["repaired"]),
        "mismatch_rows": missing + ghost + stale - int(row["repaired"]),
        "detail": row["detail"],
    }
