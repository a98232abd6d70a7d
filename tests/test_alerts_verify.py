"""verify_mismatch from the store: the newest dv_verify_runs row per table becomes a finding, a
mismatch left unrepaired raises the alert, a later match recovers it; stopped or failed runs say
nothing either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from sync.runtime.alerts.observe import EnvironmentView, observe
from sync.runtime.alerts.rules import AlertState, Rule, decide
from sync.runtime.alerts.verify_source import StoredVerifyFindings, finding_of
from sync.store.connect import create_engine
from sync.store.control import verify_runs
from sync.store.migrate import upgrade

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
RULE = Rule("ops", frozenset({"verify_mismatch", "recovered"}))
VIEW = EnvironmentView("prod", "contoso", ("account", "contact"), attempted=True)


def run(table: str, outcome: str, at: datetime, **found: int) -> dict[str, Any]:
    row: dict[str, Any] = {"missing": 0, "ghost": 0, "stale": 0, "repaired": 0, **found}
    return {
        "environment": "prod",
        "table_name": table,
        "started_at": at,
        "finished_at": at + timedelta(seconds=5),
        "level": 3,
        "outcome": outcome,
        **row,
    }


def test_a_finding_counts_what_is_left_unrepaired_and_skips_inconclusive_runs() -> None:
    left = finding_of(run("account", "mismatch", T0, missing=3, ghost=2, stale=1))
    assert left is not None and left.mismatched_rows == 6
    fixed = finding_of(run("account", "repaired", T0, missing=3, repaired=3))
    assert fixed is not None and fixed.mismatched_rows == 0
    assert finding_of(run("account", "stopped", T0, missing=3)) is None
    assert finding_of(run("account", "failed", T0)) is None


async def test_stored_runs_raise_and_recover_verify_mismatch(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}")
    await upgrade(engine)
    source = StoredVerifyFindings(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(verify_runs),
                [
                    run("account", "mismatch", T0, missing=3, ghost=1),
                    run("contact", "match", T0),
                    {**run("account", "match", T0), "environment": "other_env"},
                ],
            )
        findings = await source.findings(["prod"])
        assert findings is not None
        assert sorted((f.table, f.mismatched_rows) for f in findings) == [
            ("account", 4),
            ("contact", 0),
        ]
        first = decide((RULE,), observe([VIEW], [], [], findings, T0), {}, T0)
        assert [(m.kind, m.event, m.table) for m in first.messages] == [
            ("raised", "verify_mismatch", "account")
        ]
        assert "4 rows differ" in first.messages[0].detail
        states: dict[Any, AlertState] = dict(first.updates)

        # A stopped run later says nothing: the mismatch still stands, no new message.
        later = T0 + timedelta(minutes=5)
        async with engine.begin() as conn:
            await conn.execute(insert(verify_runs), [run("account", "stopped", later)])
        findings = await source.findings(["prod"])
        assert findings is not None
        second = decide((RULE,), observe([VIEW], [], [], findings, later), states, later)
        assert second.messages == ()
        states.update(second.updates)

        # The repair's run: recovered, once.
        fixed_at = T0 + timedelta(minutes=10)
        async with engine.begin() as conn:
            await conn.execute(
                insert(verify_runs),
                [run("account", "repaired", fixed_at, missing=3, ghost=1, repaired=4)],
            )
        findings = await source.findings(["prod"])
        assert findings is not None
        third = decide((RULE,), observe([VIEW], [], [], findings, fixed_at), states, fixed_at)
        assert [(m.kind, m.event, m.table) for m in third.messages] == [
            ("recovered", "verify_mismatch", "account")
        ]
    finally:
        await engine.dispose()
