"""`dvmirror bench` on a tiny scenario: it prints every figure, and the governed client has no
violations. (Figures are printed, not asserted: a benchmark is not a timed test.)"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from sync.bench.throttled import run_bench

SCENARIO = Path(__file__).parent / "scenarios" / "bench_tiny.toml"


async def test_bench_prints_figures_for_both_clients() -> None:
    """One row per figure (rows/s, ratio to ceiling, 429s per 1,000, violations) and one column
    per client, within 80 columns; the governed client has no violations."""
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    assert await run_bench(SCENARIO, console=console, duration=3.0, workers=4, log_level=None) == 0
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    header = next(line for line in text.splitlines() if "governed" in line)
    assert "naive" in header
    cells: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.strip("│ ").split("│")]
        if len(parts) == 3:
            cells[parts[0]] = parts[1:]
    for figure in ("rows", "seconds", "rows/s", "ceiling rows/s", "ratio", "429s per 1,000"):
        assert figure in cells
    assert cells["violations"][0] == "0"
    assert int(cells["rows"][0].replace(",", "")) > 0
    assert float(cells["seconds"][0]) >= 3.0
