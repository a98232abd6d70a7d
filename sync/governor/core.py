"""The request governor's arithmetic: pure, driven by an injected clock (`now` arguments).

One `GovernorCore` per application user per environment decides *when the next request may
leave*. `decide(now)` applies, in order:

1. **Retry-After pause.** A 429 pauses every request of the user until its Retry-After has
   passed; nothing is sent inside that window (requests already in flight are fine).
2. **Adaptive concurrency (AIMD).** Start small (or at the configured value), jump to
   `x-ms-dop-hint` when it arrives, add one slot per `limit` healthy responses while the limit
   is what holds requests back, halve on a 429. A concurrency 429 (0x80072326) also sets a
   ceiling just below what failed.
3. **Budget pacing.** Dataverse counts, per user and sliding window, requests
   (`x-ms-ratelimit-burst-remaining-xrm-requests`) and execution seconds
   (`x-ms-ratelimit-time-remaining-xrm-requests`, e.g. "1,200.00"). The latest response is the
   *anchor*: the budget now is what it reported, minus what we sent (and still had running)
   since, plus our own requests that have left the window since (sends age by send time,
   execution by finish time). Execution is counted in requests of the learned cost
   (`sync.governor.window.CostEstimate`). When a budget is spent we wait for our oldest counted
   request to age out. Once the window is known, sends are spaced evenly at window ÷ what a
   window allows (the tighter budget), so a steady run sits just under the limit instead of
   spending a window's budget at once and then waiting a window. (The arithmetic:
   `sync.governor.budgets`.)

**The window length is learned** (`window_hint`, 300 s by default, is only the starting
assumption, so a simulator's 10-second window works without configuration). The first
response is a baseline; later, "counted sends since the baseline minus budget consumed since"
is how many of our oldest sends have aged out, which bounds the window from above by
`now - send time`; the bound tightens over `BRACKET_WINDOWS` windows. A requests-429 after
learning means the window is longer than we think (or someone else spends this user's
budget): it grows by half. (An execution-time 429 says nothing about the window.) Before the
window is learned, an exhausted budget is re-checked with single *probe* requests (real
requests, paid from an extra margin) at doubling intervals.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from typing import Any

from sync.dataverse.headers import DEFAULT_RETRY_AFTER
from sync.governor.budgets import (
    aged_out,
    budgets,
    decayed_lesson,
    request_margin,
    requests_per_window,
)
from sync.governor.signals import RateObservation
from sync.governor.window import Anchor, CostEstimate, GovernorStats, SendLog, TimeLog
from sync.limits import CONCURRENT_REQUESTS_PER_USER

INITIAL_CONCURRENCY = 4
RESTART_CONCURRENCY = 1  # after a Retry-After pause, start again from this many in flight
LESSON_SHARE = 0.25  # an execution 429 reserves one more request's cost, up to this share
KEEP_SENDS = 4096  # once learned, keep at least this many recent send times
BRACKET_WINDOWS = 12  # keep tightening the window's upper bound for this many windows


class GovernorCore:
    """Pure decision logic; see the module docstring. Not thread-safe, not async."""

    def __init__(
        self,
        *,
        cap: int = CONCURRENT_REQUESTS_PER_USER,
        initial_concurrency: int | None = None,
        window_hint: float = 300.0,
        margin_fraction: float = 0.02,
        min_margin: int = 2,
        first_probe_delay: float = 0.5,
    ) -> None:
        self.cap = max(1, min(cap, CONCURRENT_REQUESTS_PER_USER))
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
        self._sends = SendLog()
        self._refused = self._sends.refused  # send times of requests answered 429
        self._finishes = TimeLog()  # finish times of counted requests (execution ages from here)
        self._running: list[float] = []  # send times of requests in flight
        self._sent = 0
        self._anchor: Anchor | None = None
        self._baseline: Anchor | None = None
        self._burst_max = 0
        self._time_max = 0.0
        self._costs = CostEstimate()  # execution seconds per request, learned
        self._aging_seen = False
        self._seen_dop = False
        self._seen_429 = False
        self._window_upper = math.inf
        self._bracketing = True
        self._last_refusal = -math.inf
        self._grown_at = -math.inf
        self._classes_running: dict[float, list[str]] = {}  # send time → cost classes
        self._finished_classes: Counter[str] = Counter()  # since the last anchor
        self._threshold = 0.0  # after a pause, slow start (one more per response) below this
        self._lesson = 0.0  # execution seconds held back because earlier 429s said so
        self._lesson_at = -math.inf

    # -- decisions -------------------------------------------------------------------------

    def decide(self, now: float, cost_class: str = "") -> float | None:
        """None: a request may be sent now. Else the time to look again (inf: after a release).

        `cost_class` names the kind of request (e.g. a table's key-only pages or its full row
        pages): while the execution budget is in play and a class's cost is not learned yet,
        its requests go one at a time, so a first full page after a cheap key scan cannot
        send a window's execution budget in one burst.
        """
        if now < self.paused_until:
            return self.paused_until
        if self.in_flight >= max(1, math.floor(self.limit)):
            return math.inf
        if self._unlearned_class_busy(cost_class):
            return math.inf
        budgets = self._budgets(now)
        available = min((available for available, _ in budgets), default=math.inf)
        if available >= 1:
            return self._spaced(now)
        wake = max(next_at for available, next_at in budgets if available < 1)
        if self.in_flight == 0 and (not self.window_learned or wake == math.inf):
            probe_at = self._last_send() + self._probe_delay
            if now >= probe_at:
                return None
            wake = min(wake, probe_at)
        return wake

    def _unlearned_class_busy(self, cost_class: str) -> bool:
        if not self._time_max or self._costs.known(cost_class):
            return False
        return any(cost_class in classes for classes in self._classes_running.values())

    def available(self, now: float) -> float | None:
        """Requests we may still send now under the budget model (None: no data yet)."""
        budgets = self._budgets(now)
        return min(available for available, _ in budgets) if budgets else None

    @property
    def cost(self) -> float | None:
        """Execution seconds of a typical request, as learned from the headers."""
        return self._costs.value

    def _spaced(self, now: float) -> float | None:
        """Space sends evenly at the rate each budget refills: window ÷ what a window allows.

        A sliding window hands budget back at the pace it was spent, so an even rhythm stays
        just under the limit, where a burst would be followed by a window-long wait (and, on
        the server, execution counted from each finish rewards no burst anyway). Only once the
        window is learned: before, its length is a guess.
        """
        per_window = self.requests_per_window
        if not self.window_learned or not per_window:
            return None
        next_at = self._last_send() + self.window / per_window
        return None if now >= next_at else next_at

    @property
    def requests_per_window(self) -> float:
        """How many requests a window allows, as far as we can tell (0: unknown)."""
        return requests_per_window(
            baseline=self._baseline,
            burst_max=self._burst_max,
            margin=self._margin(),
            cost=self._costs.value,
            time_max=self._time_max,
            margin_fraction=self._margin_fraction,
        )

    def _budgets(self, now: float) -> list[tuple[float, float]]:
        """(available requests, when more comes back) for each budget we have data for."""
        if self._anchor is None:
            return []
        return budgets(
            now,
            self._anchor,
            sent=self._sent,
            window=self.window,
            margin=self._margin(),
            baseline=self._baseline,
            burst_max=self._burst_max,
            sends=self._sends,
            finishes=self._finishes,
            cost=self._costs.value,
            time_max=self._time_max,
            time_reserve=self._time_max * self._margin_fraction + self._lesson_now(now),
        )

    # -- events ----------------------------------------------------------------------------

    def on_send(self, now: float, cost_class: str = "") -> float:
        """A request is leaving now; returns its send time (hand it back later)."""
        self._classes_running.setdefault(now, []).append(cost_class)
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
        cost_class = self._pop_class(sent_at)
        index = bisect_left(self._running, sent_at)
        if index < len(self._running) and self._running[index] == sent_at:
            del self._running[index]
        index = bisect_left(self._refused.items, sent_at)
        refused = index < self._refused.total() and self._refused.items[index] == sent_at
        if not refused:
            self._finishes.add(now)
            self._finished_classes[cost_class] += 1
            self._costs.bound(cost_class, now - sent_at)

    def on_recall(self, now: float, sent_at: float) -> None:
        """A granted request did not leave after all (a 429 arrived while it was getting its
        connection): the server never saw it, so it counts nowhere. Call instead of
        `on_release`."""
        self._refused.add(sent_at)  # the model's word for "sent, but not counted"
        self.stats.requests = max(0, self.stats.requests - 1)
        self.stats.recalled += 1
        self.on_release(now, sent_at)

    def _pop_class(self, sent_at: float) -> str:
        classes = self._classes_running.get(sent_at)
        if not classes:
            return ""
        cost_class = classes.pop(0)
        if not classes:
            del self._classes_running[sent_at]
        return cost_class

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
        elif (
            obs.status < 500
            and self.in_flight >= math.floor(self.limit)
            and self._after_last_refusal(now, sent_at)
        ):
            # Grow only while the limit is what holds us back (this response still counts in
            # `in_flight`): pacing-bound runs would otherwise creep past the server's limit.
            # Below the threshold a pause left, one more per response (slow start: doubling
            # each round trip); above it, one more per `limit` responses.
            step = 1.0 if self.limit < self._threshold else 1.0 / self.limit
            self.limit = min(float(min(self.cap, self.ceiling)), self.limit + step)
        if obs.burst_remaining is not None or obs.time_remaining is not None:
            self._learn(obs, now, sent_at)

    def _after_last_refusal(self, now: float, sent_at: float | None) -> bool:
        """A response says something about the window we have now only if it is not inside
        a pause and its request left after the last 429 (older ones were sent at the rate
        that failed)."""
        if now < self.paused_until:
            return False
        return sent_at is None or sent_at > self._last_refusal

    def _on_throttle(self, obs: RateObservation, now: float, sent_at: float) -> None:
        self._seen_429 = True
        kind = obs.throttle_kind
        self.stats.throttled[kind] += 1
        if kind == "concurrency":
            self.ceiling = max(1, self.in_flight - 1)
        elif kind == "requests" and self.window_learned and sent_at > self._grown_at:
            # We paced to the window we learned and still hit a limit: the window is longer
            # than we think (or someone else spends this user's budget). Grow it once per
            # episode, and stop bracketing.
            self.window = min(self.window * 1.5, self._window_max)
            self._bracketing = False
            self._grown_at = now
        if kind == "execution_time" and self._time_max and self.window_learned:
            # Our learned model said the execution budget had room, and it had none: hold back
            # one more request's cost from now on (halved every LESSON_HALF_LIFE windows
            # without such a 429).
            self._lesson = min(
                self._lesson_now(now) + (self._costs.value or 0.0),
                self._time_max * LESSON_SHARE,
            )
            self._lesson_at = now
        # Halve (AIMD), and restart from a small window once the pause is over: the requests
        # that queued during it must not all leave in its first instant.
        if now >= self.paused_until:
            self._threshold = max(1.0, min(self.limit / 2, float(self.ceiling)))
        self.limit = min(float(RESTART_CONCURRENCY), self._threshold)
        until = now + (obs.retry_after if obs.retry_after is not None else DEFAULT_RETRY_AFTER)
        if until > self.paused_until:
            self.stats.paused_seconds += until - max(now, self.paused_until)
            self.paused_until = until

    # -- learning --------------------------------------------------------------------------

    def _learn(self, obs: RateObservation, now: float, sent_at: float | None) -> None:
        anchor = Anchor(
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
        finished, self._finished_classes = self._finished_classes, Counter()
        if previous is not None:
            self._learn_cost(previous, anchor, finished)
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

    def _bracket_window(self, baseline: Anchor, current: Anchor) -> None:
        """Our oldest `aged` counted sends left the window by `current.at`: bound it above."""
        aged = aged_out(baseline, current, in_flight=self.in_flight, sends=self._sends)
        if aged is None:
            return
        upper = current.at - self._sends.nth_counted_time(aged)
        if 0 < upper < self._window_upper:
            self._window_upper = upper
            self.window = upper * 1.005 + 0.02
            self.window_learned = True
        if current.at - baseline.at > BRACKET_WINDOWS * self.window and aged >= 8:
            self._bracketing = False  # precise enough; stop keeping every send

    def _lesson_now(self, now: float) -> float:
        return decayed_lesson(self._lesson, since=self._lesson_at, now=now, window=self.window)

    def _learn_cost(self, previous: Anchor, current: Anchor, finished: Counter[str]) -> None:
        if previous.time_left is None or current.time_left is None:
            return
        used = previous.time_left - current.time_left
        spoiled = current.time_left <= 0  # the header stops at zero: how far past is unknown
        if used < 0:
            self._aging_seen = True  # execution left the window: it can hide drops
            spoiled = True
        elif self.window_learned:
            horizon = (previous.at - self.window * 1.02, current.at - self.window * 0.95)
            spoiled = spoiled or self._finishes.between(*horizon) > 0
        else:
            spoiled = spoiled or self._aging_seen  # cannot tell when execution leaves
        if spoiled:
            self._costs.discard()
        else:
            self._costs.add(used, finished)

    # -- the window model ------------------------------------------------------------------

    def _margin(self) -> int:
        return request_margin(
            min_margin=self._min_margin,
            burst_max=self._burst_max,
            margin_fraction=self._margin_fraction,
            window_learned=self.window_learned,
        )

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
            "recalled": self.stats.recalled,
            "budget_available": None if available is None else math.floor(available),
            "window_seconds": round(self.window, 3),
            "window_learned": self.window_learned,
        }
