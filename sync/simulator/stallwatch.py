"""How late the simulator's own clock readings may be, for its Retry-After checks.

A request is stamped when its handler runs, not when its bytes reached the socket: while the
event loop is busy (rendering a large page, or the process is not scheduled on a loaded
machine) requests wait in the kernel and are stamped late. A stamp is therefore only exact to
within the loop's recent stalls. `StallWatch` ticks every few milliseconds and remembers how
late each tick came; `uncertainty(now)` says how much earlier than `now` a request stamped now
may really have arrived. The Retry-After check subtracts it, so a busy simulator never accuses a
client of a departure it cannot prove.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

TICK = 0.005  # seconds between ticks
REMEMBER = 0.5  # seconds of tick history an uncertainty looks back over


class StallWatch:
    """Recent event-loop stalls; pure apart from `run` (tests feed `tick` directly)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_tick: float | None = None
        self._lateness: deque[tuple[float, float]] = deque()  # (tick at, how late it came)

    def tick(self, now: float, expected: float) -> None:
        self._last_tick = now
        self._lateness.append((now, max(0.0, now - expected)))
        while self._lateness and self._lateness[0][0] < now - REMEMBER:
            self._lateness.popleft()

    def uncertainty(self, now: float) -> float:
        """Seconds by which a stamp taken at `now` may be late: the time since the last tick
        (a stall still going on) or the worst recent stall, whichever is more. 0 when not
        running, so a clock-driven test of the limits sees exact stamps."""
        if self._last_tick is None:
            return 0.0
        recent = max((late for at, late in self._lateness if at >= now - REMEMBER), default=0.0)
        return max(now - self._last_tick, recent)

    async def run(self) -> None:
        expected = self._clock()
        while True:
            expected += TICK
            await asyncio.sleep(max(0.0, expected - self._clock()))
            now = self._clock()
            self.tick(now, expected)
            expected = max(expected, now)  # after a stall, tick on from now, not in a burst
