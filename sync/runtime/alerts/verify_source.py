"""verify_mismatch's input: the newest `dvmirror verify` result of each table (dv_verify_runs)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.runtime.alerts.observe import VerifyFinding
from sync.store.control import verify_runs

# A run that stopped (budget) or failed says nothing about the data: it neither raises nor
# clears a mismatch, so the finding is the newest run that concluded.
_CONCLUSIVE = {"match", "approximate", "mismatch", "repaired"}


def finding_of(row: dict[str, object]) -> VerifyFinding | None:
    """What one dv_verify_runs row says for alerts (pure): rows still different, or None."""
    if row["outcome"] not in _CONCLUSIVE:
        return None
    found = sum(int(row[k] or 0) for k in ("missing", "ghost", "stale"))  # type: ignore[call-overload]
    left = max(0, found - int(row["repaired"] or 0))  # type: ignore[call-overload]
    at = row["finished_at"] or row["started_at"]
    assert isinstance(at, datetime)
    return VerifyFinding(
        environment=str(row["environment"]),
        table=str(row["table_name"]),
        mismatched_rows=left,
        at=at if at.tzinfo else at.replace(tzinfo=UTC),
    )


class StoredVerifyFindings:
    """`VerifySource` over the store: every daemon (and `dvmirror verify`) writes the runs."""

    def __init__(self, store: AsyncEngine) -> None:
        self._store = store

    async def findings(self, environments: Collection[str]) -> Sequence[VerifyFinding] | None:
        wanted = list(environments)
        if not wanted:
            return []
        newest = (
            select(func.max(verify_runs.c.id))
            .where(verify_runs.c.environment.in_(wanted))
            .where(verify_runs.c.outcome.in_(sorted(_CONCLUSIVE)))
            .group_by(verify_runs.c.environment, verify_runs.c.table_name)
        )
        query = select(verify_runs).where(verify_runs.c.id.in_(newest))
        async with self._store.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(query)]
        return [f for f in map(finding_of, rows) if f is not None]
