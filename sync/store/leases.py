"""Leases: which `dvmirror run` process owns which environment (dv_leases, dv_daemons).

An environment — one application user's budget — is written by one process at a time: the
holder of its lease row. A lease is taken with `SELECT … FOR UPDATE SKIP LOCKED` (two daemons
never wait for each other, and never take the same row), kept by renewing it before it
expires, and taken over once it has expired. Every takeover adds one to the row's `token`
(the fencing token), and every write transaction of the environment first runs `check_fence`:
the row must still name this holder and token and not have expired. That check takes a share
lock on the row, which a taker's `FOR UPDATE SKIP LOCKED` skips, so a takeover waits for the
write in flight and the fenced write can never land after the lease ended — whatever the
clocks, pauses or network said.

Time is the database's: PostgreSQL's `clock_timestamp()` is one clock for every host; a SQLite
store has one host, whose clock it uses. SQLite ignores the row locks: there, one writer process
per database file (store.writer_lock) is what keeps two daemons apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, func, insert, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from sync.errors import LeaseLostError
from sync.store.control import daemons, leases, sync_state
from sync.store.dialect_insert import upsert_insert

FREE = ""  # the holder of a lease nobody owns
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a free row's expiry: long past


@dataclass(frozen=True)
class Lease:
    resource: str
    holder: str
    token: int
    expires_at: datetime

    def current(self, now: datetime) -> bool:
        return self.holder != FREE and self.expires_at > now


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored moment is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def database_now(conn: AsyncConnection) -> datetime:
    """The time every lease is measured against: the database server's clock (PostgreSQL),
    or this host's (SQLite: one host)."""
    if conn.dialect.name == "postgresql":
        return _utc((await conn.execute(select(func.clock_timestamp()))).scalar_one())
    return datetime.now(UTC)


def _ours(lease: Lease) -> ColumnElement[bool]:
    return and_(
        leases.c.resource == lease.resource,
        leases.c.holder == lease.holder,
        leases.c.token == lease.token,
    )


async def ensure_rows(engine: AsyncEngine, resources: Iterable[str]) -> None:
    """A free, expired lease row for every resource that has none yet."""
    wanted = sorted(set(resources))
    if not wanted:
        return
    async with engine.begin() as conn:
        existing = set(
            (
                await conn.execute(select(leases.c.resource).where(leases.c.resource.in_(wanted)))
            ).scalars()
        )
        missing = [name for name in wanted if name not in existing]
        if missing:
            # Daemons that start together may insert the same rows: the first one wins.
            await conn.execute(
                upsert_insert(conn, leases).on_conflict_do_nothing(),
                [
                    {
                        "resource": name,
                        "holder": FREE,
                        "token": 0,
                        "acquired_at": EPOCH,
                        "expires_at": EPOCH,
                    }
                    for name in missing
                ],
            )


async def heartbeat(
    engine: AsyncEngine, holder: str, *, host: str, pid: int, started_at: datetime, ttl: float
) -> int:
    """Say this daemon is alive, forget daemons silent for two lease periods, and return how
    many daemons (this one included) were seen within one lease period."""
    async with engine.begin() as conn:
        now = await database_now(conn)
        seen = await conn.execute(
            update(daemons).where(daemons.c.holder == holder).values(seen_at=now)
        )
        if seen.rowcount == 0:
            await conn.execute(
                insert(daemons).values(
                    holder=holder, host=host, pid=pid, started_at=started_at, seen_at=now
                )
            )
        await conn.execute(
            delete(daemons).where(daemons.c.seen_at < now - timedelta(seconds=2 * ttl))
        )
        live = await conn.execute(
            select(func.count())
            .select_from(daemons)
            .where(daemons.c.seen_at > now - timedelta(seconds=ttl))
        )
        return int(live.scalar_one())


async def leave(engine: AsyncEngine, holder: str) -> None:
    """This daemon stops: it no longer counts as a member."""
    async with engine.begin() as conn:
        await conn.execute(delete(daemons).where(daemons.c.holder == holder))


