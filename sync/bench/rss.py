"""Peak RSS of a process backfilling one large table from the simulator (used by bench_pipeline).

The simulator runs as its own process; the backfill runs in a child that reports its own peak
when done, so neither the simulator nor this process is counted, and the peak of its decode
worker (read by sync.mirror.decode_workers when it stops the worker). Both are the kernel's
VmHWM, not `ru_maxrss`, which inherits the spawning process's memory (this bench process, large
after the pipeline measurement). The two peaks need not coincide, so their sum is an upper bound
of the process tree's peak.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.simulator.process import start_simulator, stop_simulator

SCENARIO = """seed = 3
token_lifetime = 3600
[[apps]]
client_id = "11111111-1111-1111-1111-111111111111"
credential = "secret"
home_tenant = "contoso"
[[tenants]]
name = "contoso"
tenant_id = "aaaaaaaa-0000-0000-0000-000000000001"
domain = "contoso.onmicrosoft.com"
[[tenants.environments]]
name = "bench_env"
application_users = ["11111111-1111-1111-1111-111111111111"]
[tenants.environments.limits]
requests = 1000000
execution_seconds = 1000000
base_ms = 0
per_row_ms = 0.0
[[tenants.environments.tables]]
name = "account"
rows = {rows}
"""

CHILD = """
import asyncio, os, resource, sys
from io import StringIO
from rich.console import Console
from sync.commands.backfill import run_backfill
from sync.config.loading import load_config
from structlog.testing import capture_logs
from sync.mirror.decode_workers import peak_rss_mb
with capture_logs() as logs:  # the Wiring's decode pool logs its workers' peak when it stops
    code = asyncio.run(run_backfill(load_config(sys.argv[1]), env=None, table=None,
                                    console=Console(file=StringIO())))
workers_mb = max([e["worker_peak_mb"] for e in logs if e["event"] == "decode_pool_stopped"] or [0])
own_kb = round(peak_rss_mb(os.getpid()) * 1024)
print(code, own_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      round(workers_mb * 1024))
"""


@dataclass(frozen=True)
class BackfillRss:
    """Peak RSS in MB of the backfilling process and of its largest child (the decode worker)."""

    parent_mb: float
    workers_mb: float

    @property
    def total_mb(self) -> float:
        """An upper bound of the process tree's peak (both peaks added)."""
        return self.parent_mb + self.workers_mb


async def _backfill_beside_simulator(
    scenario: Path, state_dir: Path, child_timeout: float
) -> subprocess.CompletedProcess[str]:
    """Start the simulator, run the measuring child against it, stop the simulator."""
    process, ready = await start_simulator(scenario, state_dir)
    try:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CHILD, ready["config_file"]],
            capture_output=True,
            text=True,
            timeout=child_timeout,
            check=False,
        )
    finally:
        await stop_simulator(process)


def measure_backfill_rss(rows: int, *, console: Any, timeout: float = 3600) -> BackfillRss | None:
    """Peak RSS of a backfill of `rows` account rows, or None if it could not run."""
    with tempfile.TemporaryDirectory(prefix="dvmirror-rss-") as tmp:
        state = Path(tmp)
        scenario = state / "scenario.toml"
        scenario.write_text(SCENARIO.replace("{rows}", str(rows)))
        try:
            child = asyncio.run(_backfill_beside_simulator(scenario, state / "sim", timeout))
        except RuntimeError as exc:  # the simulator did not start
            console.print(f"peak RSS: skipped ({exc})")
            return None
    try:
        code, peak_kb, children_kb = child.stdout.split()[-3:]
    except ValueError:
        console.print(f"peak RSS: the backfill failed: {child.stderr[-500:]}")
        return None
    if code != "0":
        console.print(f"peak RSS: the backfill exited with {code}")
    return BackfillRss(int(peak_kb) / 1024, int(children_kb) / 1024)
