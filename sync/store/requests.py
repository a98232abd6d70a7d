"""Resync requests (dv_resync_requests) and the audit (dv_audit): the store side.

A request asks for a full pass of one table, or of every table of an environment (`table`
None), ending with the sweep of the rows it did not see. `dvmirror resync` and the web console
write one with `request_resync` (a second open request for the same environment and table is
not written: the open one is returned, merged); the daemon holding the environment's lease
claims it with `claim` through its fenced engine (store.leases: only the lease holder can),
writes progress, then done or failed. Nobody else writes these rows after they were queued.

Each request is audited in the same transaction (store.audit). Errors are stored as one masked
line; no secret or token is ever written.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Row, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.config.tenants import Environment
from sync.errors import StoreError
from sync.store import key_ranges
from sync.store.audit import Actor, audit_row, one_line
from sync.store.checkpoints import TableState, checkpoint_statements, statuses, utc
from sync.store.control import resync_requests, sync_state
from sync.store.dialects import dialect_for
from sync.store.leases import token_stamp
from sync.store.relationship_metadata import intersect_tables
from sync.store.writer import database_of, map_store_errors, patiently, write_control

State = Literal["requested", "running", "done", "failed"]
OPEN_STATES: tuple[State, ...] = ("requested", "running")


async def unmirrored(engine: AsyncEngine, environment: Environment, table: str) -> str | None:
    """Why `table` cannot be resynced in `environment` (None: it can): it is not in the
    configured list, or, with `tables = "all"` (discovered at run time), the daemon has not
    taken it up (no state row). The one check behind `dvmirror resync` and the console: a
    typo must not queue a request that no run will ever serve."""
    fixed = environment.fixed_tables
    if fixed is not None:
        if table in fixed or table in await intersect_tables(engine, environment.name):
            return None
        return (
            f"table {table!r} is not mirrored in environment {environment.name} "
            f"(its tables: {', '.join(fixed)})"
        )
    known = sorted(status.table for status in await statuses(engine, environment.name))
    if table in known:
        return None
    shown = ", ".join(known) or "none yet: the daemon has not discovered them"
    return (
        f"table {table!r} is not mirrored in environment {environment.name} "
        f"(tables resolved from metadata; mirrored so far: {shown})"
    )


def open_key(environment: str, table: str | None) -> str:
    """Unique among open requests: one per environment and table ('*': every table)."""
    return f"{environment}/{table or '*'}"


@dataclass(frozen=True)
class ResyncRequest:
    """One row of dv_resync_requests."""

    id: int
    environment: str
    table: str | None  # None: every table of the environment
    requested_by: str
    requested_at: datetime
    state: State
    rows_done: int = 0
    rows_expected: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    handled_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def target(self) -> str:
        """`env/table`, or `env/*` for every table."""
        return open_key(self.environment, self.table)

    @property
    def percent(self) -> int | None:
        """How far a running pass is (never 100 before it is done); None when unknown."""
        if self.state == "done":
            return 100
        if self.state != "running" or not self.rows_expected:
            return None
        return min(99, self.rows_done * 100 // self.rows_expected)

    @property
    def shown(self) -> str:
        """requested / running n% / done / failed, as status and the console show it."""
        if self.state == "running":
            percent = self.percent
            return "running" if percent is None else f"running {percent}%"
        return self.state

    def as_dict(self) -> dict[str, Any]:
        def text(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        return {
            "id": self.id,
            "environment": self.environment,
            "table": self.table,
            "requested_by": self.requested_by,
            "requested_at": text(self.requested_at),
            "state": self.state,
            "shown": self.shown,
            "percent": self.percent,
            "rows_done": self.rows_done,
            "rows_expected": self.rows_expected,
            "started_at": text(self.started_at),
            "finished_at": text(self.finished_at),
            "error": self.error,
            "handled_by": self.handled_by,
        }


def request_from_row(row: Mapping[str, Any]) -> ResyncRequest:
    """A dv_resync_requests row (its mapping) as a ResyncRequest."""
    requested_at = utc(row["requested_at"])
    assert requested_at is not None
    return ResyncRequest(
        id=int(row["id"]),
        environment=row["environment"],
        table=row["table_name"],
        requested_by=row["requested_by"],
        requested_at=requested_at,
        state=row["state"],
        rows_done=int(row["rows_done"] or 0),
        rows_expected=None if row["rows_expected"] is None else int(row["rows_expected"]),
        started_at=utc(row["started_at"]),
        finished_at=utc(row["finished_at"]),
        error=row["error"],
        handled_by=row["handled_by"],
    )


def _request(row: Row[Any]) -> ResyncRequest:
    return request_from_row(dict(row._mapping))


@dataclass(frozen=True)
class Queued:
    """What `request_resync` did: `created` False when an open request was returned instead."""

    request: ResyncRequest
    created: bool


async def _transaction(engine: AsyncEngine, what: str, work: Any) -> Any:
    """One write transaction, run again while another process holds the database. `work` may
    raise IntegrityError once (a unique key taken by a concurrent writer): it then runs again in
    a new transaction, told so (`work(conn, retried=True)`)."""

    async def attempt() -> Any:
        try:
            async with engine.begin() as conn:
                return await work(conn, retried=False)
        except IntegrityError:
            async with engine.begin() as conn:
                return await work(conn, retried=True)

    with map_store_errors(what, dialect_for(engine), database=database_of(engine)):
        return await patiently(attempt, environment="", table=what)


async def _open_request(
    conn: AsyncConnection, environment: str, table: str | None
) -> ResyncRequest | None:
    query = select(resync_requests).where(
        resync_requests.c.open_key == open_key(environment, table)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else _request(row)


async def request_resync(
    engine: AsyncEngine,
    environment: str,
    table: str | None,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> Queued:
    """Queue a full pass of `table` (None: every table) of `environment`, and audit it
    (action resync_requested) in the same transaction. An open request for the same
    environment and table is returned instead of a second one (`created` False). The caller
    validated both names against the configuration."""
    moment = now or datetime.now(UTC)
    target = open_key(environment, table)

    async def work(conn: AsyncConnection, *, retried: bool) -> Queued:
        existing = await _open_request(conn, environment, table)
        if existing is None and retried:
            raise StoreError(f"resync of {target}: the request could not be written; try again")
        if existing is None:
            result = await conn.execute(
                insert(resync_requests).values(
                    environment=environment,
                    table_name=table,
                    requested_by=actor.requested_by[:255],
                    requested_at=moment,
                    state="requested",
                    open_key=target,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            created = await _by_id(conn, int(key[0]))
            outcome = f"ok: queued #{created.id}"
        else:  # one is open already (or another process queued it just now): merged
            created, outcome = existing, f"ok: merged into open #{existing.id}"
        await conn.execute(
            audit_row(
                actor,
                "resync_requested",
                at=moment,
                environment=environment,
                target=target,
                outcome=outcome,
            )
        )
        return Queued(created, existing is None)

    queued: Queued = await _transaction(engine, "(resync requests)", work)
    return queued


async def _by_id(conn: AsyncConnection, request_id: int) -> ResyncRequest:
    row = (
        await conn.execute(select(resync_requests).where(resync_requests.c.id == request_id))
    ).one()
    return _request(row)


async def get_request(engine: AsyncEngine, request_id: int) -> ResyncRequest | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(resync_requests).where(resync_requests.c.id == request_id))
        ).first()
    return None if row is None else _request(row)


def recent_query(since: datetime | None, environment: str | None = None, limit: int = 50) -> Any:
    """Open requests and those made or ended after `since` (every one when None), most
    recent first."""
    query = select(resync_requests).order_by(resync_requests.c.id.desc()).limit(limit)
    if environment is not None:
        query = query.where(resync_requests.c.environment == environment)
    if since is not None:
        query = query.where(
            or_(
                resync_requests.c.state.in_(OPEN_STATES),
                resync_requests.c.finished_at >= since,
                resync_requests.c.requested_at >= since,
            )
        )
    return query


async def list_requests(
    engine: AsyncEngine,
    environment: str | None = None,
    *,
    since: datetime | None = None,
    limit: int = 50,
) -> list[ResyncRequest]:
    """Requests, most recent first (optionally of one environment): every open one, and those
    that ended after `since` (all of them when None), at most `limit`."""
    query = recent_query(since, environment, limit)
    async with engine.connect() as conn:
        return [_request(row) for row in await conn.execute(query)]


async def claim(
    engine: AsyncEngine,
    environment: str,
    *,
    holder: str,
    now: datetime,
    keep: Collection[int] = (),
) -> list[ResyncRequest]:
    """The daemon holding the environment's lease takes its open requests, oldest first:
    those still requested become running (started now), and those running whose handler is
    gone (not in `keep`, the ids this caller already works on: a killed daemon, a lost lease)
    are taken over as they stand. Call it through the environment's FencedEngine: the claim
    commits only while the lease is still ours (else LeaseLostError)."""
    waiting = and_(
        resync_requests.c.environment == environment,
        or_(
            resync_requests.c.state == "requested",
            and_(resync_requests.c.state == "running", resync_requests.c.id.not_in(list(keep))),
        ),
    )
    query = select(resync_requests.c.id).where(waiting).order_by(resync_requests.c.id)
    async with engine.connect() as conn:  # the common case, nothing waiting, writes nothing
        if (await conn.execute(query.limit(1))).first() is None:
            return []

    async def work(conn: AsyncConnection, *, retried: bool) -> list[ResyncRequest]:
        taken: list[ResyncRequest] = []
        for (request_id,) in (await conn.execute(query)).all():
            row = await _by_id(conn, int(request_id))
            values: dict[str, Any] = {"state": "running", "handled_by": holder[:255]}
            if row.state == "requested":
                values.update(started_at=now, rows_done=0)
            took = await conn.execute(
                update(resync_requests)
                .where(resync_requests.c.id == row.id, resync_requests.c.state == row.state)
                .values(**values)
            )
            if took.rowcount == 1:
                taken.append(await _by_id(conn, row.id))
        return taken

    claimed: list[ResyncRequest] = await _transaction(engine, "(resync requests)", work)
    return claimed


async def _finish_write(engine: AsyncEngine, request_id: int, **values: Any) -> None:
    change = (
        update(resync_requests)
        .where(resync_requests.c.id == request_id, resync_requests.c.state == "running")
        .values(**values)
    )
    await write_control(engine, [change], environment="", table="(resync requests)")


async def mark_progress(
    engine: AsyncEngine, request_id: int, *, rows_done: int, rows_expected: int | None
) -> None:
    """A running request's figures (rows read by its passes so far, rows expected)."""
    await _finish_write(engine, request_id, rows_done=rows_done, rows_expected=rows_expected)


