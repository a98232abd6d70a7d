"""Peak RSS of a process backfilling one large table from the simulator (used by bench_pipeline).

The simulator runs as its own process; the backfill runs in a child that reports its own
`ru_maxrss` when done, so neither the simulator nor this process is counted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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
import asyncio, resource, sys
from io import StringIO
from rich.console import Console
from sync.commands.backfill import run_backfill
from sync.config import load_config
code = asyncio.run(run_backfill(load_config(sys.argv[1]), env=None, table=None,
                                console=Console(file=StringIO())))
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure_backfill_rss(rows: int, *, console: Any, timeout: float = 3600) -> float | None:
    """Peak RSS in MB of a backfill of `rows` account rows, or None if it could not run."""
    with tempfile.TemporaryDirectory(prefix="dvmirror-rss-") as tmp:
        state = Path(tmp)
        scenario = state / "scenario.toml"
        scenario.write_text(SCENARIO.replace("{rows}", str(rows)))
        simulator = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "sync.simulator.main",
                "--scenario",
                str(scenario),
                "--state-dir",
                str(state / "sim"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert simulator.stdout is not None
            line = simulator.stdout.readline()
            if not line:
                console.print("peak RSS: the simulator did not start; skipped")
                return None
            ready = json.loads(line)
            child = subprocess.run(  # noqa: S603 - our own interpreter and script
                [sys.executable, "-c", CHILD, ready["config_file"]],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            simulator.send_signal(signal.SIGTERM)
            simulator.wait(30)
    try:
        code, peak_kb = child.stdout.split()[-2:]
    except ValueError:
        console.print(f"peak RSS: the backfill failed: {child.stderr[-500:]}")
        return None
    if code != "0":
        console.print(f"peak RSS: the backfill exited with {code}")
    return int(peak_kb) / 1024
