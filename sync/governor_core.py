"""The request governor's arithmetic: pure, driven by an injected clock (`now` arguments).

One `GovernorCore` per application user per environment decides *when the next request may
leave*. `decide(now)` applies, in order:

1. **Retry-After pause.** A 429 pauses every request of the user until its Retry-After has
   passed; nothing is sent inside that window (requests already in flight are fine).
2. **Adaptive concurrency (AIMD).** Start small (or at the configured value), jump to
   `x-ms-dop-hint` when it arrives, add one slot per `limit` healthy responses, halve on a
   429. A concurrency 429 (0x80072326) also sets a ceiling just below what failed.
3. **Budget pacing.** Dataverse counts, per user and sliding window, requests
   (`x-ms-ratelimit-burst-remaining-xrm-requests`) and execution seconds
   (`x-ms-ratelimit-time-remaining-xrm-requests`). The latest response is the *anchor*:
   the budget now is what it reported, minus what we sent (and still had running) since,
   plus our own requests that have left the window since (sends age by send time, execution
   by finish time). When a budget is spent we wait for our oldest counted request to age
   out; near the limit, sends are spaced evenly (window / requests-per-window), so a steady
   run sits just under the limit instead of bursting into it.

**The window length is learned** (`window_hint`, 300 s by default, is only the starting
assumption, so a simulator's 10-second window works without configuration). The first
response is a baseline; later, "counted sends since the baseline minus budget consumed since"
is how many of our oldest sends have aged out, which bounds the window from above by
`now - send time`. The bound tightens as sends get evenly spaced. A requests-429 after
learning means the window is longer than we think (or someone else spends this user's
budget): it grows by half. Before the window is learned, an exhausted budget is re-checked
with single *probe* requests (real requests, paid from an extra margin) at doubling intervals.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sync.governor_signals import DEFAULT_RETRY_AFTER, RateObservation

CONCURRENCY_LIMIT = 52
INITIAL_CONCURRENCY = 4
UNLEARNED_RESERVE = 6  # extra request margin while the window is unknown: probes come from it
SMOOTH_BELOW = 0.25  # below this fraction of a window's budget left, space sends evenly
KEEP_SENDS = 4096  # once learned, keep at least this many recent send times


@dataclass(frozen=True)
class _Anchor:
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
    requests: int = 0
    throttled: Counter[str] = field(default_factory=Counter)
    paused_seconds: float = 0.0
    probes: int = 0


class _Times:
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

    def trim(self, before: float) -> None:
        drop = bisect_right(self.items, before)
        del self.items[:drop]
        self.dropped += drop


class GovernorCore:
    """Pure decision logic; see the module docstring. Not thread-safe, not async."""

    def __init__(
        self,
        *,
        cap: int = CONCURRENCY_LIMIT,
        initial_concurrency: int | None = None,
        window_hint: float = 300.0,
        margin_fraction: float = 0.02,
        min_margin: int = 2,
        first_probe_delay: float = 0.5,
    ) -> None:
        self.cap = max(1, min(cap, CONCURRENCY_LIMIT))
        self.limit = float(min(self.cap, initial_concurrency or INITIAL_CONCURRENCY))
        self.ceiling = self.cap
        self.window = window_hint
        self.window_learned = False
        self.paused_until = -math.inf
        self.in_flight = 0
        self.stats = GovernorStats()
        self._window_max = max(window_hint, 3600.0)
        self._margin_fraction = margin_fraction
        self._min_margin = min_margin
        self._first_probe_delay = first_probe_delay
        self._probe_delay = first_probe_delay
        self._sends = _Times()
        self._refused = _Times()  # send times of requests answered 429 (not counted upstream)
        self._finishes = _Times()  # finish times of counted requests (execution ages from here)
        self._running: list[float] = []  # send times of requests in flight
        self._sent = 0
        self._anchor: _Anchor | None = None
        self._baseline: _Anchor | None = None
        self._burst_max = 0
        self._time_max = 0.0
        self._cost: float | None = None  # execution seconds per request, learned
        self._seen_dop = False
        self._seen_429 = False
        self._window_upper = math.inf
        self._bracketing = True
        self._last_refusal = -math.inf
        self._grown_at = -math.inf

    # -- decisions -------------------------------------------------------------------------

    def decide(self, now: float) -> float | None:
        """None: a request may be sent now. Else the time to look again (inf: after a release)."""
        if now < self.paused_until:
            return self.paused_until
        if self.in_flight >= max(1, math.floor(self.limit)):
            return math.inf
        budgets = self._budgets(now)
        available = min((available for available, _ in budgets), default=math.inf)
        if available >= 1:
            return self._smooth(now, available)
        wake = max(next_at for available, next_at in budgets if available < 1)
        if self.in_flight == 0 and (not self.window_learned or wake == math.inf):
            probe_at = self._last_send() + self._probe_delay
            if now >= probe_at:
                return None
            wake = min(wake, probe_at)
        return wake

    def available(self, now: float) -> float | None:
        """Requests we may still send now under the budget model (None: no data yet)."""
        budgets = self._budgets(now)
        return min(available for available, _ in budgets) if budgets else None

    @property
    def requests_per_window(self) -> float:
        """How many requests a window allows, as far as we can tell (0: unknown)."""
        estimates: list[float] = []
        base = self._baseline
        if base is not None and base.burst is not None:
            estimates.append(max(self._burst_max, base.burst + base.sent - base.refused))
        if self._cost and self._time_max:
            estimates.append(self._time_max / self._cost)
        return min(estimates) if estimates else 0.0

    def _smooth(self, now: float, available: float) -> float | None:
        per_window = self.requests_per_window
        if not self.window_learned or not per_window or available >= per_window * SMOOTH_BELOW:
            return None
        next_at = self._last_send() + self.window / per_window
        return None if now >= next_at else next_at

    def _budgets(self, now: float) -> list[tuple[float, float]]:
        """(available requests, when more comes back) for each budget we have data for."""
        anchor = self._anchor
        if anchor is None:
            return []
        sent_since = self._sent - anchor.sent
        horizon = now - self.window
        budgets: list[tuple[float, float]] = []
        if anchor.burst is not None:
            floor = self._send_floor(anchor)
            aged = self._counted_between(floor, horizon)
            requests_left = float(anchor.burst - self._margin() - sent_since + aged)
            budgets.append((requests_left, self._next_counted_after(max(floor, horizon))))
        if anchor.time_left is not None and self._cost:
            floor = self._finish_floor(anchor)
            aged = self._finishes.between(floor, horizon)
            reserve = self._time_max * self._margin_fraction
            # The server admits while any execution budget is left, hence the + 1.
            allowance = (anchor.time_left - reserve) / self._cost + 1
            time_budget = allowance - anchor.pending - sent_since + aged
            index = self._finishes.upto(max(floor, horizon))
            next_at = (
                self._finishes.items[index] + self.window
                if index < self._finishes.total()
                else math.inf
            )
            budgets.append((time_budget, next_at))
        return budgets

    # -- events ----------------------------------------------------------------------------

    def on_send(self, now: float) -> float:
        """A request is leaving now; returns its send time (hand it back later)."""
        available = self.available(now)
        if available is not None and available < 1:
            self.stats.probes += 1
            self._probe_delay = min(self._probe_delay * 2, max(self.window / 4, 1.0))
        self._sends.add(now)
        self._sent += 1
        insort(self._running, now)
        self.in_flight += 1
        self.stats.requests += 1
        self._trim(now)
        return now

    def on_release(self, now: float, sent_at: float | None = None) -> None:
        """A request finished (any outcome); `sent_at` as returned by `on_send`."""
        self.in_flight = max(0, self.in_flight - 1)
        if sent_at is None:
            return
        index = bisect_left(self._running, sent_at)
        if index < len(self._running) and self._running[index] == sent_at:
            del self._running[index]
        index = bisect_left(self._refused.items, sent_at)
        refused = index < self._refused.total() and self._refused.items[index] == sent_at
        if not refused:
            self._finishes.add(now)

    def observe(self, obs: RateObservation, now: float, sent_at: float | None = None) -> None:
        """Learn from one response (call before `on_release`, so in_flight still counts it).

        `sent_at` (from `on_send`) lets a refused request be taken out of the model:
        Dataverse does not count a request it answered with 429.
        """
        if obs.throttled:
            self._last_refusal = now
            if sent_at is not None:
                self._refused.add(sent_at)
        if obs.dop_hint and not self._seen_dop:
            self._seen_dop = True
            if not self._seen_429:
                self.limit = max(self.limit, float(min(self.cap, obs.dop_hint)))
        if obs.throttled:
            self._on_throttle(obs, now, now if sent_at is None else sent_at)
        elif obs.status < 500:
            self.limit = min(float(min(self.cap, self.ceiling)), self.limit + 1.0 / self.limit)
        if obs.burst_remaining is not None or obs.time_remaining is not None:
            self._learn(obs, now, sent_at)

    def _on_throttle(self, obs: RateObservation, now: float, sent_at: float) -> None:
        self._seen_429 = True
        kind = obs.throttle_kind
        self.stats.throttled[kind] += 1
        if kind == "concurrency":
            self.ceiling = max(1, self.in_flight - 1)
        elif kind != "unknown" and self.window_learned and sent_at > self._grown_at:
            # We paced to the window we learned and still hit a limit: the window is longer
            # than we think (or someone else spends this user's budget). Grow it once per
            # episode, and stop bracketing.
            self.window = min(self.window * 1.5, self._window_max)
            self._bracketing = False
            self._grown_at = now
        self.limit = max(1.0, min(self.limit / 2, float(self.ceiling)))
        until = now + (obs.retry_after if obs.retry_after is not None else DEFAULT_RETRY_AFTER)
        if until > self.paused_until:
            self.stats.paused_seconds += until - max(now, self.paused_until)
            self.paused_until = until

    # -- learning --------------------------------------------------------------------------

    def _learn(self, obs: RateObservation, now: float, sent_at: float | None) -> None:
        anchor = _Anchor(
            at=now,
            sent=self._sent,
            refused=self._refused.total() + self._refused.dropped,
            finished=self._finishes.total() + self._finishes.dropped,
            pending=self.in_flight,
            burst=obs.burst_remaining,
            time_left=obs.time_remaining,
        )
        previous = self._anchor
        if obs.burst_remaining is not None:
            self._burst_max = max(self._burst_max, obs.burst_remaining)
        if obs.time_remaining is not None:
            self._time_max = max(self._time_max, obs.time_remaining)
        if previous is not None:
            self._learn_cost(previous, anchor)
            if previous.burst is not None and (obs.burst_remaining or 0) > previous.burst:
                self._probe_delay = self._first_probe_delay  # capacity is coming back
        if self._baseline is None and obs.burst_remaining is not None:
            self._baseline = anchor
        elif self._baseline is not None and self._bracketing and self._settled(sent_at):
            self._bracket_window(self._baseline, anchor)
        self._anchor = anchor

    def _settled(self, sent_at: float | None) -> bool:
        """False while requests sent before the last 429 are still out: some may be refused
        too, and until we know, "sent minus refused" overstates what the server counted."""
        pending = bisect_right(self._running, self._last_refusal)
        if sent_at is not None and sent_at <= self._last_refusal:
            pending -= 1
        return pending <= 0

    def _bracket_window(self, baseline: _Anchor, current: _Anchor) -> None:
        """Our oldest `aged` counted sends left the window by `current.at`: bound it above."""
        if baseline.burst is None or current.burst is None:
            return
        counted = (current.sent - current.refused) - (baseline.sent - baseline.refused)
        unsure = max(0, self.in_flight - 1)  # still out: might yet be refused
        aged = counted - (baseline.burst - current.burst) - unsure
        if aged < 1 or aged > self._counted_upto(math.inf):
            return
        upper = current.at - self._nth_counted_time(aged)
        if 0 < upper < self._window_upper:
            self._window_upper = upper
            self.window = upper * 1.02 + 0.05
            self.window_learned = True
        if current.at - baseline.at > 3 * self.window and aged >= 8:
            self._bracketing = False  # precise enough; stop keeping every send

    def _learn_cost(self, previous: _Anchor, current: _Anchor) -> None:
        if previous.time_left is None or current.time_left is None:
            return
        finished = current.finished - previous.finished
        used = previous.time_left - current.time_left
        aging = self._finishes.between(previous.at - self.window, current.at - self.window)
        if finished > 0 and used > 0 and aging == 0:
            sample = used / finished
            self._cost = sample if self._cost is None else 0.8 * self._cost + 0.2 * sample

    # -- the window model ------------------------------------------------------------------

    def _margin(self) -> int:
        margin = max(self._min_margin, math.ceil(self._burst_max * self._margin_fraction))
        return margin if self.window_learned else margin + UNLEARNED_RESERVE

    def _counted_upto(self, time: float) -> int:
        return self._sends.upto(time) - self._refused.upto(time)

    def _counted_between(self, low: float, high: float) -> int:
        return max(0, self._counted_upto(high) - self._counted_upto(low)) if high > low else 0

    def _nth_counted_time(self, n: int) -> float:
        """Send time of our n-th counted send still kept (n >= 1)."""
        items = self._sends.items
        low, high = 0, len(items) - 1
        while low < high:
            mid = (low + high) // 2
            if self._counted_upto(items[mid]) >= n:
                high = mid
            else:
                low = mid + 1
        return items[low]

    def _next_counted_after(self, time: float) -> float:
        counted = self._counted_upto(time)
        if counted >= self._counted_upto(math.inf):
            return math.inf
        return self._nth_counted_time(counted + 1) + self.window

    def _send_floor(self, anchor: _Anchor) -> float:
        """Our sends after this time were still in the server's window at the anchor.

        Bounded by the window length and by the limit: with `per_window` allowed and `burst`
        left, only our last `per_window - burst` counted sends were inside. Without the second
        bound an over-estimated window would count again, as "leaving later", sends the server
        had already dropped before the anchor.
        """
        floor = anchor.at - self.window
        base = self._baseline
        if base is not None and base.burst is not None and anchor.burst is not None:
            limit = max(self._burst_max, base.burst + base.sent - base.refused)
            inside = max(0, limit - anchor.burst)
            counted = self._counted_upto(anchor.at)
            if inside == 0 and counted:
                floor = max(floor, self._nth_counted_time(counted))
            elif inside < counted:
                oldest = self._nth_counted_time(counted - inside + 1)
                floor = max(floor, math.nextafter(oldest, -math.inf))
        return floor

    def _finish_floor(self, anchor: _Anchor) -> float:
        """Like `_send_floor`, for execution time (which ages from each request's finish)."""
        floor = anchor.at - self.window
        if self._cost and anchor.time_left is not None:
            inside = max(0, round((self._time_max - anchor.time_left) / self._cost))
            finished = self._finishes.upto(anchor.at)
            if inside == 0 and finished:
                floor = max(floor, self._finishes.items[finished - 1])
            elif inside < finished:
                oldest = self._finishes.items[finished - inside]
                floor = max(floor, math.nextafter(oldest, -math.inf))
        return floor

    def _last_send(self) -> float:
        return self._sends.items[-1] if self._sends.items else -math.inf

    def _trim(self, now: float) -> None:
        # Bracketing counts sends from the very first one; afterwards only the window matters.
        if self._bracketing or self._sends.total() < KEEP_SENDS:
            return
        before = now - 2 * self.window
        self._sends.trim(before)
        self._refused.trim(before)
        self._finishes.trim(before)

    def snapshot(self, now: float) -> dict[str, Any]:
        """Numbers for `dvmirror status` and /metrics."""
        available = self.available(now)
        return {
            "concurrency_limit": max(1, math.floor(self.limit)),
            "concurrency_ceiling": self.ceiling,
            "in_flight": self.in_flight,
            "paused_for": round(max(0.0, self.paused_until - now), 3),
            "requests": self.stats.requests,
            "throttled": dict(self.stats.throttled),
            "paused_seconds_total": round(self.stats.paused_seconds, 3),
            "probes": self.stats.probes,
            "budget_available": None if available is None else math.floor(available),
            "window_seconds": round(self.window, 3),
            "window_learned": self.window_learned,
        }
