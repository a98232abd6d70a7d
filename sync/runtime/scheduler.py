"""The daemon's scheduler: one supervised worker group per environment, one loop per table.

Fairness comes from the shape: every table has its own loop (a big table's full pass a few key
ranges, sync.mirror.ranged), and all loops of an environment take their requests from that
application user's governor; `daemon.max_concurrency` caps the requests in flight across all
environments. A long backfill of one table therefore interleaves page by page with the
incremental cycles of the others, and no environment ever waits for another one. Each cycle
runs through the same table runner as the one-off commands (sync.mirror.runner). A failing
table or environment is parked with its error and retried with backoff; nothing it raises
reaches its neighbours.

Stopping is cooperative: `stop()` lets every in-flight page commit (each page and its
checkpoint are one transaction) and the loops end between pages; whatever is still running
when the grace period ends is cancelled, which rolls back at most one uncommitted page.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config, Environment, Tenant
from sync.errors import AuthError, DvmirrorError, LeaseLostError
from sync.governor.gate import Governor
from sync.logs import get_logger
from sync.mirror.discovery import list_tables
from sync.mirror.fetch import ExactClient
from sync.mirror.job import PageProgress, TableJob
from sync.mirror.runner import run_cycle
from sync.runtime.metrics import Metrics
from sync.runtime.timing import FIRST_RUN_SPREAD, Timing, backoff_delay, first_delay, next_delay
from sync.runtime.wiring import Wiring
from sync.store import checkpoints as state
from sync.store.environments import record_environment

log = get_logger("dvmirror.scheduler")


@dataclass
class GroupStatus:
    """What the daemon reports about one environment (status line, readiness)."""

    authenticated: bool = False
    first_attempt_done: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None
    busy_tables: set[str] = field(default_factory=set)
    lease_lost: bool = False
    failing_tables: dict[str, str] = field(default_factory=dict)  # table → its last error

    @property
    def problem(self) -> str | None:
        """Why this environment is not syncing everything right now (None: it is)."""
        if self.last_error is not None:
            return self.last_error
        if self.failing_tables:
            table, error = sorted(self.failing_tables.items())[0]
            more = len(self.failing_tables) - 1
            return f"{table}: {error}" + (f" (and {more} more tables)" if more else "")
        return None


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, but wake as soon as `stop` is set. True when stopping."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stop.wait()
    return stop.is_set()


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

    @property
    def name(self) -> str:
        return self.environment.name

    async def run(self) -> None:
        """Authenticate (with backoff while it fails), then keep every table in sync."""
        client = self.wiring.client(self.tenant, self.environment, self.governor)
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
            async with asyncio.TaskGroup() as group:
                for table in tables:
                    group.create_task(self._table_loop(client, table), name=f"{self.name}/{table}")

    async def _authenticate(self, client: ExactClient) -> bool:
        """WhoAmI until it works; an auth failure parks the whole environment. False if stopped."""
        attempts = 0
        while not self.stopping.is_set():
            try:
                who = await client.whoami()
            except DvmirrorError as exc:
                attempts += 1
                self.status.last_error = exc.message
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
        if self.environment.tables != "all":
            return tuple(self.environment.tables)
        attempts = 0
        while not self.stopping.is_set():
            try:
                return tuple(await list_tables(client, self.environment.url))
            except DvmirrorError as exc:
                attempts += 1
                log.error("table_list_failed", environment=self.name, error=exc.message)
                if await sleep_or_stop(
                    self.stopping, backoff_delay(self.timing, attempts, self.rng)
                ):
                    break
        return None

    async def _park_all(self, error: DvmirrorError, *, retry_in: float) -> None:
        if self.environment.tables == "all":
            return
        now = datetime.now(UTC)
        retry_at = now + timedelta(seconds=retry_in)
        for table in self.environment.tables:
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

    async def _table_loop(self, client: ExactClient, table: str) -> None:
        """One table forever: a cycle (one page at a time), then wait for the next one."""
        attempts = 0
        # Spread first cycles, but never wait longer than one interval for the first one.
        spread = min(FIRST_RUN_SPREAD, self.environment.interval)
        if await sleep_or_stop(self.stopping, first_delay(self.rng, spread)):
            return
        while not self.stopping.is_set():
            job = TableJob(
                store=self.store,
                client=client,
                environment=self.environment,
                table=table,
                command="run",
                reconcile_every=timedelta(seconds=self.environment.reconcile_interval),
                on_page=self._page_done,
            )
            async with self.table_slots:
                error = await self._cycle(job)
            if isinstance(error, LeaseLostError):
                # Not parked: that would be a write, and the environment is not ours any more.
                await job.cancel_prefetch()
                self.lease_lost(error)
                return
            if error is None and self.stopping.is_set():
                # Interrupted between pages: the checkpoint is committed; resume next start.
                with contextlib.suppress(LeaseLostError):
                    await asyncio.shield(job.interrupt())
                return
            # The retry is decided before the outcome is stored, so status shows what will happen.
            retry_in = None if error is None else backoff_delay(self.timing, attempts + 1, self.rng)
            result = await job.finish(error, retry_in=retry_in)
            if self.metrics is not None:
                self.metrics.table_run_finished(self.name, table, ok=result.ok)
                self.metrics.table_parked(self.name, table, not result.ok)
            if result.ok:
                attempts = 0
                self.status.failing_tables.pop(table, None)
                delay = next_delay(self.timing, self.rng)
            else:
                attempts += 1
                self.status.failing_tables[table] = (result.error or "failed")[:300]
                delay = retry_in if retry_in is not None else next_delay(self.timing, self.rng)
                log.warning("table_retry_scheduled", table=table, retry_in=round(delay, 1))
            if await sleep_or_stop(self.stopping, delay):
                return

    def lease_lost(self, error: LeaseLostError) -> None:
        """The whole environment stops at once: every write of it would fail the fence now."""
        if not self.status.lease_lost:
            log.warning("environment_lease_lost", environment=self.name, error=error.message)
        self.status.lease_lost = True
        self.stopping.set()

    async def _cycle(self, job: TableJob) -> DvmirrorError | None:
        """Run pages until the cycle ends or the group is told to stop."""
        self.status.busy_tables.add(job.table)
        try:
            return await run_cycle(job, until="cycle", stopping=self.stopping)
        finally:
            self.status.busy_tables.discard(job.table)

    def _page_done(self, page: PageProgress) -> None:
        if self.metrics is not None:
            self.metrics.page_committed(
                page.environment, page.table, upserted=page.rows, deleted=page.deleted
            )
        if self.on_page is not None:
            self.on_page(page)


RELOAD_GRACE = 30.0  # seconds a group stopped by a reload has to commit its in-flight pages


def group_key(config: Config, tenant: Tenant, environment: Environment) -> tuple[object, ...]:
    """What a running group depends on: its environment, its tenant's own settings (not the
    tenant's other environments) and the app registration it signs in with."""
    return (tenant.model_copy(update={"environments": ()}), config.app_for(tenant), environment)


