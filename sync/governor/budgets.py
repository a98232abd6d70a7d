"""The budget model's arithmetic (pure): what each budget has left, and which requests still count.

`GovernorCore` (sync.governor.core) holds the state and passes it in; nothing here keeps any.
Sends age out of the requests budget by send time, execution out of the time budget by finish
time; both are bounded by the window length and by what the latest response (the anchor)
reported, so an over-estimated window cannot count a dropped request twice.
"""

from __future__ import annotations

import math

from sync.governor.window import Anchor, SendLog, TimeLog

LESSON_HALF_LIFE = 4  # windows without an execution 429 that halve what was held back
UNLEARNED_RESERVE = 6  # extra request margin while the window is unknown: probes come from it


def request_margin(
    *, min_margin: int, burst_max: int, margin_fraction: float, window_learned: bool
) -> int:
    """Requests kept back from the requests budget."""
    margin = max(min_margin, math.ceil(burst_max * margin_fraction))
    return margin if window_learned else margin + UNLEARNED_RESERVE


def requests_per_window(
    *,
    baseline: Anchor | None,
    burst_max: int,
    margin: int,
    cost: float | None,
    time_max: float,
    margin_fraction: float,
) -> float:
    """How many requests a window allows, as far as we can tell (0: unknown)."""
    estimates: list[float] = []
    if baseline is not None and baseline.burst is not None:
        limit = max(burst_max, baseline.burst + baseline.sent - baseline.refused)
        estimates.append(limit - margin)
    if cost and time_max:
        estimates.append(time_max * (1 - margin_fraction) / cost)
    return max(1.0, min(estimates)) if estimates else 0.0


def budgets(
    now: float,
    anchor: Anchor,
    *,
    sent: int,
    window: float,
    margin: int,
    baseline: Anchor | None,
    burst_max: int,
    sends: SendLog,
    finishes: TimeLog,
    cost: float | None,
    time_max: float,
    time_reserve: float,
) -> list[tuple[float, float]]:
    """(available requests, when more comes back) for each budget the anchor reported."""
    sent_since = sent - anchor.sent
    horizon = now - window
    result: list[tuple[float, float]] = []
    if anchor.burst is not None:
        floor = send_floor(
            anchor, window=window, baseline=baseline, burst_max=burst_max, sends=sends
        )
        aged = sends.counted_between(floor, horizon)
        requests_left = float(anchor.burst - margin - sent_since + aged)
        result.append((requests_left, sends.next_counted_after(max(floor, horizon), window)))
    if anchor.time_left is not None and cost:
        floor = finish_floor(anchor, window=window, cost=cost, time_max=time_max, finishes=finishes)
        aged = finishes.between(floor, horizon)
        # The server admits while any execution budget is left, hence the + 1.
        allowance = (anchor.time_left - time_reserve) / cost + 1
        time_budget = allowance - anchor.pending - sent_since + aged
        index = finishes.upto(max(floor, horizon))
        next_at = finishes.items[index] + window if index < finishes.total() else math.inf
        result.append((time_budget, next_at))
    return result


def send_floor(
    anchor: Anchor, *, window: float, baseline: Anchor | None, burst_max: int, sends: SendLog
) -> float:
    """Our sends after this time were still in the server's window at the anchor.

    Bounded by the window length and by the limit: with `per_window` allowed and `burst`
    left, only our last `per_window - burst` counted sends were inside. Without the second
    bound an over-estimated window would count again, as "leaving later", sends the server
    had already dropped before the anchor.
    """
    floor = anchor.at - window
    if baseline is not None and baseline.burst is not None and anchor.burst is not None:
        limit = max(burst_max, baseline.burst + baseline.sent - baseline.refused)
        inside = max(0, limit - anchor.burst)
        # Sends made right after the anchor, at the same instant, were not inside it.
        counted = min(
            sends.counted_upto(anchor.at),
            (anchor.sent - sends.dropped) - (anchor.refused - sends.refused.dropped),
        )
        if inside == 0 and counted:
            floor = max(floor, sends.nth_counted_time(counted))
        elif inside < counted:
            oldest = sends.nth_counted_time(counted - inside + 1)
            floor = max(floor, math.nextafter(oldest, -math.inf))
    return floor


def finish_floor(
    anchor: Anchor, *, window: float, cost: float | None, time_max: float, finishes: TimeLog
) -> float:
    """Like `send_floor`, for execution time (which ages from each request's finish)."""
    floor = anchor.at - window
    if cost and anchor.time_left is not None:
        inside = max(0, round((time_max - anchor.time_left) / cost))
        finished = min(finishes.upto(anchor.at), anchor.finished - finishes.dropped)
        if inside == 0 and finished:
            floor = max(floor, finishes.items[finished - 1])
        elif inside < finished:
            oldest = finishes.items[finished - inside]
            floor = max(floor, math.nextafter(oldest, -math.inf))
    return floor


def aged_out(baseline: Anchor, current: Anchor, *, in_flight: int, sends: SendLog) -> int | None:
    """How many of our oldest counted sends left the window between two anchors (None: unsure).

    Counted sends since the baseline minus budget consumed since is how many aged out; requests
    still out (other than the one answering) might yet be refused, so they are not counted.
    """
    if baseline.burst is None or current.burst is None:
        return None
    counted = (current.sent - current.refused) - (baseline.sent - baseline.refused)
    unsure = max(0, in_flight - 1)  # still out: might yet be refused
    aged = counted - (baseline.burst - current.burst) - unsure
    if aged < 1 or aged > sends.counted_upto(math.inf):
        return None
    return aged


def decayed_lesson(lesson: float, *, since: float, now: float, window: float) -> float:
    """Execution seconds still held back after an execution 429: halved every half-life."""
    if not lesson:
        return 0.0
    windows = max(0.0, now - since) / max(LESSON_HALF_LIFE * window, 1e-9)
    return lesson * 0.5 ** math.floor(windows)
