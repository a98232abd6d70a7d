"""A server-side SVG plot of a table's lag and 429s over the last 24 hours (pure).

The lag at time t is t minus the finish of the last successful run before t (a saw-tooth that
drops at each success); the 429s are summed per hour. The SVG is plain markup with classes
(styled by console.css), so it needs neither JavaScript nor inline styles.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 16, 16, 28
SAMPLES = 96  # one point every 15 minutes
HOURS = 24


def _utc(value: Any) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def lag_series(
    runs: Iterable[Mapping[str, Any]], success_before: dt.datetime | None, now: dt.datetime
) -> list[tuple[dt.datetime, float | None]]:
    """(sample time, lag seconds or None before any success) every 15 minutes over 24 h."""
    successes = sorted(
        t for r in runs if r.get("status") == "ok" and (t := _utc(r.get("finished_at")))
    )
    start = now - dt.timedelta(hours=HOURS)
    last = _utc(success_before)
    out: list[tuple[dt.datetime, float | None]] = []
    index = 0
    for i in range(SAMPLES + 1):
        t = start + (now - start) * (i / SAMPLES)
        while index < len(successes) and successes[index] <= t:
            last = successes[index]
            index += 1
        out.append((t, (t - last).total_seconds() if last else None))
    return out


def throttled_per_hour(runs: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[int]:
    start = now - dt.timedelta(hours=HOURS)
    buckets = [0] * HOURS
    for run in runs:
        started = _utc(run.get("started_at"))
        if started is None or started < start or started > now:
            continue
        slot = min(HOURS - 1, int((started - start).total_seconds() // 3600))
        buckets[slot] += int(run.get("throttled") or 0)
    return buckets


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def plot(
    runs: Sequence[Mapping[str, Any]], success_before: dt.datetime | None, now: dt.datetime
) -> str:
    """The SVG document (a string of trusted markup: every text in it is escaped)."""
    lag = lag_series(runs, success_before, now)
    throttled = throttled_per_hour(runs, now)
    inner_w = WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    max_lag = max([v for _, v in lag if v is not None] or [1.0]) or 1.0
    max_429 = max(throttled) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'class="plot" id="lag-plot" role="img" '
        'aria-label="Lag and 429 responses over the last 24 hours">',
        f'<rect class="plot-frame" x="{PAD_LEFT}" y="{PAD_TOP}" width="{inner_w}" '
        f'height="{inner_h}"/>',
    ]
    bar_w = inner_w / HOURS
    for hour, count in enumerate(throttled):
        if not count:
            continue
        h = inner_h * count / max_429
        x = PAD_LEFT + hour * bar_w
        parts.append(
            f'<rect class="bar-429" x="{x:.1f}" y="{PAD_TOP + inner_h - h:.1f}" '
            f'width="{bar_w - 1:.1f}" height="{h:.1f}"><title>{count} × 429</title></rect>'
        )
    points = []
    for i, (_, value) in enumerate(lag):
        if value is None:
            continue
        x = PAD_LEFT + inner_w * i / SAMPLES
        y = PAD_TOP + inner_h - inner_h * min(value, max_lag) / max_lag
        points.append(f"{x:.1f},{y:.1f}")
    if points:
        parts.append(f'<polyline class="line-lag" points="{" ".join(points)}"/>')
    parts += [
        f'<text class="axis" x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end">'
        f"{escape(_fmt_seconds(max_lag))}</text>",
        f'<text class="axis" x="{PAD_LEFT - 4}" y="{PAD_TOP + inner_h}" text-anchor="end">0</text>',
        f'<text class="axis" x="{PAD_LEFT}" y="{HEIGHT - 8}">-24 h</text>',
        f'<text class="axis" x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 8}" text-anchor="end">now</text>',
        f'<text class="legend-lag" x="{PAD_LEFT + 8}" y="{PAD_TOP + 14}">lag</text>',
        f'<text class="legend-429" x="{PAD_LEFT + 48}" y="{PAD_TOP + 14}">'
        f"429s per hour (max {max(throttled)})</text>",
        "</svg>",
    ]
    return "".join(parts)
