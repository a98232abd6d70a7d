"""Record the Retry-After pause of the environment's own requests (store.environment_runs).

The client's tally counts requests sent for no table under the key "" (WhoAmI, N:N discovery,
the metadata refresh). Every tick, and once more when the group stops, what was added there
since the last record becomes one finished `(environment)` run if it holds a 429.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from sync.dataverse.seams import RequestTally
from sync.errors import DvmirrorError, LeaseLostError
from sync.logs import get_logger
from sync.store.environment_runs import record_environment_run

log = get_logger(__name__)
TICK_SECONDS = 2.0
ENVIRONMENT_KEY = ""  # the tally's key for requests of no table


@dataclass
class PauseSpan:
    """What the tally held at the last record. Pure: `take` gives the new part."""

    started_at: datetime
    seen: tuple[int, int, float] = (0, 0, 0.0)

    def take(self, now_figures: tuple[int, int, float]) -> tuple[int, int, float] | None:
        """(requests, 429s, paused seconds) since the last record when it holds a 429 or a
        pause (then the span restarts), else None (the span goes on)."""
        requests, throttled, paused = (a - b for a, b in zip(now_figures, self.seen, strict=True))
        if throttled <= 0 and paused <= 0:
            return None
        self.seen = now_figures
        return int(requests), int(throttled), float(paused)


async def record_span(
    store: AsyncEngine, environment: str, tally: RequestTally, span: PauseSpan, now: datetime
) -> bool:
    found = span.take(tally.of(ENVIRONMENT_KEY))
    if found is None:
        return False
    requests, throttled, paused = found
    await record_environment_run(
        store,
        environment,
        started_at=span.started_at,
        now=now,
        requests=requests,
        throttled=throttled,
        paused_seconds=paused,
    )
    span.started_at = now
    return True


async def run_pause_recorder(
    *,
    store: AsyncEngine,
    environment: str,
    tally: RequestTally,
    stopping: asyncio.Event,
    started_at: datetime,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    tick: float = TICK_SECONDS,
) -> None:
    """Until stopped (then once more); LeaseLostError passes out (the group stops)."""
    span = PauseSpan(started_at)
    while True:
        try:
            await asyncio.wait_for(stopping.wait(), timeout=tick)
            stopped = True
        except TimeoutError:
            stopped = False
        try:
            await record_span(store, environment, tally, span, clock())
        except LeaseLostError:
            raise
        except DvmirrorError as exc:  # the store failed: one line, tried again next tick
            log.warning("environment_run_failed", environment=environment, error=exc.message)
        if stopped:
            return
