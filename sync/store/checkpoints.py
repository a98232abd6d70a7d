"""Read and write dv_sync_state and dv_run_history (SQLAlchemy Core, any dialect).

The cursor's checkpoint is written by `checkpoint_statements()` inside the page transaction
(store.writer.commit_page). A table is *parked* when its last error is newer than its last
success (`TableStatus.parked`); the phase column always keeps the real cursor phase, so a parked
table resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.store.control import run_history, sync_state
from sync.store.writer import write_control

Phase = Literal["new", "backfill", "resync", "delta", "watermark", "reconcile"]


@dataclass(frozen=True)
class TableState:
    """The checkpoint of one table: exactly what dv_sync_state stores about the cursor."""

    phase: Phase = "new"
    next_link: str | None = None
    delta_link: str | None = None
    watermark: str | None = None
    signpost: str | None = None
    resync_started_at: datetime | None = None
    last_reconcile: datetime | None = None

    @property
    def idle(self) -> bool:
        return (
            self.phase in ("delta", "watermark")
            and self.next_link is None
            and self.signpost is None
        )


PHASES: frozenset[str] = frozenset({"new", "backfill", "resync", "delta", "watermark", "reconcile"})


def utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored moment is UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _key(environment: str, table: str) -> Any:
    return and_(sync_state.c.environment == environment, sync_state.c.table_name == table)


@dataclass(frozen=True)
class TableStatus:
    """One row of `dvmirror status`: where a table stands and whether it is parked."""

    environment: str
    table: str
    cursor: TableState
    schema_hash: str | None
    row_count: int
    rows_upserted: int
    rows_deleted: int
    pages: int
    total_estimate: int | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    attempts: int
    parked_until: datetime | None
    updated_at: datetime | None

    @property
    def parked(self) -> bool:
        if self.last_error_at is None:
            return False
        return self.last_success is None or self.last_error_at > self.last_success

    def as_dict(self) -> dict[str, Any]:
        def text(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "environment": self.environment,
            "table": self.table,
            "phase": self.cursor.phase,
            "parked": self.parked,
            "row_count": self.row_count,
            "rows_upserted": self.rows_upserted,
            "rows_deleted": self.rows_deleted,
            "pages": self.pages,
            "total_estimate": self.total_estimate,
            "watermark": self.cursor.watermark,
            "has_delta_link": self.cursor.delta_link is not None,
            "last_success": text(self.last_success),
            "last_error": self.last_error,
            "last_error_at": text(self.last_error_at),
            "attempts": self.attempts,
            "parked_until": text(self.parked_until),
            "updated_at": text(self.updated_at),
        }


def _status(row: Any) -> TableStatus:
    phase: Phase = row.phase if row.phase in PHASES else "new"
    cursor = TableState(
        phase=phase,
        next_link=row.next_link,
        delta_link=row.delta_link,
        watermark=row.watermark,
        signpost=row.signpost,
        resync_started_at=utc(row.resync_started_at),
        last_reconcile=utc(row.last_reconcile),
    )
    return TableStatus(
        environment=row.environment,
        table=row.table_name,
        cursor=cursor,
        schema_hash=row.schema_hash,
        row_count=row.row_count,
        rows_upserted=row.rows_upserted,
        rows_deleted=row.rows_deleted,
        pages=row.pages,
        total_estimate=row.total_estimate,
        last_success=utc(row.last_success),
        last_error=row.last_error,
        last_error_at=utc(row.last_error_at),
        attempts=row.attempts,
        parked_until=utc(row.parked_until),
        updated_at=utc(row.updated_at),
    )


async def load(engine: AsyncEngine, environment: str, table: str) -> TableStatus | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(sync_state).where(_key(environment, table)))).first()
    return None if row is None else _status(row)


async def ensure(
    engine: AsyncEngine, environment: str, table: str, *, now: datetime
) -> TableStatus:
    """The table's state row, created (phase new) when missing."""
    found = await load(engine, environment, table)
    if found is not None:
        return found
    row = insert(sync_state).values(
        environment=environment, table_name=table, phase="new", updated_at=now
    )
    await write_control(engine, [row], environment=environment, table=table)
    created = await load(engine, environment, table)
    assert created is not None
    return created


async def statuses(engine: AsyncEngine, environment: str | None = None) -> list[TableStatus]:
    """Every table's status (optionally one environment), for `dvmirror status` and the daemon."""
    query = select(sync_state).order_by(sync_state.c.environment, sync_state.c.table_name)
    if environment is not None:
        query = query.where(sync_state.c.environment == environment)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [_status(r) for r in rows]


def _cursor_values(cursor: TableState) -> dict[str, Any]:
    return {
        "phase": cursor.phase,
        "next_link": cursor.next_link,
        "delta_link": cursor.delta_link,
        "watermark": cursor.watermark,
        "signpost": cursor.signpost,
        "resync_started_at": cursor.resync_started_at,
        "last_reconcile": cursor.last_reconcile,
    }


