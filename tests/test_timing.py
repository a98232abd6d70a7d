"""Pure scheduling arithmetic: jittered intervals and capped exponential backoff."""

from __future__ import annotations

import random

import pytest

from sync.runtime.timing import Timing, backoff_delay, first_delay, next_delay


def test_next_delay_stays_within_jitter() -> None:
    """A cycle restarts within ±10 % of the interval, and not always at the same offset."""
    rng = random.Random(1)
    delays = [next_delay(Timing(interval=300), rng) for _ in range(200)]
    assert min(delays) >= 270 and max(delays) <= 330
    assert len({round(d, 3) for d in delays}) > 100


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [(1, 7.5, 15), (2, 15, 30), (3, 30, 60), (6, 240, 480), (20, 450, 900)],
)
def test_backoff_grows_and_caps(attempts: int, low: float, high: float) -> None:
    """Backoff doubles per consecutive failure and never exceeds the cap."""
    rng = random.Random(attempts)
    for _ in range(50):
        delay = backoff_delay(Timing(interval=60), attempts, rng)
        assert low <= delay <= high


def test_first_delay_spreads_start() -> None:
    """First cycles are spread over a few seconds so many tables do not start at once."""
    rng = random.Random(3)
    delays = [first_delay(rng) for _ in range(100)]
    assert 0 <= min(delays) < 1 and 4 < max(delays) <= 5
