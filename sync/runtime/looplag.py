"""How late the event loop runs its callbacks: the governor reads 429s on this loop, so a loop
blocked for 100 ms reads one 100 ms late, and a request it grants meanwhile can leave inside a
Retry-After window the server already sent.

`LoopLagWatch` wakes every `interval` seconds and records how much later than asked it woke
(`dvmirror_event_loop_lag_seconds`, a histogram, through the `observe` callback), and keeps the
worst and a count of lags over `SLOW` for the log line a command prints when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

INTERVAL = 0.05
SLOW = 0.05  # the bound: a 429 read this late is read too late


@dataclass
class LagSummary:
    """Pure: the samples' count, worst and how many exceeded `SLOW`."""

    samples: int = 0
    worst: float = 0.0
    slow: int = 0
    _sorted: list[float] = field(default_factory=list, repr=False)

    def add(self, lag: float) -> None:
        self.samples += 1
        self.worst = max(self.worst, lag)
        if lag > SLOW:
            self.slow += 1
        if len(self._sorted) < 100_000:
            self._sorted.append(lag)

    def quantile(self, q: float) -> float:
        if not self._sorted:
            return 0.0
        ordered = sorted(self._sorted)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "p99_ms": round(self.quantile(0.99) * 1000, 1),
            "worst_ms": round(self.worst * 1000, 1),
            "over_50ms": self.slow,
        }


class LoopLagWatch:
    """Measures the running loop's lag until stopped (`async with LoopLagWatch(...)`)."""

    def __init__(
        self, observe: Callable[[float], None] | None = None, interval: float = INTERVAL
    ) -> None:
        self.summary = LagSummary()
        self._observe = observe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLagWatch:
        self._task = asyncio.create_task(self._watch(), name="loop-lag")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            lag = max(0.0, loop.time() - asked)
            self.summary.add(lag)
            if self._observe is not None:
                self._observe(lag)
