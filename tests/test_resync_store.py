"""store.requests and store.audit on both stores (a real SQLite file, a fresh PostgreSQL database): queueing
merges an open duplicate, only the environment's lease holder can claim (fencing), a takeover
resumes a running request, done/failed close it, the audit keeps one masked line; and
migration 0005 keeps the rows of an older store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from sync.errors import LeaseLostError
from sync.store import audit as au
from sync.store import leases
from sync.store import requests as rq
from sync.store.connect import create_engine
from sync.store.leases import FencedEngine, LeaseRef
from sync.store.migrate import downgrade, upgrade
from tests.mirror_compare import _store_url  # noqa: F401

NOW = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
CLI = rq.Actor("cli:alice")


async def test_queue_merge_claim_and_finish(store_url: str) -> None:
    """A duplicate open request is merged (one row, two audit rows); the lease holder claims
    it through its fenced engine; a holder whose lease was taken over claims nothing
    (LeaseLostError); the new holder takes the running request over; done frees the target."""
    engine = create_engine(store_url)
    try:
        await upgrade(engine)
        first = await rq.request_resync(engine, "env_a", "account", actor=CLI, now=NOW)
        again = await rq.request_resync(engine, "env_a", "account", actor=CLI, now=NOW)
        other = await rq.request_resync(engine, "env_a", None, actor=CLI, now=NOW)
        assert first.created and not again.created and other.created
        assert again.request.id == first.request.id and other.request.id != first.request.id
        assert [r.state for r in await rq.list_requests(engine, "env_a")] == ["requested"] * 2
        outcomes = [a.outcome for a in await au.list_audit(engine, environment="env_a")]
        assert outcomes == [
            f"ok: queued #{other.request.id}",
            f"ok: merged into open #{first.request.id}",
            f"ok: queued #{first.request.id}",
        ]

        await leases.ensure_rows(engine, ["env_a"])
        (old,) = await leases.acquire(engine, "daemon-a", ["env_a"], 1, 30, steal=True)
        fenced_old = FencedEngine(engine, LeaseRef(old))
        claimed = await rq.claim(fenced_old, "env_a", holder="daemon-a", now=NOW)
        assert [(r.id, r.state, r.handled_by) for r in claimed] == [
            (first.request.id, "running", "daemon-a"),
            (other.request.id, "running", "daemon-a"),
        ]
        assert await rq.claim(fenced_old, "env_a", holder="daemon-a", now=NOW, keep=[1, 2]) == []
        await rq.mark_progress(fenced_old, first.request.id, rows_done=40, rows_expected=80)
        assert (await rq.get_request(engine, first.request.id)).shown == "running 50%"  # type: ignore[union-attr]

        (new,) = await leases.acquire(engine, "daemon-b", ["env_a"], 1, 30, steal=True)
        with pytest.raises(LeaseLostError):
            await rq.mark_done(
                fenced_old, first.request.id, now=NOW, rows_done=80, rows_expected=80
            )
        fenced_new = FencedEngine(engine, LeaseRef(new))
        taken = await rq.claim(fenced_new, "env_a", holder="daemon-b", now=NOW + timedelta(1))
        resumed = {r.id: r for r in taken}[first.request.id]
        assert resumed.handled_by == "daemon-b" and resumed.rows_done == 40
        assert resumed.started_at == NOW  # a takeover keeps the pass's start

        await rq.mark_done(fenced_new, first.request.id, now=NOW, rows_done=80, rows_expected=80)
        await rq.mark_failed(
            fenced_new, other.request.id, now=NOW, error="table x: boom\nsecond line"
        )
        ended = {r.id: r for r in await rq.list_requests(engine, "env_a")}
        assert ended[first.request.id].shown == "done" and ended[first.request.id].percent == 100
        assert ended[other.request.id].error == "table x: boom"
        fresh = await rq.request_resync(engine, "env_a", "account", actor=CLI, now=NOW)
        assert fresh.created  # the finished request no longer holds the target
    finally:
        await engine.dispose()


async def test_audit_rows_of_a_console_user(store_url: str) -> None:
    """Console actions record tenant, oid, username, action, target and outcome; listing
    filters by environment and by the user's tenant."""
    engine = create_engine(store_url)
    try:
        await upgrade(engine)
        user = rq.Actor(
            "console:ann@contoso.example (0000-oid)",
            tenant_id="tid-1",
            user_oid="0000-oid",
            preferred_username="ann@contoso.example",
        )
        await au.record_audit(engine, user, "sign_in", outcome="ok", now=NOW)
        await au.record_audit(
            engine,
            user,
            "resync_refused",
            outcome="refused: no Mirror.Operator role",
            environment="env_a",
            target="env_a/account",
            now=NOW,
        )
        everything = await au.list_audit(engine, tenant_id="tid-1")
        assert [a.action for a in everything] == ["resync_refused", "sign_in"]
        (refused,) = await au.list_audit(engine, environment="env_a")
        assert refused.as_dict()["outcome"] == "refused: no Mirror.Operator role"
        assert refused.preferred_username == "ann@contoso.example"
        assert await au.list_audit(engine, tenant_id="tid-2") == []
    finally:
        await engine.dispose()


async def test_migration_0005_keeps_data_both_ways(tmp_path: Path) -> None:
    """Upgrading a store at 0004 keeps its rows and adds empty dv_resync_requests and dv_audit;
    the downgrade removes just those two tables."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'control.db'}")
    try:
        await upgrade(engine, "0004")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO dv_sync_state (environment, table_name, phase, delta_link, "
                    "updated_at) VALUES ('env_a', 'account', 'delta', 'https://x/delta', "
                    "'2026-01-01 00:00:00')"
                )
            )
        await upgrade(engine, "0005")
        async with engine.connect() as conn:
            state = (await conn.execute(text("SELECT phase, delta_link FROM dv_sync_state"))).one()
            assert tuple(state) == ("delta", "https://x/delta")
            assert (
                await conn.execute(text("SELECT count(*) FROM dv_resync_requests"))
            ).scalar() == 0
            assert (await conn.execute(text("SELECT count(*) FROM dv_audit"))).scalar() == 0
        await rq.request_resync(engine, "env_a", "account", actor=CLI, now=NOW)
        await downgrade(engine, "0004")
        async with engine.connect() as conn:
            names = {r[0] for r in await conn.execute(text("SELECT name FROM sqlite_master"))}
            assert "dv_resync_requests" not in names and "dv_audit" not in names
            assert (await conn.execute(text("SELECT count(*) FROM dv_sync_state"))).scalar() == 1
    finally:
        await engine.dispose()
