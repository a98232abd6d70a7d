"""The governor's bookkeeping (pure): what responses reported, our own send and finish times,
and the execution cost per request learned from `x-ms-ratelimit-time-remaining-xrm-requests`.

`GovernorCore` (sync.governor.core) turns these into decisions.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections import Counter, deque
from dataclasses import dataclass, field

COST_SAMPLES = 32  # execution-cost pairs kept


@dataclass(frozen=True)
class Anchor:
    """A response's view of the budgets, and our own counters at that moment."""

    at: float
    sent: int
    refused: int
    finished: int
    pending: int  # ours still running (their execution not yet in `time_left`)
    burst: int | None
    time_left: float | None


@dataclass
class GovernorStats:
    """Counters for status and metrics."""

    requests: int = 0
    throttled: Counter[str] = field(default_factory=Counter)
    paused_seconds: float = 0.0
    probes: int = 0


class TimeLog:
    """Non-decreasing timestamps with counting helpers (old entries can be trimmed)."""

    def __init__(self) -> None:
        self.items: list[float] = []
        self.dropped = 0

    def add(self, time: float) -> None:
        insort(self.items, time)

    def upto(self, time: float) -> int:
        return bisect_right(self.items, time)

    def between(self, low: float, high: float) -> int:
        return max(0, self.upto(high) - self.upto(low)) if high > low else 0

    def total(self) -> int:
        return len(self.items)

    def first_after(self, time: float) -> float | None:
        index = self.upto(time)
        return self.items[index] if index < len(self.items) else None

    def trim(self, before: float) -> None:
        drop = bisect_right(self.items, before)
        del self.items[:drop]
        self.dropped += drop


class SendLog(TimeLog):
    """Our send times, and among them those the server refused (429s are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = TimeLog()

    def counted_upto(self, time: float) -> int:
        return self.upto(time) - self.refused.upto(time)

    def counted_between(self, low: float, high: float) -> int:
        return max(0, self.counted_upto(high) - self.counted_upto(low)) if high > low else 0

    def nth_counted_time(self, n: int) -> float:
        """Send time of our n-th counted send still kept (n >= 1)."""
        low, high = 0, len(self.items) - 1
        while low < high:
            mid = (low + high) // 2
            if self.counted_upto(self.items[mid]) >= n:
                high = mid
            else:
                low = mid + 1
        return self.items[low]

    def next_counted_after(self, time: float, window: float) -> float:
        """When the first counted send after `time` leaves a `window`-long window."""
        counted = self.counted_upto(time)
        if counted >= self.counted_upto(math.inf):
            return math.inf
        return self.nth_counted_time(counted + 1) + window


class CostEstimate:
    """Execution seconds per request: budget consumed ÷ requests finished, over recent samples.

    Between two responses we see how much the reported execution budget dropped and how many
    of our requests finished. A response's own execution (and that of requests finishing
    alongside it) shows up a response or two late, so pairs showing no drop are carried into
    the next one until a drop appears; then (drop, finished) is one sample. The estimate is a
    ratio of sums over recent samples. `discard` drops what is carried when the picture is
    spoiled (execution left the window, or the header stopped at zero).
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=COST_SAMPLES)
        self._carried = 0

    def add(self, used: float, finished: int) -> None:
        self._carried += max(0, finished)
        if used > 0 and self._carried:
            self._samples.append((used, self._carried))
            self._carried = 0

    def discard(self) -> None:
        self._carried = 0

    @property
    def value(self) -> float | None:
        used = sum(sample for sample, _ in self._samples)
        finished = sum(count for _, count in self._samples)
        return used / finished if finished else None
