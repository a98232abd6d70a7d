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
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.logs import get_logger
from sync.mirror.job_types import PageProgress
from sync.runtime.environment_group import EnvironmentGroup
from sync.runtime.group_status import GroupStatus
from sync.runtime.metrics import Metrics
from sync.runtime.timing import backoff_delay
from sync.runtime.waiting import sleep_or_stop
from sync.runtime.wiring import Wiring

__all__ = [
    "RELOAD_GRACE",
    "EnvironmentGroup",
    "GroupStatus",
    "Scheduler",
    "group_key",
    "sleep_or_stop",
]

log = get_logger("dvmirror.scheduler")


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
        return self.group.environment.fixed_tables or ()


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

    def lease_lost(self, name: str) -> bool:
        """Whether the environment's group stopped because a write found its lease gone."""
        running = self.groups.get(name)
        return running is not None and running.group.status.lease_lost

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
