"""Start the built-in simulator as a child process and read its ready line (demo, benchmarks)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

READY_TIMEOUT = 60.0
# These make the requests library (under MSAL) ignore the session's CA: keep them out.
CA_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CA_OVERRIDES}


async def start_simulator(
    scenario: str | Path, state_dir: Path
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Run `dvmirror simulate` for `scenario`; return the process and its parsed ready line."""
    log_path = state_dir / "simulator.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sync.simulator.main",
            "--scenario",
            str(scenario),
            "--state-dir",
            str(state_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=child_environment(),
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
    except TimeoutError:
        line = b""
    if not line:
        await stop_simulator(process)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the simulator did not start for scenario {scenario}: {tail[0]}")
    return process, json.loads(line)


async def stop_simulator(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
