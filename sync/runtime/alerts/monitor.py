"""The daemon's alert service: look, decide, store, hand over to the senders; every few seconds.

One look (`check`) reads what the daemon knows about the environments it holds: their worker
groups' sign-in and daily budget (in memory), the tables' stored status, the column catalogue's
type changes, and, once wired, the latest verify findings (`VerifySource`). The pure rules
(runtime.alerts.rules) decide; the new states are stored before the messages are queued, so a
restart never sends a message twice (a message lost in a crash is reminded after `repeat`).
A failing look is logged and tried again; it never stops syncing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.logs import get_logger
from sync.runtime.alerts.delivery import DeliveryPolicy, Senders
from sync.runtime.alerts.observe import EnvironmentView, TypeChange, VerifyFinding, observe
from sync.runtime.alerts.rules import Message, Rule, decide
from sync.runtime.environment_group import EnvironmentGroup
from sync.store.alerts import load_states, record_delivery, save_states
from sync.store.checkpoints import statuses, utc
from sync.store.control import mirror_columns

log = get_logger("dvmirror.alerts")

CHECK_SECONDS = 5.0
DRAIN_GRACE = 5.0  # at shutdown: how long queued messages may still be sent


class VerifySource(Protocol):
    """Where verify_mismatch comes from: the latest verify result per table of the given
    environments (dv_verify_runs), or None while there is no such source."""

    async def findings(self, environments: Collection[str]) -> Sequence[VerifyFinding] | None: ...


def view_of(group: EnvironmentGroup) -> EnvironmentView:
    renews = group.governor.snapshot().get("daily_exhausted_until")
    # Rules and "all": the tables resolved now, once discovery ran (a table dropped from a
    # solution keeps its state row but is not watched for lag any more).
    tables = group.environment.fixed_tables
    if group.active_tables:  # resolved (and the N:N tables beside a list), once discovery ran
        tables = tuple(sorted(group.active_tables))
    return EnvironmentView(
        name=group.name,
        tenant=group.tenant.name,
        tables=tables,
        attempted=group.status.first_attempt_done.is_set(),
        auth_error=group.status.auth_error,
        budget_renews_at=datetime.fromisoformat(renews) if isinstance(renews, str) else None,
    )


async def type_changes(engine: AsyncEngine, environments: Collection[str]) -> list[TypeChange]:
    """Columns whose type changed (the live column), with the archived one beside it."""
    query = select(mirror_columns).where(
        and_(
            mirror_columns.c.environment.in_(sorted(environments)),
            mirror_columns.c.type_changed_at.is_not(None),
        )
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    archived = {
        (r.environment, r.table_name, utc(r.type_changed_at)): r for r in rows if r.removed_at
    }
    out = []
    for row in rows:
        if row.removed_at is not None:
            continue
        at = utc(row.type_changed_at)
        assert at is not None
        old = archived.get((row.environment, row.table_name, at))
        out.append(
            TypeChange(
                row.environment,
                row.table_name,
                row.column_name,
                row.sql_type,
                at,
                old_type=old.sql_type if old is not None else None,
                kept_as=old.column_name if old is not None else None,
            )
        )
    return out


class AlertService:
    """Looks every CHECK_SECONDS; `groups` gives the worker groups this daemon runs now."""

    def __init__(
        self,
        config: Config,
        store: AsyncEngine,
        groups: Callable[[], Collection[EnvironmentGroup]],
        *,
        verify: VerifySource | None = None,
        policy: DeliveryPolicy | None = None,
        check_seconds: float = CHECK_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.groups = groups
        self.verify = verify
        self.policy = policy or DeliveryPolicy()
        self.check_seconds = check_seconds
        self.clock = clock
        self._configure(config)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _configure(self, config: Config) -> None:
        self.rules = tuple(Rule.of(a) for a in config.alerts)
        self.senders = Senders(config.alerts, self._record, self.policy)

    async def _record(self, message: Message, outcome: str, attempts: int) -> None:
        await record_delivery(
            self.store,
            alert=message.alert,
            at=self.clock(),
            kind=message.kind,
            event=message.name,
            environment=message.environment,
            table=message.table,
            outcome=outcome,
            attempts=attempts,
        )

    def start(self) -> None:
        self.senders.start()
        self._task = asyncio.create_task(self._loop(), name="alerts")

    async def reload(self, config: Config) -> None:
        """New [[alerts]]: queued messages of the old senders get a moment, then new ones run."""
        old = self.senders
        self._configure(config)
        self.senders.start()
        await old.drain(1.0)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.senders.drain(DRAIN_GRACE)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - alerts never stop the daemon
                log.warning("alert_check_failed", error=str(exc).splitlines()[0][:300])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_seconds):
                    await self._stop.wait()

    async def check(self) -> tuple[Message, ...]:
        """One look; the messages it queued."""
        if not self.rules:
            return ()
        views = [view_of(g) for g in self.groups()]
        names = [v.name for v in views]
        if not names:
            return ()
        now = self.clock()
        tables = [s for name in names for s in await statuses(self.store, name)]
        changes = await type_changes(self.store, names)
        findings = await self.verify.findings(names) if self.verify is not None else None
        observation = observe(views, tables, changes, findings, now)
        states = await load_states(self.store, names)
        decision = decide(self.rules, observation, states, now)
        await save_states(self.store, decision.updates, now=now)
        for message in decision.messages:
            log.info(
                "alert_raised" if message.kind != "recovered" else "alert_recovered",
                alert=message.alert,
                kind=message.kind,
                alert_event=message.event,
                environment=message.environment,
                table=message.table or None,
            )
            self.senders.offer(message)
        return decision.messages
