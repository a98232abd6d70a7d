"""The commit-ordered feed read while the daemon resyncs a table (not only while it backfills):
`dvmirror run` (a subprocess) against the simulator over HTTPS, on a SQLite file and on
PostgreSQL, the table read as 8 key ranges at once while its source keeps changing.

Two downstream readers poll throughout, as the README tells data teams to: one with SQL
(`max(seq)` from dv_commits, then the rows and `_dv_deletions` in `(last, max]`), one with
`dvmirror feed --since <last> --format jsonl`. The mirror is damaged by hand before the resync
(rows deleted, versions rolled back, ghosts inserted: nothing a feed can see), so the resync
itself writes numbered changes besides the churn's. At the end both readers' copies equal the
source, key by key and version by version.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import Churning, DaemonProcess, EnvSpec, wait_until, write_config
from tests.mirror_compare import (
    _store_url,  # noqa: F401
    database_of,
    differences,
    query,
    source_rows,
)
from tests.simfixtures import _no_ca_env, running_simulator  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow, pytest.mark.timeout(300)]
SCENARIO = Path(__file__).parent / "scenarios" / "feed_resync.toml"
ENV, TABLE = "feed_env", "account"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-feed")) as ready:
        yield ready


def mirror_ref(store_url: str) -> str:
    return f'"{ENV}"."{TABLE}"' if store_url.startswith("postgresql") else f'"{ENV}__{TABLE}"'


@dataclass
class SqlReader:
    """A downstream load by SQL: `M = max(seq)`, then `(last, M]`, applied in number order."""

    database: Path | str
    ref: str
    last: int = 0
    copy: dict[str, int] = field(default_factory=dict)

    def first_load(self) -> None:
        (newest,) = query(
            self.database,
            "SELECT coalesce(max(seq), 0) FROM dv_commits WHERE environment = ?",
            ENV,
        )[0]
        rows = query(self.database, f'SELECT accountid, "_dv_version" FROM {self.ref}')
        self.copy = {str(k).lower(): int(v) for k, v in rows}
        self.last = int(newest)

    def poll(self) -> None:
        (newest,) = query(
            self.database,
            "SELECT coalesce(max(seq), 0) FROM dv_commits WHERE environment = ?",
            ENV,
        )[0]
        rows = query(
            self.database,
            f'SELECT accountid, "_dv_version", "_dv_commit_seq" FROM {self.ref} '
            'WHERE "_dv_commit_seq" > ? AND "_dv_commit_seq" <= ?',
            self.last,
            newest,
        )
        gone = query(
            self.database,
            'SELECT id, "_dv_commit_seq" FROM "_dv_deletions" WHERE environment = ? '
            'AND "table" = ? AND "_dv_commit_seq" > ? AND "_dv_commit_seq" <= ?',
            ENV,
            TABLE,
            self.last,
            newest,
        )
        events = [(int(s), 1, str(k).lower(), int(v)) for k, v, s in rows]
        events += [(int(s), 0, str(k).lower(), None) for k, s in gone]
        for _, _, key, version in sorted(events, key=lambda e: (e[0], e[1])):
            if version is None:
                self.copy.pop(key, None)
            else:
                self.copy[key] = version
        self.last = int(newest)


@dataclass
class FeedReader:
    """A downstream load by `dvmirror feed --since <last> --format jsonl`."""

    config: Path
    last: int = 0
    copy: dict[str, int] = field(default_factory=dict)
    polls: int = 0

    @contextmanager
    def polling(self) -> Iterator[None]:
        """Poll in a thread, one run after another, until the block ends."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            while not stop.is_set():
                try:
                    self.poll()
                except BaseException as exc:
                    failures.append(exc)
                    return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(60)
        if failures:
            raise failures[0]

    def poll(self) -> None:
        result = run_cli(
            "--config", self.config, "feed", "--env", ENV, "--since", str(self.last),
            "--format", "jsonl",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for line in result.stdout.splitlines():
            change = json.loads(line)
            if change["op"] == "delete":
                self.copy.pop(change["id"].lower(), None)
            else:
                row = change["row"]
                self.copy[str(row["accountid"]).lower()] = int(row["_dv_version"])
        self.last = int(result.stderr.rsplit("--since ", 1)[1].split(")")[0])
        self.polls += 1


def configure(sim: dict[str, Any], tmp_path: Path, store_url: str) -> Path:
    config = write_config(sim, tmp_path, {ENV: EnvSpec((TABLE,), interval="1s", page_size=50)})
    text = config.read_text()
    start = text.index("[store]\nurl = ")
    end = text.index("\n", start + len("[store]\nurl = "))
    text = text[:start] + f'[store]\nurl = "{store_url}"' + text[end:]
    text = text.replace("page_size = 50\n", "page_size = 50\nsplit_rows = 100\nrange_workers = 8\n")
    config.write_text(text.replace("[daemon]\n", "[daemon]\nshutdown_grace = 5\n"))
    return config


def request_state(database: Path | str) -> str | None:
    rows = query(database, "SELECT state FROM dv_resync_requests ORDER BY id DESC LIMIT 1")
    return str(rows[0][0]) if rows else None


def delta_ready(database: Path | str) -> bool:
    try:
        rows = query(
            database,
            "SELECT phase FROM dv_sync_state WHERE environment = ? AND table_name = ?",
            ENV,
            TABLE,
        )
    except Exception:  # not migrated yet (a sqlite3 or an asyncpg error)
        return False
    return bool(rows) and rows[0][0] == "delta"


def damage(database: Path | str, store_url: str, ref: str) -> None:
    """By hand, so no number: 20 rows deleted, 20 versions rolled back, 5 ghosts."""
    first = f"SELECT accountid FROM {ref} ORDER BY accountid LIMIT 20"
    query(
        database,
        f'UPDATE {ref} SET "_dv_version" = "_dv_version" - 1 WHERE accountid IN ({first} OFFSET 20)',
    )
    query(database, f"DELETE FROM {ref} WHERE accountid IN ({first})")
    postgres = store_url.startswith("postgresql")
    ghosts = [uuid.uuid4() for _ in range(5)]
    values = ", ".join("(?, 1, ?)" for _ in ghosts)
    stamp = datetime(2026, 1, 1, tzinfo=UTC) if postgres else "2026-01-01T00:00:00.000000Z"
    params = [p for g in ghosts for p in (g if postgres else str(g), stamp)]
    query(
        database,
        f'INSERT INTO {ref} (accountid, "_dv_version", "_dv_synced_at") VALUES {values}',
        *params,
    )


def test_readers_polling_through_a_ranged_resync_under_churn_end_with_the_source(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = configure(sim, tmp_path, store_url)
    database = database_of(store_url)
    ref = mirror_ref(store_url)
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: delta_ready(database), timeout=90, what="the backfill")
        by_sql, by_feed = SqlReader(database, ref), FeedReader(config)
        by_sql.first_load()
        by_feed.poll()  # --since 0: the whole table, as a first load
        damage(database, store_url, ref)
        queued = run_cli("--config", config, "resync", "--env", ENV, "--table", TABLE)
        assert queued.returncode == 0, queued.stderr
        moved_while_running = 0
        with Churning(sim, {ENV: (TABLE,)}, every=0.2, seed=700) as churning, by_feed.polling():
            deadline = time.monotonic() + 120
            while (state := request_state(database)) != "done":
                assert time.monotonic() < deadline, "the resync did not finish"
                before = by_sql.last
                by_sql.poll()
                moved_while_running += state == "running" and by_sql.last > before
                time.sleep(0.05)
        assert churning.rounds >= 2
        assert moved_while_running >= 2  # numbered commits arrived while the resync ran
        wait_until(
            lambda: not differences(sim, database, ENV, TABLE), timeout=60, what="convergence"
        )
        by_sql.poll()
        by_feed.poll()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    planned = [e for e in daemon.named("key_ranges_planned") if e["table"] == TABLE]
    assert len(planned) >= 2 and planned[-1]["ranges"] == 8, planned  # backfill and resync
    source = {r["accountid"].lower(): int(r["versionnumber"]) for r in source_rows(sim, ENV, TABLE)}
    assert by_sql.copy == source
    assert by_feed.copy == source
    assert by_feed.polls >= 3
