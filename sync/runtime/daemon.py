"""`dvmirror run`: wiring, signals, systemd notify, health and metrics around the scheduler.

Lifecycle: the SQLite writer lock (store.writer_lock) → migrate → metrics/health server →
the lease keeper takes this daemon's share of the environments (all of them on SQLite) and the
scheduler starts their groups (they authenticate) → READY=1 → a tick loop (WATCHDOG=1, STATUS=,
/healthz heartbeat, governor metrics) while the keeper renews, takes and gives up leases, until
SIGTERM/SIGINT → STOPPING=1 → in-flight pages commit within the shutdown grace (the leases still
renewed) → the leases are released → exit 0. SIGHUP reloads the configuration file; an invalid
new file is logged and ignored.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.loading import load_config
from sync.config.model import Config
from sync.errors import ConfigError, DvmirrorError
from sync.logs import get_logger
from sync.mirror.job_types import PageProgress
from sync.runtime import systemd as notify
from sync.runtime.alerts.monitor import AlertService
from sync.runtime.alerts.verify_source import StoredVerifyFindings
from sync.runtime.http import HealthCheck, HttpServer, start_http_server
from sync.runtime.leases import LeaseKeeper
from sync.runtime.looplag import LoopLagWatch
from sync.runtime.metrics import Metrics
from sync.runtime.scheduler import RELOAD_GRACE, Scheduler, sleep_or_stop
from sync.runtime.wiring import Wiring
from sync.store.checkpoints import statuses
from sync.store.dialects.sqlite_maintenance import checkpoint_wal, wal_needs_checkpoint
from sync.store.history import prune_history as prune_table_history
from sync.store.open import open_store
from sync.store.pruning import prune_history
from sync.store.writer_lock import single_writer

log = get_logger("dvmirror.daemon")


class Sidecar(Protocol):
    async def stop(self) -> None: ...


# A service started beside /metrics once the store is open (the web console); it is given the
# configuration and the store, and stopped after the scheduler drained.
SidecarFactory = Callable[[Config, AsyncEngine], Awaitable[Sidecar]]

TICK_SECONDS = 1.0
READY_TIMEOUT = 60.0  # READY=1 after the first tokens, or after this long in any case
PRUNE_SECONDS = 3600.0  # how often the daemon prunes dv_run_history
WAL_CHECK_SECONDS = 60.0  # how often the daemon looks at an SQLite store's WAL size


class Daemon:
    """One running dvmirror service. Signal handlers call `request_stop` / `request_reload`."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        on_page: Callable[[PageProgress], None] | None = None,
        serve_http: bool = True,
        handle_signals: bool = True,
        sidecars: Sequence[SidecarFactory] = (),
    ) -> None:
        self.config = config
        self.sidecar_factories = tuple(sidecars)
        self.sidecars: list[Sidecar] = []
        self.metrics = metrics or Metrics()
        self.on_page = on_page
        self.serve_http = serve_http
        self.handle_signals = handle_signals
        self.health = HealthCheck(TICK_SECONDS, problems=self._problems)
        self.http: HttpServer | None = None
        self.scheduler: Scheduler | None = None
        self.keeper: LeaseKeeper | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()  # cuts the tick's sleep short on stop or reload
        self.stop_reason: str | None = None
        self._wal_checked_at = time.monotonic()
        self._status_logged: list[str] = []
        self._wal_task: asyncio.Task[None] | None = None
        self._pruned_at = -math.inf
        self._prune_task: asyncio.Task[None] | None = None
        self.alerts: AlertService | None = None

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("shutdown_requested", reason=reason)
            self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    async def run(self) -> int:
        with single_writer(self.config.store_url, "run"):
            return await self._run()

    async def _run(self) -> int:
        store = await open_store(self.config)
        wiring = Wiring(self.config, store, self.metrics)
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        keeper_stop = asyncio.Event()  # after the drain: the leases are renewed while it runs
        keeping: asyncio.Task[None] | None = None
        try:
            await self._seed_metrics(store)
            if self.serve_http:
                self.http = await start_http_server(
                    self.config.settings.daemon.metrics_listen, self.metrics.registry, self.health
                )
                log.info("http_listening", url=self.http.url)
            await self._start_sidecars(store)
            self.scheduler = Scheduler(wiring, metrics=self.metrics, on_page=self.on_page)
            self.keeper = LeaseKeeper(
                store,
                self._environment_names(self.config),
                self.config.settings.daemon.lease_seconds,
                acquired=self._lease_acquired,
                lost=self._lease_lost,
                release=self._lease_released,
                fenced_out=self._fenced_out,
            )
            self._start_alerts(store)
            await self.keeper.start()
            keeping = asyncio.create_task(self.keeper.run(keeper_stop), name="lease-keeper")
            await self._announce_ready()
            async with LoopLagWatch(self.metrics.loop_lag) as lag:
                await self._tick_until_stopped(store)
            log.info("event_loop_lag", **lag.summary.as_dict())
        finally:
            notify.stopping("draining in-flight pages")
            self.health.stopping()
            if self.keeper is not None:
                self.keeper.draining = True  # renew while the groups drain, take nothing new
            if self.scheduler is not None:
                await self.scheduler.stop(self.config.settings.daemon.shutdown_grace)
            if self.keeper is not None:
                keeper_stop.set()
                if keeping is not None:
                    await keeping
                await self.keeper.stop()
            await wiring.close()
            await self._stop_sidecars()
            if self.http is not None:
                await self.http.stop()
            if self._wal_task is not None:
                await self._wal_task
            if self._prune_task is not None:
                await self._prune_task
            await self._checkpoint_wal(store)  # a clean stop leaves a small WAL, or none
            await store.dispose()
            if self.handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            log.info("stopped", reason=self.stop_reason)
        return 0

    async def _start_sidecars(self, store: AsyncEngine) -> None:
        for factory in self.sidecar_factories:
            self.sidecars.append(await factory(self.config, store))

    def _start_alerts(self, store: AsyncEngine) -> None:
        """Alerts look at the groups this daemon runs; delivery never waits on syncing."""
        scheduler = self.scheduler
        assert scheduler is not None
        self.alerts = AlertService(
            self.config,
            store,
            lambda: [g.group for g in scheduler.groups.values()],
            verify=StoredVerifyFindings(store),
        )
        self.alerts.start()

    async def _stop_sidecars(self) -> None:
        if self.alerts is not None:  # after the drain: what syncing ended with is sent
            await self.alerts.stop()
            self.alerts = None
        while self.sidecars:
            await self.sidecars.pop().stop()

    def _problems(self) -> dict[str, str]:
        return self.scheduler.problems() if self.scheduler is not None else {}

    @staticmethod
    def _environment_names(config: Config) -> list[str]:
        return [environment.name for _, environment in config.environments()]

    async def _lease_acquired(self, name: str, store: AsyncEngine) -> None:
        assert self.scheduler is not None
        self.scheduler.start_environment(name, store)

    async def _lease_lost(self, name: str) -> None:
        assert self.scheduler is not None
        await self.scheduler.stop_environment(name, grace=0.0)  # its writes fail the fence

    def _fenced_out(self, name: str) -> bool:
        """Whether the environment's group stopped at a write that found its lease gone."""
        return self.scheduler is not None and self.scheduler.lease_lost(name)

    async def _lease_released(self, name: str) -> None:
        assert self.scheduler is not None
        await self.scheduler.stop_environment(name, grace=RELOAD_GRACE)

    async def _seed_metrics(self, store: AsyncEngine) -> None:
        """Freshness from the control database, for the tables this configuration syncs only
        (a table dropped from the configuration would otherwise look ever more stale)."""
        envs = {env.name: env.fixed_tables for _, env in self.config.environments()}
        for row in await statuses(store):
            if row.environment not in envs:
                continue
            tables = envs[row.environment]
            if tables is not None and row.table not in tables:
                continue
            if row.last_success is not None:
                self.metrics.last_success(row.environment, row.table, row.last_success.timestamp())

    async def _announce_ready(self) -> None:
        assert self.scheduler is not None
        waiting = asyncio.create_task(self.scheduler.wait_first_attempts(READY_TIMEOUT))
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, stop):
            task.cancel()
        line = self._status_line()
        notify.ready(line)
        log.info("ready", status=line)

    async def _checkpoint_wal(self, store: AsyncEngine) -> None:
        """Truncate an SQLite store's WAL (store.dialects.sqlite_maintenance); never fatal."""
        try:
            done = await checkpoint_wal(store)
        except (SQLAlchemyError, OSError, DvmirrorError) as exc:
            log.warning("wal_checkpoint_failed", error=str(exc).splitlines()[0])
            return
        if done is not None and done.wal_bytes_before:
            log.info(
                "wal_checkpointed",
                complete=done.complete,  # False: a reader still holds an old snapshot
                wal_bytes_before=done.wal_bytes_before,
                wal_bytes_after=done.wal_bytes_after,
            )

    def _watch_wal(self, store: AsyncEngine) -> None:
        """Every WAL_CHECK_SECONDS: checkpoint in the background once the WAL outgrew its bound
        (a data team's long reader held it); one checkpoint at a time."""
        now = time.monotonic()
        if now - self._wal_checked_at < WAL_CHECK_SECONDS:
            return
        self._wal_checked_at = now
        if (self._wal_task is None or self._wal_task.done()) and wal_needs_checkpoint(store):
            self._wal_task = asyncio.create_task(self._checkpoint_wal(store), name="wal")

    def _watch_history(self, store: AsyncEngine) -> None:
        """At start and every PRUNE_SECONDS: drop runs older than daemon.history_days, in the
        background (any instance may; the delete is the same from each)."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = asyncio.create_task(self._prune_history(store), name="prune")

    async def _prune_history(self, store: AsyncEngine) -> None:
        keep = self.config.settings.daemon.history_days
        try:
            pruned = await prune_history(store, keep, now=datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - housekeeping never stops the daemon
            log.warning("run_history_prune_failed", error=str(exc))
            return
        if pruned.runs or pruned.commits:
            log.info("run_history_pruned", runs=pruned.runs, commits=pruned.commits, kept_days=keep)
        await self._prune_table_history(store)

    async def _prune_table_history(self, store: AsyncEngine) -> None:
        """History tables with a `history_retention`: drop the versions that ended before it."""
        for _, env in self.config.environments():
            for table, options in env.table_options.items():
                if not options.history or options.history_retention is None:
                    continue
                retention = options.history_retention
                try:
                    pruned = await prune_table_history(
                        store, env.name, table, retention, now=datetime.now(UTC)
                    )
                except Exception as exc:  # noqa: BLE001 - housekeeping never stops the daemon
                    log.warning(
                        "table_history_prune_failed",
                        environment=env.name,
                        table=table,
                        error=str(exc),
                    )
                    continue
                if pruned:
                    log.info(
                        "table_history_pruned",
                        environment=env.name,
                        table=table,
                        versions=pruned,
                        kept_seconds=retention,
                    )

    async def _tick_until_stopped(self, store: AsyncEngine) -> None:
        interval = min(TICK_SECONDS, notify.watchdog_interval() or TICK_SECONDS)
        while not self._stop.is_set():
            self._watch_wal(store)
            self._watch_history(store)
            self.health.tick()
            notify.watchdog()
            assert self.scheduler is not None
            for name, item in self.scheduler.groups.items():
                self.metrics.governor_snapshot(name, item.group.governor.snapshot())
            ready, syncing, problems = self._status_parts()
            line = ", ".join([ready, syncing, *problems])
            notify.status(line)
            # The journal shows each change of what is ready, parked or failing (not every
            # tick, nor the count of tables syncing right now).
            if [ready, *problems] != self._status_logged:
                self._status_logged = [ready, *problems]
                log.info("status_changed", status=line)
            if self._reload.is_set():
                self._reload.clear()
                await self._apply_reload()
            await sleep_or_stop(self._wake, interval)
            self._wake.clear()

    async def _apply_reload(self) -> None:
        notify.reloading()
        try:
            config = load_config(self.config.path)
        except ConfigError as exc:
            log.error("reload_rejected", error=exc.message)
            notify.ready(self._status_line())
            return
        for warning in config.warnings:
            log.warning("config_warning", warning=warning)
        if config.store_url != self.config.store_url:
            log.warning("reload_store_change_ignored", hint="restart to change store.url")
        assert self.scheduler is not None
        assert self.keeper is not None
        before = set(self._environment_names(self.config))
        changes = await self.scheduler.reload(config, start_new=False)
        await self.keeper.set_resources(self._environment_names(config))
        changes["added"] = sorted(set(self._environment_names(config)) - before)
        self.config = config
        if self.alerts is not None:
            await self.alerts.reload(config)
        log.info("reloaded", **changes)
        notify.ready(self._status_line())

    def _status_line(self) -> str:
        ready, syncing, problems = self._status_parts()
        return ", ".join([ready, syncing, *problems])

    def _status_parts(self) -> tuple[str, str, list[str]]:
        """(environments ready, tables syncing now, what is parked or failing)."""
        assert self.scheduler is not None
        groups = self.scheduler.groups.values()
        ready = sum(1 for g in groups if g.group.status.authenticated)
        busy = sum(len(g.group.status.busy_tables) for g in groups)
        parked = [g.group.name for g in groups if g.group.status.last_error]
        # Signed in, but tables fail (e.g. a token renewal refused after a secret was revoked).
        failing = [
            g.group.name
            for g in groups
            if not g.group.status.last_error and g.group.status.failing_tables
        ]
        held = f"{ready}/{len(self.scheduler.groups)} environments ready"
        total = len(self._environment_names(self.config))
        syncing = f"{busy} tables syncing"
        if len(self.scheduler.groups) < total:
            syncing += f" (this daemon holds {len(self.scheduler.groups)} of {total})"
        problems = []
        if parked:
            problems.append(f"parked: {', '.join(sorted(parked))}")
        if failing:
            problems.append(f"tables failing in: {', '.join(sorted(failing))}")
        return held, syncing, problems


async def run_daemon(config: Config) -> int:
    return await Daemon(config).run()