async def acquire(
    engine: AsyncEngine,
    holder: str,
    candidates: Iterable[str],
    limit: int,
    ttl: float,
    *,
    steal: bool = False,
    abandoned: Collection[str] = (),
) -> list[Lease]:
    """Take up to `limit` of the `candidates` that have expired (any of them with `steal`, for
    the only writer of a SQLite store; also those held by an `abandoned` holder, a process
    known to be dead), each with its token raised by one."""
    wanted = sorted(set(candidates))
    if not wanted or limit <= 0:
        return []
    taken: list[Lease] = []
    async with engine.begin() as conn:
        now = await database_now(conn)
        query = select(leases.c.resource, leases.c.token).where(leases.c.resource.in_(wanted))
        if not steal:
            free = leases.c.expires_at <= now
            if abandoned:
                free = or_(free, leases.c.holder.in_(sorted(abandoned)))
            query = query.where(free)
        query = query.order_by(leases.c.resource).limit(limit).with_for_update(skip_locked=True)
        expires = now + timedelta(seconds=ttl)
        for row in (await conn.execute(query)).all():
            # Compare-and-set on the token as well: correct even where the row lock is not
            # (SQLite ignores FOR UPDATE).
            took = await conn.execute(
                update(leases)
                .where(leases.c.resource == row.resource, leases.c.token == row.token)
                .values(holder=holder, token=row.token + 1, acquired_at=now, expires_at=expires)
            )
            if took.rowcount == 1:
                taken.append(Lease(row.resource, holder, row.token + 1, expires))
    return taken


def _expiry_matters(conn: AsyncConnection) -> bool:
    """SQLite has one writer process per file (store.writer_lock): while it lives nobody can
    take its leases, so there a lease cannot run out under it — e.g. while another process
    holds the file's write lock for longer than the lease and the renewal has to wait."""
    return conn.dialect.name != "sqlite"


async def renew(
    engine: AsyncEngine, held: Sequence[Lease], ttl: float
) -> tuple[list[Lease], list[Lease]]:
    """Extend every lease still ours and not yet expired; the others are lost."""
    kept: list[Lease] = []
    lost: list[Lease] = []
    if not held:
        return kept, lost
    async with engine.begin() as conn:
        now = await database_now(conn)
        expires = now + timedelta(seconds=ttl)
        current = leases.c.expires_at > now if _expiry_matters(conn) else true()
        for lease in held:
            renewed = await conn.execute(
                update(leases).where(_ours(lease), current).values(expires_at=expires)
            )
            if renewed.rowcount == 1:
                kept.append(replace(lease, expires_at=expires))
            else:
                lost.append(lease)
    return kept, lost


async def release(engine: AsyncEngine, lease: Lease) -> bool:
    """Give the lease up at once (if it is still ours): free, and expired so anyone may take
    it. False when it was no longer ours."""
    async with engine.begin() as conn:
        now = await database_now(conn)
        freed = await conn.execute(
            update(leases).where(_ours(lease)).values(holder=FREE, expires_at=now)
        )
    return freed.rowcount == 1


async def owners(engine: AsyncEngine) -> dict[str, Lease]:
    """Every lease row by resource (free and expired ones too; `Lease.current` tells)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(leases))).all()
    return {
        row.resource: Lease(row.resource, row.holder, int(row.token), _utc(row.expires_at))
        for row in rows
    }


async def current_time(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        return await database_now(conn)


async def check_fence(conn: AsyncConnection, lease: Lease) -> bool:
    """Inside the caller's write transaction: whether the lease is still ours. The share lock
    keeps a taker away from the row until this transaction ends, so what the caller writes
    next lands while the lease holds."""
    now = await database_now(conn)
    current = leases.c.expires_at > now if _expiry_matters(conn) else true()
    query = select(leases.c.resource).where(_ours(lease), current).with_for_update(read=True)
    return (await conn.execute(query)).first() is not None


class LeaseRef:
    """The lease a fenced engine checks; renewal swaps in the new expiry (same token)."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease


class FencedEngine(AsyncEngine):
    """The store as one environment's writers see it: every write transaction (`begin()`)
    first checks the environment's lease, and fails with LeaseLostError — rolled back,
    nothing written — once it is no longer ours. Reads (`connect()`) are not fenced.

    It shares the pool of the store's engine, and its `begin()` is that engine's (a SQLite
    store's write turn included)."""

    def __init__(self, engine: AsyncEngine, ref: LeaseRef) -> None:
        super().__init__(engine.sync_engine)
        self.store = engine
        self.ref = ref

    @property
    def lease(self) -> Lease:
        return self.ref.lease

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.store.begin() as conn:
            if not await check_fence(conn, self.ref.lease):
                raise LeaseLostError(self.ref.lease.resource)
            yield conn


def lease_token(engine: AsyncEngine) -> int | None:
    """The fencing token the engine writes under (None: no lease)."""
    return engine.lease.token if isinstance(engine, FencedEngine) else None


def token_stamp(engine: AsyncEngine, environment: str, table: str) -> list[Executable]:
    """Beside a checkpoint, in its transaction: the token of the lease it was written under."""
    return [
        update(sync_state)
        .where(sync_state.c.environment == environment, sync_state.c.table_name == table)
        .values(lease_token=lease_token(engine))
    ]
