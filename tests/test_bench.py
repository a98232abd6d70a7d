"""`dvmirror bench` on a tiny scenario: it prints every figure, and the governed client has no
violations. (Figures are printed, not asserted: a benchmark is not a timed test.)"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from sync.bench import run_bench

SCENARIO = Path(__file__).parent / "scenarios" / "bench_tiny.toml"


async def test_bench_prints_figures_for_both_clients() -> None:
    """Both rows appear with rows/s, ratio to ceiling, 429s per 1,000 and violations (0)."""
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    assert await run_bench(SCENARIO, console=console, duration=3.0, workers=4) == 0
    text = out.getvalue()
    for heading in ("rows/s", "ceiling rows/s", "ratio", "429s per 1,000", "violations"):
        assert heading in text
    governed = next(line for line in text.splitlines() if "governed" in line)
    assert governed.rstrip(" │").split("│")[-1].strip() == "0"
    assert "naive" in text
