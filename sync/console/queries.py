"""What the console reads from the control tables: a few read-only queries, rows as dicts.

The pages and the JSON API build their figures from these rows with the pure functions of
figures.py; nothing here decides what a row means. The only writes the console makes go
through the store's public resync and audit functions (resync requests and audit rows).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Integer, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.control import (
    environments,
    key_ranges,
    leases,
    mirror_columns,
    request_budget,
    run_history,
    sync_state,
)
from sync.store.relationship_metadata import intersect_tables
from sync.store.verify_runs import latest_query as verify_latest
from sync.store.verify_runs import recent_query as verify_recent

Row = Mapping[str, Any]
RECENT_RUNS = 20
RECENT_VERIFIES = 10


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


async def control_rows(
    engine: AsyncEngine, *, since: dt.datetime
) -> dict[str, list[dict[str, Any]]]:
    """Everything the overview and environment pages need, in one read-only connection."""
    recent = (
        select(
            run_history.c.environment,
            run_history.c.table_name,
            func.coalesce(func.sum(run_history.c.throttled), 0).label("throttled"),
            func.coalesce(func.sum(run_history.c.requests), 0).label("requests"),
            func.coalesce(func.sum(run_history.c.paused_seconds), 0).label("paused_seconds"),
            func.sum((run_history.c.status == "running").cast(Integer)).label("running"),
        )
        .where(run_history.c.started_at >= since)
        .group_by(run_history.c.environment, run_history.c.table_name)
    )
    ranges = select(
        key_ranges.c.environment,
        key_ranges.c.table_name,
        func.count().label("total"),
        func.sum(key_ranges.c.done.cast(Integer)).label("done"),
        func.sum(key_ranges.c.rows).label("rows"),
    ).group_by(key_ranges.c.environment, key_ranges.c.table_name)
    async with engine.connect() as conn:
        found = {
            "state": _rows(await conn.execute(select(sync_state))),
            "recent": _rows(await conn.execute(recent)),
            "ranges": _rows(await conn.execute(ranges)),
            "budgets": _rows(await conn.execute(select(request_budget))),
            "environments": _rows(await conn.execute(select(environments))),
            "leases": _rows(await conn.execute(select(leases))),
            "verify": _rows(await conn.execute(verify_latest())),
        }
    # The N:N tables each environment mirrors beside its list (its relationshipmetadata).
    names = sorted({str(row["environment"]) for row in found["state"]})
    found["intersect"] = [
        {"environment": name, "table_name": table}
        for name in names
        for table in await intersect_tables(engine, name)
    ]
    return found


async def table_rows(
    engine: AsyncEngine, environment: str, table: str, *, since: dt.datetime
) -> dict[str, list[dict[str, Any]]]:
    """One table's columns, its recent runs and verify runs, its runs of the last 24 h (plot)."""
    runs = run_history.c
    async with engine.connect() as conn:
        columns = await conn.execute(
            select(mirror_columns)
            .where(
                mirror_columns.c.environment == environment,
                mirror_columns.c.table_name == table,
                mirror_columns.c.removed_at.is_(None),
            )
            .order_by(mirror_columns.c.column_name)
        )
        recent = await conn.execute(
            select(run_history)
            .where(runs.environment == environment, runs.table_name == table)
            .order_by(runs.id.desc())
            .limit(RECENT_RUNS)
        )
        window = await conn.execute(
            select(run_history)
            .where(
                runs.environment == environment,
                runs.table_name == table,
                runs.started_at >= since,
            )
            .order_by(runs.started_at)
        )
        # The last success before the window starts: where the lag line begins.
        before = await conn.execute(
            select(func.max(runs.finished_at)).where(
                runs.environment == environment,
                runs.table_name == table,
                runs.status == "ok",
                runs.finished_at < since,
            )
        )
        verifies = await conn.execute(verify_recent(environment, table, RECENT_VERIFIES))
        return {
            "columns": _rows(columns),
            "verify_runs": _rows(verifies),
            "recent_runs": _rows(recent),
            "window_runs": _rows(window),
            "success_before": [{"finished_at": before.scalar()}],
        }
