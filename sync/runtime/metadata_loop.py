"""The daemon's metadata refresh for one environment (sync.mirror.metadata_refresh).

It runs with the environment's discovery cadence: every `interval`, but at most once per
`MIN_REFRESH_SECONDS` (each refresh costs a few small metadata requests per table), and at once
when a table has a mirror the last refresh did not cover (its first cycle just made it). The
option casts are read at every refresh, the structural answers only when a table's columns change
or hourly (StructureCache). A refresh whose hashes are unchanged writes nothing. A failure is
logged and the previous rows stay; the next refresh is due on the cadence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.tenants import Environment
from sync.errors import DvmirrorError, LeaseLostError
from sync.logs import get_logger
from sync.mirror.discovery import JsonSource
from sync.mirror.metadata_refresh import StructureCache, catalogued, refresh_environment

log = get_logger(__name__)
MIN_REFRESH_SECONDS = 300.0


def refresh_due(
    mirrored: set[str], covered: set[str], last: float | None, now: float, interval: float
) -> bool:
    """Whether to refresh now: a table has a mirror the last refresh did not cover, or the
    last one is `max(interval, MIN_REFRESH_SECONDS)` old. Pure."""
    if not mirrored:
        return False
    if mirrored - covered or last is None:
        return True
    return now - last >= max(interval, MIN_REFRESH_SECONDS)


async def _stopped(stopping: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


async def run_metadata_loop(
    *,
    store: AsyncEngine,
    client: JsonSource,
    environment: Environment,
    tables: Callable[[], Sequence[str]],  # the tables mirrored now (rules are rediscovered)
    stopping: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Refresh until stopped; LeaseLostError passes out (the group stops)."""
    tick = min(environment.interval, MIN_REFRESH_SECONDS)
    covered: set[str] = set()
    cache = StructureCache(clock=clock)
    last: float | None = None
    while not await _stopped(stopping, tick):
        try:
            mirrored = set(await catalogued(store, environment.name, sorted(tables())))
            if not refresh_due(mirrored, covered, last, clock(), environment.interval):
                continue
            # A failed refresh is tried again on the cadence, not at every tick.
            covered, last = mirrored, clock()
            await refresh_environment(
                client,
                store,
                environment=environment.name,
                environment_url=environment.url,
                tables=sorted(mirrored),
                now=datetime.now(UTC),
                cache=cache,
            )
        except LeaseLostError:
            raise
        except DvmirrorError as exc:
            log.warning("metadata_tables_failed", environment=environment.name, error=exc.message)
