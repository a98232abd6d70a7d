"""Verify tried as a new user would, on the demo's mirror: `dvmirror demo --console` (a
subprocess) keeps the simulator and the daemon up and prints what to type; `dvmirror verify
--exact` with the printed configuration says "all tables match" with figures; after `DELETE FROM`
five mirror rows, `verify --repair` hands the table to the daemon as a resync, and `verify
--exact` then matches with the five rows back."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from tests.cli import clean_env, run_cli
from tests.daemonproc import wait_until
from tests.simfixtures import _no_ca_env  # noqa: F401
from tests.test_demo_console import DEMO, read_until

pytestmark = [
    pytest.mark.usefixtures("no_ca_env"),
    pytest.mark.slow,
    pytest.mark.long,  # the demo alone takes most of a minute
    pytest.mark.timeout(420),
]


def resync_done(config: str) -> bool:
    report = json.loads(run_cli("--config", config, "status", "--json").stdout)
    states = [r["state"] for r in report["resync_requests"] if r["table"] == "account"]
    assert "failed" not in states, report["resync_requests"]
    return bool(states) and states[-1] == "done"


def test_verify_on_the_demos_mirror_matches_and_repair_brings_deleted_rows_back(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "demo"
    with subprocess.Popen(
        [*DEMO, "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"COLUMNS": "250"}),
    ) as process:
        try:
            printed = read_until(process, r"Press Ctrl-C to stop", 240)
            hint = re.search(r"dvmirror --config (\S+) verify --exact", printed)
            assert hint, printed[-3000:]
            config = hint.group(1)
            database = re.search(r"`DELETE FROM (\w+) WHERE rowid <= 5` in (\S+) and", printed)
            assert database, printed[-3000:]
            table, path = database.group(1), Path(database.group(2))

            exact = run_cli("--config", config, "verify", "--exact", timeout=300)
            assert exact.returncode == 0, exact.stdout + exact.stderr
            assert re.search(r"all tables match \(\d+ tables, [\d,]+ rows\)", exact.stdout)
            assert re.search(
                rf"{table.replace('__', '/')}: match: [\d,]+ mirror rows, \d+ key range\(s\) "
                r"counted exactly, keys and versions compared; key/version pages [\d,]+ B/row",
                exact.stdout,
            ), exact.stdout

            with closing(sqlite3.connect(path, timeout=30)) as conn, conn:
                gone = {
                    r[0]
                    for r in conn.execute(
                        f"DELETE FROM {table} WHERE rowid <= 5 RETURNING accountid"
                    )
                }
            assert len(gone) == 5
            environment = table.split("__")[0]
            repair = run_cli(
                "--config", config, "verify", "--repair", "--env", environment,
                "--table", "account", timeout=300,
            )  # fmt: skip
            assert repair.returncode == 1, repair.stdout + repair.stderr  # handed over, not yet
            assert re.search(
                rf"{environment}/account: \d+ rows differ; queued resync #", repair.stdout
            )
            wait_until(lambda: resync_done(config), timeout=120, what="the daemon's resync")
            again = run_cli(
                "--config", config, "verify", "--exact", "--env", environment,
                "--table", "account", timeout=300,
            )  # fmt: skip
            assert again.returncode == 0, again.stdout + again.stderr
            assert "all tables match (1 table," in again.stdout
            with closing(sqlite3.connect(path, timeout=30)) as conn:
                keys = {r[0] for r in conn.execute(f"SELECT accountid FROM {table}")}
            assert gone <= keys  # the demo churns no more while it serves the console

            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert code == 0, process.stderr.read()[-3000:] if process.stderr else code
