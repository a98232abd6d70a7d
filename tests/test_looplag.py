"""The event-loop lag watch: a blocked loop shows up as lag, in the summary and the histogram."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from sync.runtime.looplag import LagSummary, LoopLagWatch
from sync.runtime.metrics import Metrics


def test_summary_counts_worst_quantile_and_slow_samples() -> None:
    """Plain values: the worst, the p99 and how many samples exceeded 50 ms."""
    summary = LagSummary()
    for lag in [0.001] * 98 + [0.06, 0.2]:
        summary.add(lag)
    assert summary.as_dict() == {"samples": 100, "p99_ms": 200.0, "worst_ms": 200.0, "over_50ms": 2}


async def test_a_blocked_loop_is_measured_and_exported() -> None:
    """A callback that blocks the loop for 200 ms is seen as ~200 ms of lag, and the sample
    reaches `dvmirror_event_loop_lag_seconds`."""
    metrics = Metrics(process_metrics=False)
    async with LoopLagWatch(metrics.loop_lag, interval=0.01) as watch:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # the point: a synchronous stall on the loop
        await asyncio.sleep(0.05)
    assert watch.summary.worst >= 0.15
    assert watch.summary.slow >= 1
    text = generate_latest(metrics.registry).decode()
    assert 'dvmirror_event_loop_lag_seconds_bucket{le="0.1"}' in text
    count = next(
        line
        for line in text.splitlines()
        if line.startswith("dvmirror_event_loop_lag_seconds_count")
    )
    assert float(count.split()[-1]) >= 3
