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
    recalled: int = 0  # granted, then held back before leaving: a 429 had arrived meanwhile


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
    """Execution seconds per request, per request class, learned from the budget header.

    Between two responses we see how much the reported execution budget dropped and which of
    our requests finished (by class: a key-only page costs a fraction of a full row page, and a
    single blended figure would let a key scan teach that full pages are cheap). A response's
    own execution (and that of requests finishing alongside it) shows up a response or two
    late, so finishes showing no drop are carried into the next pair until a drop appears; then
    (drop, finishes) is one sample. A sample of one class is that class's; a mixed one is split
    in proportion to what each class is thought to cost (a class not yet known takes what the
    known ones leave). Each class's estimate is a ratio of sums over its recent samples.
    `discard` drops what is carried when the picture is spoiled (execution left the window, or
    the header stopped at zero).

    `value` is the cost the budget arithmetic counts every request at: the dearest class seen
    recently, so cheap requests never make the dear ones look affordable.

    Until a class has a sample, its cost is bounded by how long its requests took (`bound`):
    the server's execution of a request is part of the time it took to answer, so the longest
    recent latency is an upper bound. Without it a class whose samples keep being spoiled (the
    window not yet learned and execution seen leaving it, or responses read out of order)
    would stay unknown, and its requests one at a time, for the rest of the run.
    """

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._bounds: dict[str, deque[float]] = {}
        self._carried: Counter[str] = Counter()

    def add(self, used: float, finished: int | Counter[str]) -> None:
        if isinstance(finished, int):
            finished = Counter({"": finished}) if finished > 0 else Counter()
        self._carried.update(finished)
        if used <= 0 or not self._carried:
            return
        for cost_class, (share, count) in self._split(used, self._carried).items():
            samples = self._samples.setdefault(cost_class, deque(maxlen=COST_SAMPLES))
            samples.append((share, count))
        self._carried = Counter()

    def _split(self, used: float, finished: Counter[str]) -> dict[str, tuple[float, int]]:
        if len(finished) == 1:
            ((cost_class, count),) = finished.items()
            return {cost_class: (used, count)}
        known = {c: self._learned(c) for c in finished}  # never a bound: it is only a ceiling
        expected = sum(n * (known[c] or 0.0) for c, n in finished.items())
        unknown = {c: n for c, n in finished.items() if known[c] is None}
        if unknown and expected < used:
            # The unknown classes take what the known ones leave, per request alike.
            left = (used - expected) / sum(unknown.values())
            return {c: ((known[c] or left) * n, n) for c, n in finished.items()}
        if expected <= 0:
            per_request = used / sum(finished.values())
            return {c: (per_request * n, n) for c, n in finished.items()}
        # Scale what each known class is thought to cost so that the sum is what was used;
        # an unknown class beside them learns nothing from this pair.
        scale = used / expected
        return {
            c: ((known[c] or 0.0) * scale * n, n) for c, n in finished.items() if c not in unknown
        }

    def discard(self) -> None:
        self._carried = Counter()

    def bound(self, cost_class: str, seconds: float) -> None:
        """A request of this class took `seconds` to answer: its execution took no longer."""
        if seconds > 0:
            self._bounds.setdefault(cost_class, deque(maxlen=COST_SAMPLES)).append(seconds)

    def of(self, cost_class: str) -> float | None:
        """What one request of this class costs, as far as we know: learned from the samples,
        else at most its longest recent latency (None: no request of it has finished yet)."""
        learned = self._learned(cost_class)
        if learned is not None:
            return learned
        bounds = self._bounds.get(cost_class)
        return max(bounds) if bounds else None

    def _learned(self, cost_class: str) -> float | None:
        samples = self._samples.get(cost_class)
        if not samples:
            return None
        used = sum(sample for sample, _ in samples)
        finished = sum(count for _, count in samples)
        return used / finished if finished and used > 0 else None

    def known(self, cost_class: str) -> bool:
        return self.of(cost_class) is not None

    @property
    def value(self) -> float | None:
        classes = self._samples.keys() | self._bounds.keys()
        costs = [cost for c in classes if (cost := self.of(c)) is not None]
        return max(costs) if costs else None
