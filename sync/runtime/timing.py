"""When each table runs next: intervals with jitter, and backoff for parked work. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass

JITTER_FRACTION = 0.1  # ±10 % of the interval, so tenants configured alike do not fire together
FIRST_RUN_SPREAD = 5.0  # seconds over which the first cycles of many tables are spread
BACKOFF_BASE = 15.0
BACKOFF_CAP = 900.0


@dataclass(frozen=True)
class Timing:
    interval: float
    jitter_fraction: float = JITTER_FRACTION
    backoff_base: float = BACKOFF_BASE
    backoff_cap: float = BACKOFF_CAP


def first_delay(rng: random.Random, spread: float = FIRST_RUN_SPREAD) -> float:
    """A small random delay before a table's first cycle after start or reload."""
    return rng.uniform(0.0, spread)


def next_delay(timing: Timing, rng: random.Random) -> float:
    """Seconds from the end of a successful cycle to the start of the next one."""
    jitter = timing.interval * timing.jitter_fraction
    return max(0.0, timing.interval + rng.uniform(-jitter, jitter))


def backoff_delay(timing: Timing, attempts: int, rng: random.Random) -> float:
    """Seconds a parked table or environment waits before trying again (full jitter, capped).

    Never shorter than half the interval cap allows, never longer than the cap, and growing
    with consecutive failures so a broken tenant does not hammer Entra or Dataverse.
    """
    ceiling = min(timing.backoff_cap, timing.backoff_base * (2 ** max(0, attempts - 1)))
    return rng.uniform(ceiling / 2, ceiling)
