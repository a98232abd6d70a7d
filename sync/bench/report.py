"""`dvmirror bench`'s table and notes: one row per figure, one column per side."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from sync.bench.side import Side, throttled_share
from sync.bench.world import World

NOTES = (
    "seconds: the plain reader's from its first page request to its last page (its columns were "
    "discovered beforehand); dvmirror's for the whole command, start-up included.",
    "from the first request: both sides timed alike, from the first request the simulator saw "
    "from that user (discovery included) to the end (the reader's last page, dvmirror's exit), "
    "so without dvmirror's start-up (interpreter, imports, migrations, token).",
    "client CPU seconds: user + system, the reader's whole read (token, discovery, pages) in "
    "the bench process, dvmirror's whole command and decode worker; less sensitive to other "
    "load on the machine than the seconds.",
    "ceiling: what the limits allow a sustained read of full pages; a read shorter than the "
    "window can burst above it.",
)
PG_NOTE = (
    "PostgreSQL ÷ SQLite: rows/s of `dvmirror backfill` into a fresh PostgreSQL database over "
    "rows/s of the same command into a fresh SQLite file, same tables, same limits, own users."
)


def render(world: World, sides: list[Side]) -> Table:
    """One row per figure, one column per side."""
    table = Table(title=f"dvmirror bench --scenario {world.name} (rows scale {world.scale:g})")
    table.add_column("figure")
    for side in sides:
        table.add_column(f"{side.part.title}\n{side.name}", justify="right")

    def ratio(side: Side) -> str:
        if side.reference is None:
            return "reference"
        reference = side.reference.rate
        return f"{side.rate / reference:.2f}" if reference else "n/a"

    def active_ratio(side: Side) -> str:
        if side.reference is None:
            return "reference"
        reference = side.reference.active_rate
        return f"{side.active_rate / reference:.2f}" if reference else "n/a"

    def cpu(side: Side) -> str:
        return "n/a" if side.cpu_seconds is None else f"{side.cpu_seconds:.1f}"

    def active(side: Side) -> str:
        return "n/a" if side.active_seconds is None else f"{side.active_seconds:.1f}"

    def store_ratio(side: Side) -> str:
        if side.baseline is None:
            return "reference" if any(s.baseline is side for s in sides) else "—"
        baseline = side.baseline.rate
        return f"{side.rate / baseline:.2f}" if baseline else "n/a"

    def ceiling(side: Side) -> float:
        return side.part.limits.ceiling_rows_per_second(world.page_size)

    def rss(side: Side) -> str:
        child = side.child
        if child is None:
            return "—"
        if child.total_mb is None or child.own_mb is None or child.descendants_mb is None:
            return "n/a"
        return f"{child.total_mb:.0f} MB ({child.own_mb:.0f} + {child.descendants_mb:.0f} worker)"

    figures: list[tuple[str, Callable[[Side], str]]] = [
        ("rows", lambda s: f"{s.rows:,}"),
        ("seconds", lambda s: f"{s.seconds:.1f}"),
        ("rows/s", lambda s: f"{s.rate:,.0f}"),
        ("ratio to reference", ratio),
        ("seconds from the first request", active),
        ("ratio from the first request", active_ratio),
        ("client CPU seconds", cpu),
    ]
    if any(side.baseline is not None for side in sides):
        figures.append(("PostgreSQL ÷ SQLite", store_ratio))
    figures += [
        ("ceiling rows/s (full pages)", lambda s: f"{ceiling(s):,.0f}"),
        ("share of ceiling", lambda s: f"{s.rate / ceiling(s):.2f}" if ceiling(s) else "n/a"),
        ("requests", lambda s: f"{s.stats.get('requests', 0):,}"),
        ("peak concurrent requests", lambda s: f"{s.stats.get('max_concurrency', 0)}"),
        ("429s", lambda s: f"{s.stats.get('throttled_total', 0):,}"),
        ("429 share of requests", throttled_share),
        ("Retry-After violations", lambda s: f"{s.violations}"),
        ("… strict (arrived > 50 ms after a 429)", lambda s: f"{s.strict_violations}"),
        ("peak RSS", rss),
        ("data", lambda s: s.check),
    ]
    for label, show in figures:
        table.add_row(label, *(show(side) for side in sides))
    return table
