"""Per-process wiring shared by the commands and the daemon.

One `TokenProviders` (one MSAL client per tenant authority), one `TenantBudget` per tenant
that has a daily request budget (persisted in the control database), one `Governor`
per environment — the environment's application user — shared by all its table workers, and
one `DecodePool` (`daemon.decode_workers` processes; none when the process may use one CPU
only) shared by all clients, stopped on `close()`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.config.tenants import Environment, Tenant
from sync.dataverse.auth import TokenProviders
from sync.governor.budget_store import SqlBudgetStore
from sync.governor.gate import Governor, TenantBudget
from sync.limits import CONCURRENT_REQUESTS_PER_USER
from sync.logs import get_logger
from sync.mirror.decode_workers import DecodePool, effective_workers, usable_cpus
from sync.mirror.fetch import ExactClient

if TYPE_CHECKING:  # the daemon's metrics: a one-off command imports no prometheus_client
    from sync.runtime.metrics import Metrics

log = get_logger("dvmirror.wiring")

NO_RESPONSE = 599


class Wiring:
    def __init__(self, config: Config, store: AsyncEngine, metrics: Metrics | None = None) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.tokens = TokenProviders(config)
        self._budgets: dict[str, TenantBudget] = {}
        workers = effective_workers(config.settings.daemon.decode_workers, usable_cpus())
        self.decode_pool = DecodePool(workers)
        # daemon.max_concurrency: requests in flight across every environment of the process.
        self.request_cap = asyncio.Semaphore(config.settings.daemon.max_concurrency)

    def budget(self, tenant: Tenant) -> TenantBudget | None:
        if tenant.daily_request_budget is None:
            return None
        budget = self._budgets.get(tenant.name)
        if budget is None or budget.core.limit != tenant.daily_request_budget:
            budget = TenantBudget(
                tenant.name, tenant.daily_request_budget, SqlBudgetStore(self.store)
            )
            self._budgets[tenant.name] = budget
        return budget

    def governor(self, tenant: Tenant, environment: Environment) -> Governor:
        metrics, name = self.metrics, environment.name

        def count(status: int) -> None:
            assert metrics is not None
            # The client reports "no response" (reset, timeout) as 599.
            metrics.request_finished(name, None if status == NO_RESPONSE else status)

        return Governor(
            name,
            cap=environment.max_concurrency or CONCURRENT_REQUESTS_PER_USER,
            initial_concurrency=environment.max_concurrency,
            daily=self.budget(tenant),
            on_response=count if metrics is not None else None,
            request_cap=self.request_cap,
        )

    def client(self, tenant: Tenant, environment: Environment, governor: Governor) -> ExactClient:
        app = self.config.app_for(tenant)
        return ExactClient(
            tenant,
            environment,
            self.tokens.for_tenant(tenant),
            governor,
            ca_bundle=app.ca_bundle,
            decode_pool=self.decode_pool,
        )

    def reload(self, config: Config) -> None:
        """Use a new configuration: fresh token providers, so changed credentials take effect."""
        if config.settings.daemon.max_concurrency != self.config.settings.daemon.max_concurrency:
            self.request_cap = asyncio.Semaphore(config.settings.daemon.max_concurrency)
        self.config = config
        self.tokens = TokenProviders(config)
        workers = config.settings.daemon.decode_workers
        if workers != self.decode_pool.workers:
            log.warning(
                "reload_decode_workers_change_ignored",
                running=self.decode_pool.workers,
                configured=workers,
                hint="restart to change daemon.decode_workers",
            )

    async def close(self) -> None:
        """Persist the daily budget counters; stop the decode workers (after their pages)."""
        try:
            for budget in self._budgets.values():
                await budget.flush()
        finally:
            await asyncio.to_thread(self.decode_pool.shutdown)
