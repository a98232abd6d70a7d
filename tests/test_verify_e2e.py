"""`dvmirror verify` as a user runs it: a real subprocess against the simulator over HTTPS, on a
real SQLite file and on PostgreSQL.

The mirror is damaged in each way change tracking never reports (rows deleted, ghost rows
inserted, versions and values rolled back), `verify --exact` finds each kind and exits 1, and
`verify --exact --repair`, while the source keeps changing, restores the source exactly and exits
0; ghosts are logged in `_dv_deletions` with reason `verify`, each run in `dv_verify_runs`.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.daemonproc import DaemonProcess, EnvSpec, churn, wait_until, write_config
from tests.mirror_compare import (
    _store_url,  # noqa: F401
    database_of,
    differences,
    query,
    source_rows,
)
from tests.simfixtures import _no_ca_env, running_simulator, user_stats  # noqa: F401

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
SCENARIO = Path(__file__).parent / "scenarios" / "daemon.toml"
ENV = "churn_env"
TABLES = ("account", "contact")


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-verify")) as ready:
        yield ready


def configure(sim: dict[str, Any], tmp_path: Path, store_url: str) -> Path:
    config = write_config(sim, tmp_path, {ENV: EnvSpec(TABLES, page_size=50, interval="1h")})
    text = config.read_text()
    start = text.index("[store]\nurl = ")
    end = text.index("\n", start + len("[store]\nurl = "))
    config.write_text(text[:start] + f'[store]\nurl = "{store_url}"' + text[end:])
    return config


def mirror(store_url: str, table: str) -> str:
    return f'"{ENV}"."{table}"' if store_url.startswith("postgresql") else f'"{ENV}__{table}"'


def key_value(store_url: str, key: str) -> Any:
    return uuid.UUID(key) if store_url.startswith("postgresql") else key


def damage(store_url: str) -> dict[str, set[str]]:
    """Delete 3 account rows, insert 2 ghost accounts, roll back 2 contacts' version and name."""
    db = database_of(store_url)
    account, contact = mirror(store_url, "account"), mirror(store_url, "contact")
    deleted = query(
        db,
        f"DELETE FROM {account} WHERE accountid IN "
        f"(SELECT accountid FROM {account} ORDER BY accountid LIMIT 3) RETURNING accountid",
    )
    ghosts = {str(uuid.uuid4()) for _ in range(2)}
    for ghost in ghosts:
        query(
            db,
            f'INSERT INTO {account} (accountid, name, "_dv_version", "_dv_synced_at") '
            "VALUES (?, 'ghost', 1, '2026-01-01T00:00:00.000000Z')",
            key_value(store_url, ghost),
        )
    stale = query(
        db,
        f'UPDATE {contact} SET "_dv_version" = "_dv_version" - 1, fullname = \'rolled back\' '
        f"WHERE contactid IN (SELECT contactid FROM {contact} ORDER BY contactid LIMIT 2 OFFSET 5) "
        "RETURNING contactid",
    )
    return {
        "missing": {str(r[0]) for r in deleted},
        "ghost": ghosts,
        "stale": {str(r[0]) for r in stale},
    }


