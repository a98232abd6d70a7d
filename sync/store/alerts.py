"""Alert state and deliveries (dv_alert_state, dv_alert_deliveries): the store side.

`AlertState` is what the pure rules (runtime.alerts.rules) read and return; this module only
loads and saves it. Upserts are a delete and an insert in one transaction, the same on SQLite
and PostgreSQL; only the daemon holding an environment writes its rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.store.checkpoints import utc
from sync.store.control import alert_deliveries, alert_state
from sync.store.writer import write_control


@dataclass(frozen=True)
class AlertKey:
    alert: str
    environment: str
    table: str  # '' for the whole environment (auth_failed, budget_exhausted)
    event: str


@dataclass(frozen=True)
class AlertState:
    active: bool
    since: datetime
    last_sent_at: datetime | None
    marker: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Delivery:
    """One alert's last delivery, as `status` shows it."""

    alert: str
    at: datetime
    kind: str
    event: str
    environment: str
    table: str
    outcome: str
    attempts: int
    last_ok_at: datetime | None
    failures: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "event": self.event,
            "environment": self.environment,
            "table": self.table or None,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None,
            "failures": self.failures,
        }


async def load_states(
    engine: AsyncEngine, environments: Collection[str]
) -> dict[AlertKey, AlertState]:
    if not environments:
        return {}
    query = select(alert_state).where(alert_state.c.environment.in_(sorted(environments)))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out: dict[AlertKey, AlertState] = {}
    for row in rows:
        since = utc(row.since)
        assert since is not None
        out[AlertKey(row.alert, row.environment, row.table_name, row.event)] = AlertState(
            active=bool(row.active),
            since=since,
            last_sent_at=utc(row.last_sent_at),
            marker=row.marker,
            detail=row.detail,
        )
    return out


def _key_clause(key: AlertKey) -> Any:
    return and_(
        alert_state.c.alert == key.alert,
        alert_state.c.environment == key.environment,
        alert_state.c.table_name == key.table,
        alert_state.c.event == key.event,
    )


async def save_states(
    engine: AsyncEngine, updates: Mapping[AlertKey, AlertState], *, now: datetime
) -> None:
    """Write the changed states in one transaction."""
    if not updates:
        return
    statements: list[Executable] = []
    for key, state in updates.items():
        statements.append(delete(alert_state).where(_key_clause(key)))
        statements.append(
            insert(alert_state).values(
                alert=key.alert,
                environment=key.environment,
                table_name=key.table,
                event=key.event,
                active=state.active,
                since=state.since,
                last_sent_at=state.last_sent_at,
                marker=state.marker[:64],
                detail=state.detail[:2000],
                updated_at=now,
            )
        )
    await write_control(engine, statements, environment="", table="dv_alert_state")


async def record_delivery(
    engine: AsyncEngine,
    *,
    alert: str,
    at: datetime,
    kind: str,
    event: str,
    environment: str,
    table: str,
    outcome: str,
    attempts: int,
) -> None:
    """The alert's last delivery: replaced, with the running count of failed ones."""
    ok = outcome == "ok"
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(alert_deliveries).where(alert_deliveries.c.alert == alert))
        ).first()
    values = {
        "at": at,
        "kind": kind,
        "event": event,
        "environment": environment,
        "table_name": table,
        "outcome": outcome[:255],
        "attempts": attempts,
    }
    if row is None:
        statement: Executable = insert(alert_deliveries).values(
            alert=alert, last_ok_at=at if ok else None, failures=0 if ok else 1, **values
        )
    else:
        statement = (
            update(alert_deliveries)
            .where(alert_deliveries.c.alert == alert)
            .values(
                last_ok_at=at if ok else row.last_ok_at,
                failures=row.failures + (0 if ok else 1),
                **values,
            )
        )
    await write_control(engine, [statement], environment=environment, table="dv_alert_deliveries")


def delivery_from_row(row: Mapping[str, Any]) -> Delivery:
    at = utc(row["at"])
    assert at is not None
    return Delivery(
        alert=row["alert"],
        at=at,
        kind=row["kind"],
        event=row["event"],
        environment=row["environment"],
        table=row["table_name"],
        outcome=row["outcome"],
        attempts=int(row["attempts"]),
        last_ok_at=utc(row["last_ok_at"]),
        failures=int(row["failures"]),
    )
