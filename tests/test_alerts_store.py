"""Alert state and deliveries round-trip the store, on SQLite and on PostgreSQL, through the
migration (0009); the pure rules then see a restart as no change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sync.runtime.alerts.rules import Condition, Observation, Rule, decide
from sync.store.alerts import (
    AlertKey,
    AlertState,
    delivery_from_row,
    load_states,
    record_delivery,
    save_states,
)
from sync.store.connect import create_engine
from sync.store.control import alert_deliveries
from sync.store.migrate import upgrade

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
RULE = Rule("ops", frozenset({"table_parked", "recovered"}))


async def roundtrip(url: str) -> None:
    engine = create_engine(url)
    await upgrade(engine)
    try:
        parked = Condition("table_parked", "prod", "contoso", "account", "HTTP 500")
        observation = Observation((parked,), frozenset({("prod", "table_parked")}), {})
        first = decide((RULE,), observation, {}, T0)
        assert len(first.messages) == 1
        await save_states(engine, first.updates, now=T0)
        stored = await load_states(engine, ["prod"])
        assert stored == first.updates
        # After a "restart": the same condition sends nothing.
        again = decide((RULE,), observation, stored, T0 + timedelta(minutes=1))
        assert again.messages == ()
        # Saving a key twice replaces it.
        key = AlertKey("ops", "prod", "account", "table_parked")
        await save_states(engine, {key: AlertState(False, T0, T0)}, now=T0)
        assert (await load_states(engine, ["prod"]))[key].active is False
        for outcome in ("failed after 4 attempts: HTTP 503", "ok"):
            await record_delivery(
                engine,
                alert="ops",
                at=T0,
                kind="raised",
                event="table_parked",
                environment="prod",
                table="account",
                outcome=outcome,
                attempts=4,
            )
        async with engine.connect() as conn:
            rows = [dict(r._mapping) for r in await conn.execute(alert_deliveries.select())]
        assert len(rows) == 1
        last = delivery_from_row(rows[0])
        assert (last.outcome, last.failures, last.last_ok_at) == ("ok", 1, T0)
    finally:
        await engine.dispose()


async def test_sqlite(tmp_path: Path) -> None:
    await roundtrip(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")


@pytest.mark.postgres
async def test_postgres(pg_url: str) -> None:
    await roundtrip(pg_url)
