"""The runs of an environment's own requests (WhoAmI, N:N discovery, the metadata tables'
refresh): requests sent for no table.

Their 429s pause the governor like any other, but no table run counts them. So that the stored
Retry-After pause (dv_run_history.paused_seconds, shown by the console and `status`) matches the
governor's, the daemon records them as finished runs of the pseudo-table `(environment)`
(command `environment`), one per span in which they were throttled (sync.runtime
.environment_pauses). A span without a 429 records nothing, so the run history does not grow
with every refresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.store.control import run_history
from sync.store.writer import write_control

ENVIRONMENT_TABLE = "(environment)"  # never a Dataverse logical name (those are [a-z0-9_])
ENVIRONMENT_COMMAND = "environment"


async def record_environment_run(
    engine: AsyncEngine,
    environment: str,
    *,
    started_at: datetime,
    now: datetime,
    requests: int,
    throttled: int,
    paused_seconds: float,
) -> None:
    run = insert(run_history).values(
        environment=environment,
        table_name=ENVIRONMENT_TABLE,
        command=ENVIRONMENT_COMMAND,
        started_at=started_at,
        finished_at=now,
        status="ok",
        requests=requests,
        throttled=throttled,
        paused_seconds=round(paused_seconds, 3),
    )
    await write_control(engine, [run], environment=environment, table=ENVIRONMENT_TABLE)


def environment_figures(recent: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """Requests, 429s and Retry-After seconds of the environment's own requests, from the
    per-table sums of recent runs (keyed by table name). Pure."""
    row = (recent or {}).get(ENVIRONMENT_TABLE) or {}
    return {
        "requests": int(row.get("requests") or 0),
        "throttled": int(row.get("throttled") or 0),
        "paused_seconds": round(float(row.get("paused_seconds") or 0.0), 3),
    }