def verify(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("--config", config, "verify", "--json", *args, timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert '{\n  "tables"' in result.stdout, result.stdout + result.stderr
    start = result.stdout.index('{\n  "tables"')
    return result.returncode, json.loads(result.stdout[start:])


def by_table(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in document["tables"]}


class Churn:
    """The source keeps changing in a thread: creates, updates and deletes every 0.2 s."""

    def __init__(self, sim: dict[str, Any]) -> None:
        self.sim, self.stop, self.rounds = sim, threading.Event(), 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.rounds += 1
            for table in TABLES:
                churn(self.sim, ENV, table, 1000 + self.rounds, creates=2, updates=3, deletes=1)

    def __enter__(self) -> Churn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_verify_finds_each_damage_and_repair_restores_the_source_under_churn(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    config = configure(sim, tmp_path, store_url)
    db = database_of(store_url)
    assert run_cli("--config", config, "migrate").returncode == 0
    loaded = run_cli("--config", config, "backfill", timeout=300)
    assert loaded.returncode == 0, loaded.stderr

    code, document = verify(config, "--exact")
    assert code == 0 and all(t["outcome"] == "match" for t in document["tables"])
    account = by_table(document)["account"]
    # The narrow key/version pages cost well under a quarter of a full page's bytes per row.
    narrow = account["key_bytes"] / account["key_rows"]
    full = account["full_bytes"] / account["full_rows"]
    print(f"key/version pages {narrow:.0f} B/row, full pages {full:.0f} B/row: {narrow / full:.1%}")
    assert narrow < full / 4

    damaged = damage(store_url)
    assert differences(sim, db, ENV, "account") and differences(sim, db, ENV, "contact")
    code, document = verify(config, "--exact")
    tables = by_table(document)
    assert code == 1
    assert set(tables["account"]["missing"]) == damaged["missing"]
    assert set(tables["account"]["ghost"]) == damaged["ghost"]
    assert set(tables["contact"]["stale"]) == damaged["stale"]
    assert tables["account"]["outcome"] == tables["contact"]["outcome"] == "mismatch"
    assert differences(sim, db, ENV, "account")  # verify alone changes nothing

    with Churn(sim) as churning:
        code, document = verify(config, "--exact", "--repair")
    assert churning.rounds >= 1
    assert code == 0, document
    tables = by_table(document)
    assert tables["account"]["outcome"] == "repaired"
    assert tables["contact"]["outcome"] == "repaired"

    # The churn since the repair reaches the mirror by the ordinary delta cycle; the damage
    # itself (deletions, ghosts, rolled-back versions) is never in a delta: verify repaired it.
    synced = run_cli("--config", config, "sync", "--once", timeout=300)
    assert synced.returncode == 0, synced.stderr
    for table in TABLES:
        assert differences(sim, db, ENV, table) == []
    logged = {str(r[0]) for r in query(db, "SELECT id FROM _dv_deletions WHERE reason = 'verify'")}
    assert logged == damaged["ghost"]
    runs = query(
        db,
        "SELECT table_name, outcome, missing, ghost, stale, repaired FROM dv_verify_runs "
        "ORDER BY id",
    )
    assert ("account", "mismatch", 3, 2, 0, 0) in runs
    assert ("contact", "mismatch", 0, 0, 2, 0) in runs
    assert any(r[0] == "account" and r[1] == "repaired" and r[5] >= 1 for r in runs), runs

    text = run_cli("--config", config, "verify", "--exact", timeout=300)
    assert text.returncode == 0, text.stdout + text.stderr
    assert "all tables match (2 tables" in text.stdout
    # The table status view (migration 0009) shows the newest run of each table.
    view = "dvmirror.table_status" if isinstance(db, str) else "dv_table_status"
    shown = query(
        db,
        f'SELECT "table", last_verify_outcome, source_rows_estimate, last_verify FROM {view} '
        'ORDER BY "table"',
    )
    newest = query(
        db,
        "SELECT table_name, outcome, finished_at FROM dv_verify_runs r WHERE id = "
        "(SELECT max(id) FROM dv_verify_runs w WHERE w.table_name = r.table_name) "
        "ORDER BY table_name",
    )
    assert [(r[0], r[1]) for r in shown] == [(r[0], r[1]) for r in newest]
    assert all(r[1] == "match" and r[2] is not None and r[3] is not None for r in shown), shown


def test_the_daemon_verifies_every_verify_interval_and_reports_what_it_finds(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """With `verify_interval = "4s"` the daemon verifies its tables on its own: a fresh mirror
    only approximately (every row changed within the day), then, with most of a table deleted
    from the mirror (more than the rows changed in 24 h), the estimate flags it, exact counts
    and the key diff find the missing rows, the recheck after the next cycle keeps them, and
    `dvmirror_verify_mismatch_rows` and `dvmirror status` say how many."""
    config = write_config(sim, tmp_path, {"fabrikam_env": EnvSpec(TABLES, interval="1s")})
    config.write_text(
        config.read_text().replace('interval = "1s"\n', 'interval = "1s"\nverify_interval = "4s"\n')
    )
    db = tmp_path / "mirror.db"
    daemon = DaemonProcess.start(config, tmp_path / "daemon.log")
    try:
        first = daemon.wait_event("verify_finished", count=2, timeout=60)
        assert {e["outcome"] for e in first} == {"approximate"}
        rows = query(db, 'SELECT count(*) FROM "fabrikam_env__account"')[0][0]
        gone = rows // 2 + 10
        query(
            db,
            'DELETE FROM "fabrikam_env__account" WHERE accountid IN '
            f'(SELECT accountid FROM "fabrikam_env__account" ORDER BY accountid LIMIT {gone})',
        )

        def mismatch() -> list[dict[str, Any]]:
            return [
                e
                for e in daemon.named("verify_finished")
                if e["table"] == "account" and e["outcome"] == "mismatch"
            ]

        found = wait_until(mismatch, timeout=60, what="a verify that finds the missing rows")
        assert found[0]["mismatch_rows"] == gone
        status, body = daemon.get("/metrics")
        assert status == 200
        assert (
            'dvmirror_verify_mismatch_rows{environment="fabrikam_env",table="account"} '
            f"{float(gone)}"
        ) in body
        shown = json.loads(run_cli("--config", config, "status", "--json").stdout)["verify"]
        account = next(e for e in shown if e["table"] == "account")
        assert account["outcome"] == "mismatch" and account["missing"] == gone

        # Beside the running daemon, `verify` reads (exit 1: the mismatch stands after the
        # daemon's next cycle); `verify --repair` does not write the mirror itself: it hands
        # what differs to the daemon as a resync request (exit 1 still: not repaired yet).
        beside = run_cli("--config", config, "verify", "--table", "account", timeout=300)
        assert beside.returncode == 1, beside.stdout + beside.stderr
        assert "verifying read-only beside it" in beside.stdout
        assert f"MISMATCH {gone} rows ({gone} missing, 0 ghost, 0 stale)" in beside.stdout
        handed = run_cli(
            "--config", config, "verify", "--table", "account", "--repair", timeout=300
        )
        assert handed.returncode == 1, handed.stdout + handed.stderr
        assert "Traceback" not in handed.stderr
        assert f"fabrikam_env/account: {gone} rows differ; queued resync #" in handed.stdout

        def resync_done() -> bool:
            report = json.loads(run_cli("--config", config, "status", "--json").stdout)
            states = [r["state"] for r in report["resync_requests"] if r["table"] == "account"]
            assert "failed" not in states, report["resync_requests"]
            return states == ["done"]

        wait_until(resync_done, timeout=120, what="the daemon running the handed-over resync")
        after = run_cli("--config", config, "verify", "--table", "account", "--exact", timeout=300)
        assert after.returncode == 0, after.stdout + after.stderr
        assert "all tables match (1 table," in after.stdout
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@pytest.mark.long
@pytest.mark.timeout(600)
def test_a_table_past_the_aggregate_limit_is_counted_in_ranges_and_refused_ranges_halved(
    tmp_path: Path,
) -> None:
    """60,000 rows (two columns mirrored, to keep it quick): the mirror's keys cut ranges of
    40,000; with 15,000 rows deleted from the mirror at the start of the key order, the first
    range spans 55,000 source rows, the service refuses to count it (AggregateQueryRecordLimit),
    verify halves it, and `--repair` brings the 15,000 rows back."""
    with running_simulator(
        Path(__file__).parent / "scenarios" / "verify_big.toml", tmp_path / "sim"
    ) as big:
        config = write_config(big, tmp_path, {"big_env": EnvSpec(("contact",), interval="1h")})
        narrow = '[tenants.environments.table_options.contact]\ncolumns = ["fullname"]\n'
        config.write_text(config.read_text() + narrow)
        db = tmp_path / "mirror.db"
        assert run_cli("--config", config, "backfill", timeout=600).returncode == 0
        code, document = verify(config, "--exact")
        assert code == 0 and document["tables"][0]["ranges"] == 2
        keys = [r[0] for r in query(db, 'SELECT contactid FROM "big_env__contact"')]
        from sync.mirror.keyranges import sql_order_key

        first = sorted(keys, key=sql_order_key)[:15_000]
        for start in range(0, len(first), 500):
            chunk = first[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            query(db, f'DELETE FROM "big_env__contact" WHERE contactid IN ({marks})', *chunk)
        code, document = verify(config, "--exact", "--repair")
        table = document["tables"][0]
        assert code == 0 and table["outcome"] == "repaired"
        assert len(table["missing"]) == 15_000 and table["repaired"] == 15_000
        assert table["ranges"] == 3  # the refused first range was counted as two halves
        source = {row["contactid"] for row in source_rows(big, "big_env", "contact")}
        mirrored = {r[0] for r in query(db, 'SELECT contactid FROM "big_env__contact"')}
        assert mirrored == source  # two columns are mirrored: the keys are what may differ


def set_budget(config: Path, limit: int) -> None:
    """`daily_request_budget` of the config's one tenant."""
    text = config.read_text()
    if "daily_request_budget" in text:
        start = text.index("daily_request_budget = ")
        text = text[:start] + text[text.index("\n", start) + 1 :]
    at = text.index("[[tenants]]\n") + len("[[tenants]]\n")
    config.write_text(text[:at] + f"daily_request_budget = {limit}\n" + text[at:])


def spent_today(sim: dict[str, Any]) -> int:
    return int(user_stats(sim, ENV)["requests"])


def test_verify_stops_while_less_than_a_tenth_of_the_daily_budget_is_left(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """The tenant's counter (`dv_request_budget`, shared by every process of the tenant) says
    how much of the day's budget is spent. With 50 of 1,000 left, verify asks nothing at all
    (not even the estimate): every table "stopped", exit 1. With 101 left it starts and stops
    at the first check after the tenth is crossed, a handful of requests later. With the budget
    renewed the same verify matches."""
    config = configure(sim, tmp_path, store_url)
    db = database_of(store_url)
    set_budget(config, 1_000_000)
    assert run_cli("--config", config, "migrate").returncode == 0
    assert run_cli("--config", config, "backfill", timeout=300).returncode == 0
    ((used,),) = query(db, "SELECT used FROM dv_request_budget")
    assert used > 0  # the backfill's requests, flushed to the shared counter
    set_budget(config, 1_000)

    query(db, "UPDATE dv_request_budget SET used = 950")
    before = spent_today(sim)
    code, document = verify(config, "--exact")
    assert code == 1
    assert [t["outcome"] for t in document["tables"]] == ["stopped", "stopped"]
    assert all(
        "less than 10% of the daily request budget" in t["detail"] for t in document["tables"]
    )
    assert spent_today(sim) == before  # not one request
    assert query(db, "SELECT used FROM dv_request_budget") == [(950,)]

    query(db, "UPDATE dv_request_budget SET used = 899")
    before = spent_today(sim)
    code, document = verify(config, "--exact")
    tables = by_table(document)
    assert code == 1
    assert tables["account"]["outcome"] == tables["contact"]["outcome"] == "stopped"
    spent = spent_today(sim) - before
    # The estimate leaves 100 (not less than a tenth), the table's discovery crosses it.
    assert 2 <= spent <= 10, spent
    assert tables["contact"]["requests"] == 0
    ((stored,),) = query(db, "SELECT used FROM dv_request_budget")
    assert stored == 899 + spent
    runs = query(db, "SELECT outcome FROM dv_verify_runs ORDER BY id")
    assert [r[0] for r in runs] == ["stopped"] * 4

    query(db, "UPDATE dv_request_budget SET used = 0")
    code, document = verify(config, "--exact")
    assert code == 0 and [t["outcome"] for t in document["tables"]] == ["match", "match"]


def versions(store_url: str, table: str) -> dict[str, int]:
    key = f"{table}id"
    rows = query(
        database_of(store_url), f'SELECT {key}, "_dv_version" FROM {mirror(store_url, table)}'
    )
    return {str(k).lower(): int(v) for k, v in rows}


def test_rows_changed_at_the_source_since_the_last_sync_are_rechecked_not_reported(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    """The source changes after the mirror's last sync (updates, creates, deletes not synced
    yet) and the mirror is damaged in other rows. Verify's first look sees both as different;
    the recheck after the delta cycle (which the command runs) reports only the damage: the
    changed rows reached the mirror by that cycle, as they would have anyway."""
    config = configure(sim, tmp_path, store_url)
    db = database_of(store_url)
    assert run_cli("--config", config, "migrate").returncode == 0
    assert run_cli("--config", config, "backfill", timeout=300).returncode == 0
    synced = versions(store_url, "account")
    churn(sim, ENV, "account", 4242, creates=3, updates=8, deletes=2)
    source = {r["accountid"].lower(): r["versionnumber"] for r in source_rows(sim, ENV, "account")}
    changed = {k for k in source.keys() | synced.keys() if source.get(k) != synced.get(k)}
    assert len(changed) >= 8  # an update may fall on a row the churn creates or deletes
    untouched = sorted(k for k in synced if k not in changed)
    gone, rolled = untouched[:2], untouched[2:4]
    account = mirror(store_url, "account")
    for key in gone:
        query(db, f"DELETE FROM {account} WHERE accountid = ?", key_value(store_url, key))
    for key in rolled:
        query(
            db,
            f'UPDATE {account} SET "_dv_version" = "_dv_version" - 1 WHERE accountid = ?',
            key_value(store_url, key),
        )

    code, document = verify(config, "--exact", "--table", "account")
    assert code == 1
    (table,) = document["tables"]
    found = (set(table["missing"]), set(table["ghost"]), set(table["stale"]))
    assert found == (set(gone), set(), set(rolled))
    now = versions(store_url, "account")
    assert all(now.get(k) == source.get(k) for k in changed)  # the recheck's delta cycle
