"""The request governor's async shell: one per application user per environment.

Every request of that user goes through `async with governor.slot() as slot:` and reports its
response with `slot.observe(status, headers, error_code)`. The arithmetic lives in
`sync.governor.core` (pure, clock injected); this module only waits, wakes waiters, and keeps
the optional per-tenant daily budget (`TenantBudget`) persisted through a `BudgetStore`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sync.errors import DvmirrorError
from sync.governor.core import GovernorCore
from sync.governor.signals import DailyBudget, observation_from
from sync.limits import CONCURRENT_REQUESTS_PER_USER
from sync.logs import get_logger

log = get_logger("dvmirror.governor")

# Flush the daily counter to the store after this many requests or seconds.
FLUSH_EVERY_REQUESTS = 50
FLUSH_EVERY_SECONDS = 10.0


class GovernorClosedError(DvmirrorError):
    """The governor was closed while a request waited for its slot: it was never sent."""


class BudgetStore(Protocol):
    """Where a tenant's daily request counter survives restarts, shared by every process that
    spends it (several daemons on one PostgreSQL store serve environments of one tenant)."""

    async def load(self, tenant: str) -> tuple[datetime, int] | None: ...

    async def add(self, tenant: str, window_start: datetime, spent: int) -> tuple[datetime, int]:
        """Add `spent` requests to the tenant's window; return the stored (window, used), which
        includes what other processes spent. A newer stored window wins (another process
        already rolled over); an older one is replaced by `window_start`."""
        ...


def merged_budget(
    stored: tuple[datetime, int] | None, window_start: datetime, spent: int
) -> tuple[datetime, int]:
    """The counter after adding `spent` to what is stored. Pure."""
    if stored is None or stored[0] < window_start:
        return window_start, spent
    return stored[0], stored[1] + spent


@dataclass
class InMemoryBudgetStore:
    """A `BudgetStore` for tests and for runs without a control database."""

    rows: dict[str, tuple[datetime, int]] = field(default_factory=dict)

    async def load(self, tenant: str) -> tuple[datetime, int] | None:
        return self.rows.get(tenant)

    async def add(self, tenant: str, window_start: datetime, spent: int) -> tuple[datetime, int]:
        self.rows[tenant] = merged_budget(self.rows.get(tenant), window_start, spent)
        return self.rows[tenant]


class TenantBudget:
    """The daily request entitlement of one tenant, shared by its environments' governors."""

    def __init__(
        self,
        tenant: str,
        limit: int,
        store: BudgetStore | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant = tenant
        self.core = DailyBudget(limit=limit)
        self._store = store or InMemoryBudgetStore()
        self._wall = wall_clock
        self._loaded = False
        self._unsaved = 0
        self._saved_at = -math.inf
        self._lock = asyncio.Lock()
        self.exhausted_until: float | None = None

    async def wait_until(self) -> float | None:
        """None if a request may be spent now; else the wall-clock time the window renews."""
        await self._load()
        until = self.core.wait_until(self._wall())
        if until is not None and self.exhausted_until != until:
            log.warning(
                "daily_request_budget_spent",
                tenant=self.tenant,
                used=self.core.used,
                limit=self.core.limit,
                renews_at=datetime.fromtimestamp(until, UTC).isoformat(),
            )
        self.exhausted_until = until
        return until

    def spend(self) -> None:
        self.core.spend(self._wall())
        self._unsaved += 1

    def refund(self) -> None:
        """A spent request did not leave after all (recalled before it was written)."""
        if self._unsaved > 0:
            self._unsaved -= 1
            self.core.used = max(0, self.core.used - 1)

    async def maybe_flush(self) -> None:
        now = self._wall()
        if self._unsaved >= FLUSH_EVERY_REQUESTS or (
            self._unsaved and now - self._saved_at >= FLUSH_EVERY_SECONDS
        ):
            await self.flush()

    async def flush(self) -> None:
        """Add what this process spent since the last flush to the shared counter, and take
        the counter back: what the other processes spent counts here from now on."""
        async with self._lock:
            if self.core.window_start is None:
                return
            start = datetime.fromtimestamp(self.core.window_start, UTC)
            spent = self._unsaved
            stored_start, used = await self._store.add(self.tenant, start, spent)
            self._unsaved -= spent  # requests spent while the store was written stay unsaved
            self.core.window_start = stored_start.timestamp()
            self.core.used = used + self._unsaved
            self._saved_at = self._wall()

    async def _load(self) -> None:
        if self._loaded:
            return
        async with self._lock:
            if not self._loaded:
                row = await self._store.load(self.tenant)
                if row is not None:
                    self.core.window_start = row[0].timestamp()
                    self.core.used = row[1]
                self._loaded = True

    def snapshot(self) -> dict[str, Any]:
        return {
            "daily_limit": self.core.limit,
            "daily_used": self.core.used,
            "daily_exhausted_until": (
                datetime.fromtimestamp(self.exhausted_until, UTC).isoformat()
                if self.exhausted_until
                else None
            ),
        }


class Slot:
    """One granted request; report its response with `observe` before leaving the block."""

    def __init__(self, governor: Governor, sent_at: float) -> None:
        self._governor = governor
        self.sent_at = sent_at
        self.observed = False
        self.recalled = False

    def may_leave(self) -> bool:
        """The last look, taken once the request has its connection and nothing remains but
        writing it: False (and the slot is recalled: it never counts) if a 429 paused the
        user since the slot was granted. The caller then waits for a new slot."""
        if self._governor.core.paused_until <= self._governor.now():
            return True
        self.recalled = True
        return False

    def observe(self, status: int, headers: Mapping[str, str], error_code: object = None) -> float:
        self.observed = True
        return self._governor.observe(status, headers, error_code=error_code, sent_at=self.sent_at)


class Governor:
    """Shared by all workers of one application user in one environment.

    The invariant: no request of this user leaves after a 429 has been read and before its
    Retry-After has passed. A slot is granted only outside a pause (`GovernorCore.decide`), and
    the client takes one last look (`Slot.may_leave`) once its connection is ready, right
    before the request is written: a slot granted before the 429 arrived, whose request was
    still opening a connection or queued for one, is recalled there and waits for the pause to
    end. Requests already written when the 429 arrives cannot be called back; they are the
    only ones the server may see inside the window, and only in its first instant.
    """

    def __init__(
        self,
        name: str,
        *,
        cap: int = CONCURRENT_REQUESTS_PER_USER,
        initial_concurrency: int | None = None,
        window_hint: float = 300.0,
        daily: TenantBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_response: Callable[[int], None] | None = None,
        request_cap: asyncio.Semaphore | None = None,
    ) -> None:
        self.name = name
        # Shared by every governor of the process (daemon.max_concurrency): requests in flight
        # across all environments. Taken only once this user may send, so a paused user never
        # holds capacity the others could use.
        self.request_cap = request_cap
        self.on_response = on_response  # e.g. a metrics counter; sees every HTTP attempt
        self.core = GovernorCore(
            cap=cap, initial_concurrency=initial_concurrency, window_hint=window_hint
        )
        self.daily = daily
        self._clock = clock
        self._changed = asyncio.Event()
        self._closed = False
        self.waited_on_retry_after = 0.0

    def close(self) -> None:
        """Grant no more slots: waiting requests raise `GovernorClosedError`; requests already
        sent finish normally (a benchmark's deadline, a shutdown)."""
        self._closed = True
        self._notify()

    def now(self) -> float:
        return self._clock()

    @asynccontextmanager
    async def slot(self, cost_class: str = "") -> AsyncIterator[Slot]:
        """Wait until a request may leave, then hold a concurrency slot for its duration.

        `cost_class` groups requests of like execution cost (a table's key pages, its row
        pages): the governor learns a cost per class."""
        sent_at = await self._acquire(cost_class)
        slot = Slot(self, sent_at)
        try:
            yield slot
        finally:
            self._release_cap()
            if slot.recalled:
                self.core.on_recall(self._clock(), sent_at)
                if self.daily is not None:
                    self.daily.refund()
            else:
                self.core.on_release(self._clock(), sent_at)
            self._notify()
            if self.daily is not None:
                await asyncio.shield(self.daily.maybe_flush())

    async def _acquire(self, cost_class: str) -> float:
        holding = False  # a share of the process-wide cap, taken once this user may send
        try:
            while True:
                if self._closed:
                    raise GovernorClosedError(f"{self.name}: the request governor is closed")
                if self.daily is not None:
                    renew = await self.daily.wait_until()
                    if renew is not None:
                        await self._sleep_until_changed(max(0.1, renew - time.time()))
                        continue
                now = self._clock()
                wake = self.core.decide(now, cost_class)
                if wake is None:
                    if self.request_cap is not None and not holding:
                        waited = self.request_cap.locked()
                        await self.request_cap.acquire()
                        holding = True
                        if waited:
                            continue  # time passed while waiting: decide again, holding it
                    if self.daily is not None:
                        self.daily.spend()
                    sent_at = self.core.on_send(now, cost_class)
                    holding = False  # the slot hands it back
                    return sent_at
                if holding:  # paused or paced after all: others may use the share meanwhile
                    self._release_cap()
                    holding = False
                paused = now < self.core.paused_until
                delay = None if wake == math.inf else max(0.0, wake - now)
                started = self._clock()
                await self._sleep_until_changed(delay)
                if paused:
                    self.waited_on_retry_after += self._clock() - started
        finally:
            if holding:
                self._release_cap()

    def _release_cap(self) -> None:
        if self.request_cap is not None:
            self.request_cap.release()

    async def _sleep_until_changed(self, delay: float | None) -> None:
        event = self._changed
        try:
            async with asyncio.timeout(delay):
                await event.wait()
        except TimeoutError:
            pass

    def _notify(self) -> None:
        # Wake every waiter; each re-asks the core (cheap) and most go back to sleep.
        self._changed.set()
        self._changed = asyncio.Event()

    def observe(
        self,
        status: int,
        headers: Mapping[str, str],
        *,
        error_code: object = None,
        sent_at: float | None = None,
    ) -> float:
        """Feed one response to the core (status, rate headers, throttle code). Returns the
        seconds this response added to the Retry-After pause (0 for most), so the caller can
        charge them to the table whose request drew the 429."""
        observation = observation_from(status, headers, error_code=error_code)
        if self.on_response is not None:
            self.on_response(status)
        now = self._clock()
        paused_before = self.core.stats.paused_seconds
        self.core.observe(observation, now, sent_at)
        added = self.core.stats.paused_seconds - paused_before
        if observation.throttled:
            log.info(
                "user_throttled",
                governor=self.name,
                code=observation.throttle_code,
                retry_after=observation.retry_after,
                concurrency=math.floor(self.core.limit),
            )
        self._notify()
        return added

    def snapshot(self) -> dict[str, Any]:
        """Current concurrency, pause, throttle counts and waits, for status and metrics."""
        data = self.core.snapshot(self._clock())
        data["name"] = self.name
        data["waited_on_retry_after"] = round(self.waited_on_retry_after, 3)
        if self.daily is not None:
            data.update(self.daily.snapshot())
        return data