def checkpoint_statements(
    environment: str,
    table: str,
    cursor: TableState,
    *,
    now: datetime,
    upserted: int = 0,
    deleted: int = 0,
    pages: int = 1,
    row_count: int | None = None,
    run_id: int | None = None,
) -> list[Executable]:
    """The control-table writes that go into a page's transaction."""
    values: dict[str, Any] = {
        **_cursor_values(cursor),
        "rows_upserted": sync_state.c.rows_upserted + upserted,
        "rows_deleted": sync_state.c.rows_deleted + deleted,
        "pages": sync_state.c.pages + pages,
        "updated_at": now,
    }
    if row_count is not None:
        values["row_count"] = row_count
    statements: list[Executable] = [
        update(sync_state).where(_key(environment, table)).values(**values)
    ]
    if run_id is not None:
        statements.append(
            update(run_history)
            .where(run_history.c.id == run_id)
            .values(
                rows_upserted=run_history.c.rows_upserted + upserted,
                rows_deleted=run_history.c.rows_deleted + deleted,
                pages=run_history.c.pages + pages,
            )
        )
    return statements


async def save_cursor(
    engine: AsyncEngine, environment: str, table: str, cursor: TableState, *, now: datetime
) -> None:
    """Store a cursor change that comes with no page (e.g. an expired delta token → resync)."""
    statements = checkpoint_statements(environment, table, cursor, now=now, pages=0)
    await write_control(engine, statements, environment=environment, table=table)


async def _update(engine: AsyncEngine, environment: str, table: str, **values: Any) -> None:
    change = update(sync_state).where(_key(environment, table)).values(**values)
    await write_control(engine, [change], environment=environment, table=table)


async def set_schema_hash(
    engine: AsyncEngine, environment: str, table: str, schema_hash: str, *, now: datetime
) -> None:
    await _update(engine, environment, table, schema_hash=schema_hash, updated_at=now)


async def set_total_estimate(
    engine: AsyncEngine, environment: str, table: str, total: int, *, now: datetime
) -> None:
    await _update(engine, environment, table, total_estimate=total, updated_at=now)


async def record_error(
    engine: AsyncEngine,
    environment: str,
    table: str,
    message: str,
    *,
    now: datetime,
    attempts: int,
    retry_at: datetime | None = None,
) -> None:
    """Park the table: keep its checkpoint, note the error and when the scheduler will try
    again (`retry_at`, None when nothing will retry it: a one-off command)."""
    await _update(
        engine,
        environment,
        table,
        last_error=message[:2000],
        last_error_at=now,
        attempts=attempts + 1,
        parked_until=retry_at,
        updated_at=now,
    )


async def record_note(
    engine: AsyncEngine, environment: str, table: str, message: str, *, now: datetime
) -> None:
    """A report that is not a failure (schema drift): visible in status, cleared by success."""
    await _update(
        engine, environment, table, last_error=message[:2000], last_error_at=now, updated_at=now
    )


async def record_success(
    engine: AsyncEngine, environment: str, table: str, *, now: datetime
) -> None:
    await _update(
        engine, environment, table, last_success=now, attempts=0, parked_until=None, updated_at=now
    )


async def start_run(
    engine: AsyncEngine, environment: str, table: str, command: str, *, now: datetime
) -> int:
    run = insert(run_history).values(
        environment=environment, table_name=table, command=command, started_at=now, status="running"
    )
    result = await write_control(engine, [run], environment=environment, table=table)
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


async def close_stale_runs(engine: AsyncEngine, environment: str, *, now: datetime) -> int:
    """Mark the environment's runs still shown as running as interrupted: their process ended
    without finishing them (killed, power loss). Only the environment's one writer calls this
    (the SQLite store's only writer process, or the holder of the environment's lease), before
    its own first run, so no live run is touched. Returns how many were closed."""
    close = (
        update(run_history)
        .where(run_history.c.environment == environment, run_history.c.status == "running")
        .values(
            status="interrupted",
            finished_at=now,
            error="the process ended before this run finished (killed or crashed); "
            "the next run resumed from the last checkpoint",
        )
    )
    result = await write_control(engine, [close], environment=environment, table="(runs)")
    return int(max(result.rowcount, 0))


async def finish_run(
    engine: AsyncEngine,
    run_id: int,
    *,
    status: str,
    now: datetime,
    error: str | None = None,
    requests: int = 0,
    throttled: int = 0,
    paused_seconds: float = 0.0,
) -> None:
    finish = (
        update(run_history)
        .where(run_history.c.id == run_id)
        .values(
            status=status,
            finished_at=now,
            error=error[:2000] if error else None,
            requests=requests,
            throttled=throttled,
            paused_seconds=round(paused_seconds, 3),
        )
    )
    await write_control(engine, [finish], environment="", table="(runs)")


def history_cutoff(now: datetime, keep_days: int) -> datetime:
    """Runs that started before this are pruned (pure)."""
    return now - timedelta(days=keep_days)


async def prune_run_history(engine: AsyncEngine, keep_days: int, *, now: datetime) -> int:
    """Delete finished runs that started more than `keep_days` ago; return how many. A run
    still marked running is kept whatever its age (the scheduler closes stale ones)."""
    cutoff = history_cutoff(now, keep_days)
    statement = delete(run_history).where(
        run_history.c.started_at < cutoff, run_history.c.status != "running"
    )
    result = await write_control(engine, [statement], environment="*", table="dv_run_history")
    return int(getattr(result, "rowcount", 0) or 0)