async def mark_done(
    engine: AsyncEngine,
    request_id: int,
    *,
    now: datetime,
    rows_done: int,
    rows_expected: int | None,
) -> None:
    await _finish_write(
        engine,
        request_id,
        state="done",
        finished_at=now,
        rows_done=rows_done,
        rows_expected=rows_expected,
        open_key=None,
    )


async def mark_failed(engine: AsyncEngine, request_id: int, *, now: datetime, error: str) -> None:
    """Failed, with the one line that says why (masked)."""
    await _finish_write(
        engine, request_id, state="failed", finished_at=now, error=one_line(error), open_key=None
    )


async def start_full_pass(
    engine: AsyncEngine, environment: str, table: str, cursor: TableState, *, now: datetime
) -> None:
    """Store the cursor of a full pass about to start for a request (sync.mirror.cursor.expired:
    phase resync, no delta link), drop the key ranges of a pass it replaces, and un-park the
    table: one transaction, with the lease token."""
    statements: list[Executable] = [
        *checkpoint_statements(environment, table, cursor, now=now, pages=0),
        key_ranges.clear(environment, table),
        update(sync_state)
        .where(sync_state.c.environment == environment, sync_state.c.table_name == table)
        .values(parked_until=None),
        *token_stamp(engine, environment, table),
    ]
    await write_control(engine, statements, environment=environment, table=table)


__all__ = [
    "Actor",
    "Queued",
    "ResyncRequest",
    "claim",
    "get_request",
    "list_requests",
    "mark_done",
    "mark_failed",
    "mark_progress",
    "recent_query",
    "request_from_row",
    "request_resync",
    "start_full_pass",
]
