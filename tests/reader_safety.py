"""Drive tests/reader_stress.py: the writer process (daemon), reader processes and resyncs.

`stress()` starts the writer on a fresh mirror of the reader_safety scenario, waits for the
first sync, starts the readers, then queues `dvmirror resync --all` (a CLI process: another
connection that opens and closes) and waits for each to finish, `resyncs` times, with source
churn in between when asked; then it stops everyone and returns what the readers saw.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cli import clean_env, run_cli
from tests.daemonproc import REPO, EnvSpec, admin_post, sync_states, wait_until, write_config
from tests.mirror_compare import differences

SCENARIO = Path(__file__).parent / "scenarios" / "reader_safety.toml"
ENV = "read_env"
TABLES = ("account", "contact")


@dataclass
class StressResult:
    readers: list[dict[str, Any]] = field(default_factory=list)
    resyncs: int = 0
    integrity: str = ""
    differences: list[str] = field(default_factory=list)
    writer_exit: int | None = None

    @property
    def errors(self) -> list[str]:
        return [e for r in self.readers for e in r["errors"]]

    @property
    def wal_missing(self) -> int:
        return sum(int(r["wal_missing"]) for r in self.readers)

    @property
    def iterations(self) -> int:
        return sum(int(r["iterations"]) for r in self.readers)


def _python(*args: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reader_stress", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=clean_env({"PYTHONPATH": str(REPO)}),
        cwd=REPO,
    )


def _request_state(db: Path, request_id: int) -> str | None:
    with sqlite3.connect(db, timeout=30) as conn:
        row = conn.execute("SELECT state FROM dv_resync_requests WHERE id = ?", (request_id,))
        found = row.fetchone()
    return None if found is None else str(found[0])


def _resync(config: Path, db: Path, writer: subprocess.Popen[bytes]) -> None:
    """Queue a resync of every table and wait until other processes see it done (seconds,
    normally)."""
    queued = run_cli("--config", config, "resync", "--env", ENV, "--all")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    request_id = int(queued.stdout.split("#", 1)[1].split(":", 1)[0])

    def ended() -> str | None:
        assert writer.poll() is None, f"the writer exited ({writer.returncode})"
        state = _request_state(db, request_id)
        return state if state in ("done", "failed") else None

    state = wait_until(
        ended,
        timeout=45,
        every=0.2,
        what=f"resync #{request_id}",
    )
    assert state == "done", state


def stress(
    sim: Mapping[str, Any],
    directory: Path,
    *,
    modes: tuple[str, ...] = ("checks", "long"),
    resyncs: int = 2,
    second_engine: bool = True,
    churn: bool = False,
    budget: float = 600.0,
) -> StressResult:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(sim, directory, {ENV: EnvSpec(TABLES, page_size=250, interval="1s")})
    db = directory / "mirror.db"
    log_path = directory / "writer.log"
    result = StressResult()
    with log_path.open("wb") as log:
        writer = _python(
            "writer", str(config), *(["--second-engine"] if second_engine else []), stderr=log
        )
    readers: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        wait_until(
            lambda: (
                writer.poll() is None
                and len([s for s in sync_states(db).values() if s.get("last_success")]) == 2
            ),
            timeout=120,
            what="the first sync of both tables",
        )
        for number, mode in enumerate(modes):
            out = directory / f"reader{number}.json"
            readers.append((_python("reader", str(db), "--out", str(out), "--mode", mode), out))
        deadline = time.monotonic() + budget
        while result.resyncs < resyncs and time.monotonic() < deadline:
            if churn:
                for table in TABLES:
                    admin_post(
                        sim,
                        f"/environments/{ENV}/tables/{table}/churn",
                        {"creates": 20, "updates": 40, "deletes": 5, "seed": result.resyncs},
                    )
            _resync(config, db, writer)
            result.resyncs += 1
    finally:
        for _, out in readers:
            out.with_name(out.name + ".stop").touch()
        for process, out in readers:
            process.wait(120)
            if out.exists():
                result.readers.append(json.loads(out.read_text()))
        if writer.poll() is None:
            writer.send_signal(signal.SIGTERM)
        result.writer_exit = writer.wait(120)
    with sqlite3.connect(db) as conn:
        result.integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    if not churn:  # churn may still be on its way to the mirror
        for table in TABLES:
            result.differences += differences(sim, db, ENV, table)
    return result
