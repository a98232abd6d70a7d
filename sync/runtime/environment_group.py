"""One environment's worker group: everything its application user does, supervised as one.

It authenticates (with backoff while that fails), lists its tables, and runs one loop per table
(sync.runtime.table_loop): a cycle through the table runner (sync.mirror.runner), then the next
one after the interval, or after a growing backoff while the table fails. Its status
(authenticated, failing tables) feeds the status line, readiness and /healthz. A lost lease
stops the whole group at once: every write of it would fail the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment, Tenant
from sync.errors import AuthError, DvmirrorError, LeaseLostError
from sync.governor.gate import Governor
from sync.logs import get_logger
from sync.mirror.fetch import ExactClient
from sync.mirror.job_types import PageProgress
from sync.mirror.relationships import mirrored_tables, resolved_at_run_time
from sync.runtime.environment_pauses import run_pause_recorder
from sync.runtime.group_status import GroupStatus
from sync.runtime.metadata_loop import run_metadata_loop
from sync.runtime.metrics import Metrics
from sync.runtime.resync import ResyncWork
from sync.runtime.table_loop import TableLoop
from sync.runtime.timing import Timing, backoff_delay
from sync.runtime.verify_loop import CycleSignals, run_verify_loop
from sync.runtime.waiting import sleep_or_stop
from sync.runtime.wiring import Wiring
from sync.store import checkpoints as state
from sync.store.environments import record_environment

log = get_logger("dvmirror.scheduler")


class EnvironmentGroup:
    """Everything one environment's application user does, supervised as one unit.

    `store` is what it writes through: the environment's FencedEngine (store.leases) in the
    daemon, so that once its lease is lost nothing more is written and the group stops.
    """

    def __init__(
        self,
        tenant: Tenant,
        environment: Environment,
        wiring: Wiring,
        *,
        store: AsyncEngine | None = None,
        metrics: Metrics | None,
        rng: random.Random,
        on_page: Callable[[PageProgress], None] | None = None,
    ) -> None:
        self.tenant = tenant
        self.environment = environment
        self.wiring = wiring
        self.store = store or wiring.store
        self.metrics = metrics
        self.rng = rng
        self.on_page = on_page
        self.stopping = asyncio.Event()
        self.status = GroupStatus()
        self.governor: Governor = wiring.governor(tenant, environment)
        self.timing = Timing(interval=environment.interval)
        # Sized in run() once the tables are known (table_concurrency, default all of them).
        self.table_slots = asyncio.Semaphore(environment.table_concurrency or 1)
        # The tables resolved now (rediscovered every interval for rules and "all"), and each
        # one's loop: a loop ends when its table leaves the set.
        self.active_tables: set[str] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        # Resync requests this group (the lease holder) runs (sync.runtime.resync).
        self.resync = ResyncWork(environment.name, self.store)
        # Verification every verify_interval (sync.runtime.verify_loop) rechecks after cycles.
        self.cycles = CycleSignals()

    @property
    def name(self) -> str:
        return self.environment.name

    async def run(self) -> None:
        """Authenticate (with backoff while it fails), then keep every table in sync."""
        client = self.wiring.client(self.tenant, self.environment, self.governor)
        started_at = datetime.now(UTC)
        async with client:
            if not await self._authenticate(client):
                return
            tables = await self._tables(client)
            if tables is None:
                return
            # This process is now the environment's writer (it holds the lease): runs a killed
            # one left "running" (SIGKILL, power loss) are closed as interrupted.
            try:
                await state.close_stale_runs(self.store, self.name, now=datetime.now(UTC))
            except LeaseLostError as exc:
                self.lease_lost(exc)
                return
            # How many of the tables may be in a cycle at once (table_concurrency, default all).
            self.table_slots = asyncio.Semaphore(
                self.environment.table_concurrency or max(1, len(tables))
            )
            self.active_tables = set(tables)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._watch_resyncs(tables), name=f"{self.name}/resync")
                group.create_task(self._verify(client), name=f"{self.name}/verify")
                group.create_task(
                    self._pauses(client, started_at), name=f"{self.name}/environment-pauses"
                )
                if self.environment.metadata_tables:
                    group.create_task(self._metadata(client), name=f"{self.name}/metadata")
                for table in tables:
                    self._start_loop(client, group, table)
                if resolved_at_run_time(self.environment):
                    group.create_task(
                        self._rediscover(client, group), name=f"{self.name}/rediscover"
                    )

    async def _verify(self, client: ExactClient) -> None:
        try:
            await run_verify_loop(
                store=self.store,
                client=client,
                environment=self.environment,
                tables=lambda: sorted(self.active_tables),
                budget=self.wiring.budget(self.tenant),
                metrics=self.metrics,
                cycles=self.cycles,
                stopping=self.stopping,
            )
        except LeaseLostError as exc:
            self.lease_lost(exc)

    async def _pauses(self, client: ExactClient, started_at: datetime) -> None:
        """The 429s of the environment's own requests, stored as runs (environment_pauses)."""
        try:
            await run_pause_recorder(
                store=self.store,
                environment=self.name,
                tally=client.tally,
                stopping=self.stopping,
                started_at=started_at,
            )
        except LeaseLostError as exc:
            self.lease_lost(exc)

    async def _metadata(self, client: ExactClient) -> None:
        """The environment's metadata tables (sync.runtime.metadata_loop)."""
        try:
            await run_metadata_loop(
                store=self.store,
                client=client,
                environment=self.environment,
                tables=lambda: sorted(self.active_tables),
                stopping=self.stopping,
            )
        except LeaseLostError as exc:
            self.lease_lost(exc)

    async def _watch_resyncs(self, tables: tuple[str, ...]) -> None:
        """Claim and follow the environment's resync requests every tick, until stopped."""
        try:
            await self.resync.run(tables, self.stopping)
        except LeaseLostError as exc:
            self.lease_lost(exc)

    async def _authenticate(self, client: ExactClient) -> bool:
        """WhoAmI until it works; an auth failure parks the whole environment. False if stopped."""
        attempts = 0
        while not self.stopping.is_set():
            try:
                who = await client.whoami()
            except DvmirrorError as exc:
                attempts += 1
                self.status.last_error = exc.message
                self.status.auth_error = exc.message if isinstance(exc, AuthError) else None
                delay = backoff_delay(self.timing, attempts, self.rng)
                await self._park_all(exc, retry_in=delay)
                if isinstance(exc, AuthError) and self.metrics is not None:
                    self.metrics.token_failure(self.tenant.name, exc)
                log.error(
                    "environment_parked",
                    environment=self.name,
                    tenant=self.tenant.name,
                    error=exc.message,
                    fix=getattr(exc, "fix", None),
                    retry_in=round(delay, 1),
                )
                self.status.first_attempt_done.set()
                if await sleep_or_stop(self.stopping, delay):
                    return False
                continue
            self.status.authenticated, self.status.last_error = True, None
            self.status.auth_error = None
            self.status.first_attempt_done.set()
            try:
                await record_environment(
                    self.store,
                    self.tenant,
                    self.environment,
                    organization_id=who.get("OrganizationId"),
                    application_user_id=who.get("UserId"),
                )
            except LeaseLostError as exc:
                self.lease_lost(exc)
                return False
            log.info("environment_ready", environment=self.name, user=who.get("UserId"))
            return True
        return False

    async def _tables(self, client: ExactClient) -> tuple[str, ...] | None:
        if not resolved_at_run_time(self.environment):
            return self.environment.fixed_tables
        attempts = 0
        while not self.stopping.is_set():
            try:
                return await self._resolve(client)
            except LeaseLostError as exc:  # writing relationshipmetadata found it lost
                self.lease_lost(exc)
                return None
            except DvmirrorError as exc:
                attempts += 1
                log.error("table_list_failed", environment=self.name, error=exc.message)
                if await sleep_or_stop(
                    self.stopping, backoff_delay(self.timing, attempts, self.rng)
                ):
                    break
        return None

    async def _resolve(self, client: ExactClient, *, again: bool = False) -> tuple[str, ...]:
        """The tables now; a failed N:N discovery at start leaves them out until the next
        resolution, and `again` keeps the set in place (no N:N table dropped for a blip)."""
        return await mirrored_tables(client, self.store, self.environment, tolerant=not again)

    async def _rediscover(self, client: ExactClient, group: asyncio.TaskGroup) -> None:
        """Resolve the table rules again every interval: a table that now matches (say, added
        to a solution) starts its loop; one that no longer does stops after its current cycle,
        its mirror kept."""
        while not await sleep_or_stop(self.stopping, self.environment.interval):
            try:
                tables = await self._resolve(client, again=True)
            except DvmirrorError as exc:  # a lost lease also stops the table loops
                log.warning("table_rediscovery_failed", environment=self.name, error=exc.message)
                continue
            for table in sorted(self.active_tables - set(tables)):
                log.info("table_dropped", environment=self.name, table=table)
            self.active_tables = set(tables)
            self.resync.tables = tables
            for table in tables:
                if self._start_loop(client, group, table):
                    log.info("table_added", environment=self.name, table=table)
                    if self.environment.table_concurrency is None:
                        self.table_slots.release()  # all may run at once: one slot more

    def _start_loop(self, client: ExactClient, group: asyncio.TaskGroup, table: str) -> bool:
        """Start the table's loop unless it runs; True when it was started."""
        running = self._loops.get(table)
        if running is not None and not running.done():
            return False  # (a table dropped and taken up again before its loop noticed)
        self._loops[table] = group.create_task(
            TableLoop(self, client, table).run(), name=f"{self.name}/{table}"
        )
        return True

    async def _park_all(self, error: DvmirrorError, *, retry_in: float) -> None:
        if self.environment.fixed_tables is None:
            return
        now = datetime.now(UTC)
        retry_at = now + timedelta(seconds=retry_in)
        for table in self.environment.fixed_tables:
            with contextlib.suppress(DvmirrorError):
                await state.ensure(self.store, self.name, table, now=now)
                await state.record_error(
                    self.store,
                    self.name,
                    table,
                    error.message,
                    now=now,
                    attempts=0,
                    retry_at=retry_at,
                )
            if self.metrics is not None:
                self.metrics.table_parked(self.name, table, True)

    def lease_lost(self, error: LeaseLostError) -> None:
        """The whole environment stops at once: every write of it would fail the fence now."""
        if not self.status.lease_lost:
            log.warning("environment_lease_lost", environment=self.name, error=error.message)
        self.status.lease_lost = True
        self.stopping.set()
