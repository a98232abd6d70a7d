"""Leases in the store, on real SQLite files: acquire, renew, release, steal, expiry, members,
and the fence that stops a holder whose lease ended from writing anything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.errors import LeaseLostError
from sync.store import checkpoints as state
from sync.store import leases
from sync.store.connect import create_engine
from sync.store.control import sync_state
from sync.store.leases import FencedEngine, LeaseRef
from sync.store.migrate import upgrade

ENVS = ["env_a", "env_b", "env_c"]
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TTL = 30.0


@pytest.fixture(name="engine")
async def _engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")
    await upgrade(engine)
    await leases.ensure_rows(engine, ENVS)
    yield engine
    await engine.dispose()


async def test_rows_start_free_and_ensure_keeps_existing(engine: AsyncEngine) -> None:
    taken = await leases.acquire(engine, "one", ["env_a"], 1, TTL)
    await leases.ensure_rows(engine, [*ENVS, "env_d"])
    rows = await leases.owners(engine)
    assert sorted(rows) == [*ENVS, "env_d"]
    assert rows["env_a"].holder == "one" and rows["env_a"].token == taken[0].token == 1
    now = await leases.current_time(engine)
    assert not rows["env_d"].current(now) and rows["env_d"].token == 0


async def test_a_current_lease_is_not_taken_without_steal(engine: AsyncEngine) -> None:
    first = await leases.acquire(engine, "one", ENVS, 2, TTL)
    assert [lease.resource for lease in first] == ["env_a", "env_b"]
    second = await leases.acquire(engine, "two", ENVS, 3, TTL)
    assert [lease.resource for lease in second] == ["env_c"]
    stolen = await leases.acquire(engine, "two", ["env_a"], 1, TTL, steal=True)
    assert stolen[0].token == first[0].token + 1
    assert (await leases.owners(engine))["env_a"].holder == "two"


async def test_renew_keeps_ours_and_reports_lost(engine: AsyncEngine) -> None:
    mine = await leases.acquire(engine, "one", ENVS, 3, TTL)
    await leases.acquire(engine, "two", ["env_b"], 1, TTL, steal=True)
    kept, lost = await leases.renew(engine, mine, TTL)
    assert [lease.resource for lease in kept] == ["env_a", "env_c"]
    assert [lease.resource for lease in lost] == ["env_b"]
    assert all(k.expires_at >= m.expires_at for k, m in zip(kept, [mine[0], mine[2]], strict=True))


async def test_an_expired_lease_cannot_be_renewed_and_is_taken_over(engine: AsyncEngine) -> None:
    mine = await leases.acquire(engine, "one", ["env_a"], 1, 0.2)
    await asyncio.sleep(0.3)
    taken = await leases.acquire(engine, "two", ["env_a"], 1, TTL)
    assert taken and taken[0].token == mine[0].token + 1
    kept, lost = await leases.renew(engine, mine, TTL)
    assert (kept, lost) == ([], mine)


async def test_release_frees_at_once_only_when_still_ours(engine: AsyncEngine) -> None:
    mine = await leases.acquire(engine, "one", ["env_a"], 1, TTL)
    assert await leases.release(engine, mine[0])
    theirs = await leases.acquire(engine, "two", ["env_a"], 1, TTL)
    assert theirs, "a released lease is free at once"
    assert not await leases.release(engine, mine[0])
    assert (await leases.owners(engine))["env_a"].holder == "two"


async def test_heartbeat_counts_live_members_and_forgets_silent_ones(engine: AsyncEngine) -> None:
    assert await leases.heartbeat(engine, "one", host="h", pid=1, started_at=NOW, ttl=0.3) == 1
    assert await leases.heartbeat(engine, "two", host="h", pid=2, started_at=NOW, ttl=0.3) == 2
    await asyncio.sleep(0.35)
    assert (
        await leases.heartbeat(engine, "one", host="h", pid=1, started_at=NOW, ttl=0.3) == 1
    )  # two fell silent
    await leases.leave(engine, "one")
    assert await leases.heartbeat(engine, "three", host="h", pid=3, started_at=NOW, ttl=0.3) == 1


async def test_the_fence_lets_the_holder_write_and_stops_a_former_holder(
    engine: AsyncEngine,
) -> None:
    """Two holders, one environment: once the lease moved, every write of the former holder
    fails with LeaseLostError and leaves nothing behind; the new holder's writes carry on."""
    (old,) = await leases.acquire(engine, "one", ["env_a"], 1, TTL)
    former = FencedEngine(engine, LeaseRef(old))
    await state.ensure(former, "env_a", "account", now=NOW)
    (new,) = await leases.acquire(engine, "two", ["env_a"], 1, TTL, steal=True)
    current = FencedEngine(engine, LeaseRef(new))
    with pytest.raises(LeaseLostError) as lost:
        await state.record_success(former, "env_a", "account", now=NOW)
    assert lost.value.environment == "env_a"
    with pytest.raises(LeaseLostError):
        await state.ensure(former, "env_a", "contact", now=NOW)
    await state.record_success(current, "env_a", "account", now=NOW)
    async with engine.connect() as conn:
        tables = (await conn.execute(select(sync_state.c.table_name))).scalars().all()
    assert tables == ["account"]
    assert leases.lease_token(current) == new.token and leases.lease_token(engine) is None


async def test_on_sqlite_a_lease_cannot_run_out_under_its_only_writer(
    engine: AsyncEngine,
) -> None:
    """One writer process per SQLite file (the flock): nobody can take its leases while it
    lives, so a late renewal (another process held the file's write lock for longer than the
    lease) keeps the lease and the fence still passes. On PostgreSQL an expired lease fails
    the fence even if nobody took it (tests/test_leases_postgres.py)."""
    (lease,) = await leases.acquire(engine, "one", ["env_a"], 1, 0.2)
    fenced = FencedEngine(engine, LeaseRef(lease))
    await state.ensure(fenced, "env_a", "account", now=NOW)
    await asyncio.sleep(0.3)
    await state.record_success(fenced, "env_a", "account", now=NOW)
    kept, lost = await leases.renew(engine, [lease], 30.0)
    assert [k.token for k in kept] == [lease.token] and lost == []


async def test_a_renewed_lease_swapped_into_the_ref_keeps_writing(engine: AsyncEngine) -> None:
    (lease,) = await leases.acquire(engine, "one", ["env_a"], 1, 0.4)
    ref = LeaseRef(lease)
    fenced = FencedEngine(engine, ref)
    await asyncio.sleep(0.2)
    (ref.lease,), _ = await leases.renew(engine, [ref.lease], 0.4)
    await asyncio.sleep(0.3)  # past the first expiry, within the renewed one
    await state.ensure(fenced, "env_a", "account", now=NOW)