@dataclass
class RunningGroup:
    group: EnvironmentGroup
    task: asyncio.Task[None]
    key: tuple[object, ...]

    @property
    def tables(self) -> tuple[str, ...]:
        tables = self.group.environment.tables
        return () if tables == "all" else tuple(tables)


class Scheduler:
    """Starts, reloads and drains the environment groups of one configuration.

    Which environments run here is the lease keeper's call (sync.runtime.leases):
    `start_environment` / `stop_environment` follow its events; `start` runs them all (one
    process that owns every environment).
    """

    def __init__(
        self,
        wiring: Wiring,
        *,
        metrics: Metrics | None = None,
        seed: int | None = None,
        on_page: Callable[[PageProgress], None] | None = None,
    ) -> None:
        self.wiring = wiring
        self.metrics = metrics
        self.rng = random.Random(seed)
        self.on_page = on_page
        self.groups: dict[str, RunningGroup] = {}
        self.config = wiring.config

    def start(self, config: Config) -> None:
        self.config = config
        for tenant, environment in config.environments():
            self._start_group(tenant, environment, config=config)

    def start_environment(self, name: str, store: AsyncEngine) -> bool:
        """Run one environment of the current configuration, writing through `store` (its
        fenced engine). False when it is not configured (any more)."""
        for tenant, environment in self.config.environments():
            if environment.name == name:
                if name in self.groups:
                    self.groups.pop(name).group.stopping.set()  # a stale group: it cannot write
                self._start_group(tenant, environment, config=self.config, store=store)
                return True
        return False

    async def stop_environment(self, name: str, *, grace: float) -> None:
        running = self.groups.get(name)
        await self._stop_groups([name], grace=grace)
        if running is not None:
            self._forget(name, running.tables)

    def _start_group(
        self,
        tenant: Tenant,
        environment: Environment,
        *,
        config: Config,
        store: AsyncEngine | None = None,
    ) -> None:
        group = EnvironmentGroup(
            tenant,
            environment,
            self.wiring,
            store=store,
            metrics=self.metrics,
            rng=random.Random(self.rng.random()),
            on_page=self.on_page,
        )
        task = asyncio.create_task(self._supervise(group), name=f"env:{environment.name}")
        self.groups[environment.name] = RunningGroup(
            group, task, group_key(config, tenant, environment)
        )

    async def _supervise(self, group: EnvironmentGroup) -> None:
        """Keep one group alive: an unexpected crash is logged and the group restarted."""
        attempts = 0
        while not group.stopping.is_set():
            try:
                await group.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one group must not take the daemon down
                attempts += 1
                log.exception("environment_group_crashed", environment=group.name, error=str(exc))
                delay = backoff_delay(group.timing, attempts, self.rng)
                if await sleep_or_stop(group.stopping, delay):
                    return
            else:
                return

    async def wait_first_attempts(self, limit: float) -> None:
        """Until every group has tried to authenticate once (READY=1 waits for this)."""
        waits = [g.group.status.first_attempt_done.wait() for g in self.groups.values()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.gather(*waits)

    async def reload(self, config: Config, *, start_new: bool = True) -> dict[str, list[str]]:
        """Apply a new configuration: start, stop or restart the groups that changed.

        A group restarts when its environment, its tenant's own settings or its app registration
        changed (a rotated secret is read anew with the file); groups that did not change keep
        running with their clients and tokens. With leases (`start_new=False`) new environments
        start when the keeper takes their lease, not here.
        """
        # Token providers hold the app registrations they were built from: new and restarted
        # groups must get providers built from the new configuration.
        self.wiring.reload(config)
        self.config = config
        wanted = {env.name: (tenant, env) for tenant, env in config.environments()}
        changes: dict[str, list[str]] = {"added": [], "removed": [], "restarted": []}
        for name in list(self.groups):
            running = self.groups[name]
            if name not in wanted:
                await self._stop_groups([name], grace=RELOAD_GRACE)
                changes["removed"].append(name)
                self._forget(name, running.tables)
            elif group_key(config, *wanted[name]) != running.key:
                await self._stop_groups([name], grace=RELOAD_GRACE)
                self._start_group(*wanted[name], config=config, store=running.group.store)
                changes["restarted"].append(name)
                kept = self.groups[name].tables
                self._forget(name, tuple(t for t in running.tables if t not in kept))
        for name, (tenant, environment) in wanted.items():
            if start_new and name not in self.groups:
                self._start_group(tenant, environment, config=config)
                changes["added"].append(name)
        return changes

    def _forget(self, environment: str, tables: tuple[str, ...]) -> None:
        """No freshness metrics for tables that are no longer synced (they would only age)."""
        if self.metrics is not None:
            for table in tables:
                self.metrics.forget_table(environment, table)

    async def stop(self, grace: float) -> None:
        """Let in-flight pages commit for up to `grace` seconds, then cancel the rest."""
        await self._stop_groups(list(self.groups), grace=grace)

    async def _stop_groups(self, names: list[str], *, grace: float) -> None:
        running = [self.groups.pop(name) for name in names if name in self.groups]
        for item in running:
            item.group.stopping.set()
        tasks = [item.task for item in running]
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending and grace > 0:  # no grace (a lost lease) cancels on purpose
            log.warning("shutdown_grace_exceeded", cancelled=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("environment_group_failed", error=str(task.exception()))

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "authenticated": item.group.status.authenticated,
                "busy_tables": sorted(item.group.status.busy_tables),
                "last_error": item.group.status.last_error,
                "governor": item.group.governor.snapshot(),
            }
            for name, item in self.groups.items()
        }

    def problems(self) -> dict[str, str]:
        """The environments that are failing (authentication, or tables parked), and why."""
        found: dict[str, str] = {}
        for name, item in self.groups.items():
            problem = item.group.status.problem
            if problem is not None:
                found[name] = problem
        return found
