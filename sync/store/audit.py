"""The audit (dv_audit): who did what — sign-ins, refusals, resync requests — and the outcome.

Rows hold names and ids only (tenant id, object id, preferred_username), never a secret or a
token; the outcome is one masked line: "ok…" or "refused: <reason>".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.logs import mask_text
from sync.store.checkpoints import utc
from sync.store.control import audit
from sync.store.writer import write_control

ERROR_LENGTH = 500  # one line: the console and `status` show it whole


def one_line(text: str) -> str:
    """A message as stored: masked, its first line, at most ERROR_LENGTH characters."""
    line = (mask_text(text).strip().splitlines() or [""])[0]
    return line if len(line) <= ERROR_LENGTH else line[: ERROR_LENGTH - 1] + "…"


@dataclass(frozen=True)
class Actor:
    """Who asks, for the request's `requested_by` and the audit row: `cli:<os user>`, or a
    console user (`console:<upn> (<oid>)`, with their tenant id and object id)."""

    requested_by: str
    tenant_id: str | None = None
    user_oid: str | None = None
    preferred_username: str | None = None


def audit_row(
    actor: Actor, action: str, *, at: datetime, environment: str | None, target: str, outcome: str
) -> Executable:
    return insert(audit).values(
        at=at,
        tenant_id=actor.tenant_id,
        user_oid=actor.user_oid,
        preferred_username=actor.preferred_username or actor.requested_by,
        action=action,
        environment=environment,
        target=target[:255],
        outcome=one_line(outcome)[:255],
    )


@dataclass(frozen=True)
class AuditEntry:
    """One row of dv_audit."""

    id: int
    at: datetime
    tenant_id: str | None
    user_oid: str | None
    preferred_username: str | None
    action: str
    environment: str | None
    target: str | None
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "tenant_id": self.tenant_id,
            "user_oid": self.user_oid,
            "preferred_username": self.preferred_username,
            "action": self.action,
            "environment": self.environment,
            "target": self.target,
            "outcome": self.outcome,
        }


async def record_audit(
    engine: AsyncEngine,
    actor: Actor,
    action: str,
    *,
    outcome: str,
    environment: str | None = None,
    target: str = "",
    now: datetime | None = None,
) -> None:
    """Append one audit row (sign_in, sign_in_refused, resync_refused, …). `outcome` is "ok"
    or "refused: <reason>"; it is stored as one masked line."""
    row = audit_row(
        actor,
        action[:32],
        at=now or datetime.now(UTC),
        environment=environment,
        target=target,
        outcome=outcome,
    )
    await write_control(engine, [row], environment=environment or "", table="(audit)")


async def list_audit(
    engine: AsyncEngine,
    *,
    environment: str | None = None,
    tenant_id: str | None = None,
    user_events_of: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit rows, most recent first, optionally of one environment or one user tenant.

    `user_events_of` (a directory id) adds, to an environment's rows, the rows about no
    environment (sign-ins, refusals, sign-outs) of that tenant's users."""
    query = select(audit).order_by(audit.c.id.desc()).limit(limit)
    if environment is not None and user_events_of is not None:
        query = query.where(
            or_(
                audit.c.environment == environment,
                and_(audit.c.environment.is_(None), audit.c.tenant_id == user_events_of),
            )
        )
    elif environment is not None:
        query = query.where(audit.c.environment == environment)
    if tenant_id is not None:
        query = query.where(audit.c.tenant_id == tenant_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out: list[AuditEntry] = []
    for row in rows:
        at = utc(row.at)
        assert at is not None
        out.append(
            AuditEntry(
                int(row.id),
                at,
                row.tenant_id,
                row.user_oid,
                row.preferred_username,
                row.action,
                row.environment,
                row.target,
                row.outcome,
            )
        )
    return out
