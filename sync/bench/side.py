"""One column of `dvmirror bench`'s table: a plain reader or dvmirror on one part."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sync.bench.child import ChildRun
from sync.bench.world import Part

SQLITE, POSTGRESQL = "SQLite", "PostgreSQL"


@dataclass
class Side:
    """One column of the table: a reader or dvmirror on one part."""

    part: Part
    name: str
    rows: int = 0
    seconds: float = 0.0
    # From the side's first request to its end, the same for both sides: from the first
    # arrival the simulator recorded for its user (CLOCK_MONOTONIC is one clock for every
    # process of the machine; discovery included) to the reader's last page or dvmirror's
    # exit, so dvmirror's command without its start-up (interpreter, imports, migrations).
    active_seconds: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    # CPU seconds on the client side: the reader's (token, discovery, pages: this process)
    # or dvmirror's command and decode worker (user + system).
    cpu_seconds: float | None = None
    reference: Side | None = None
    store: str = ""  # dvmirror's sides: SQLite or PostgreSQL
    baseline: Side | None = None  # the PostgreSQL side's SQLite side
    child: ChildRun | None = None
    check: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def active_rate(self) -> float:
        active = self.seconds if self.active_seconds is None else self.active_seconds
        return self.rows / active if active else 0.0

    @property
    def violations(self) -> int:
        return int(self.stats.get("violations", 0))

    @property
    def strict_violations(self) -> int:
        """Requests that arrived inside a Retry-After window more than 50 ms after its 429 was
        sent (sync.simulator.protection.departures_inside)."""
        return int(self.stats.get("strict_violations", 0))


def throttled_share(side: Side) -> str:
    requests = int(side.stats.get("requests", 0))
    throttled = int(side.stats.get("throttled_total", 0))
    return f"{throttled / requests:.1%}" if requests else "n/a"
