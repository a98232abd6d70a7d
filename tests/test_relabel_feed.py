"""Relabelled options reach incremental loaders through the commit feed (store.relabel): the
simulator over real HTTPS and real MSAL, `sync --once` into a real SQLite file and a real
(throwaway) PostgreSQL database, `dvmirror feed` through the real CLI.

Two readers follow the environment while a choice, a multi-select and a status option are
relabelled at the source: one applies `dvmirror feed --format jsonl`, one runs the documented SQL
(`_dv_commit_seq > :last AND <= :M`). Both copies end with the source's labels; the history's
open versions take them in place, its closed versions keep theirs. A replayed refresh changes
nothing and takes no number. The SQLite run uses environment `meta_lite`, the PostgreSQL run
`meta_pg` (this module's own simulator)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sync.config.loading import load_config
from sync.store.connect import create_engine
from sync.store.metadata_tables import rewrite
from sync.store.relabel import LabelFix
from tests.cli import clean_env, run_cli
from tests.mirror_compare import _store_url, database_of, query  # noqa: F401
from tests.simfixtures import _no_ca_env, admin, running_simulator  # noqa: F401
from tests.test_metadata_tables import SCENARIO, env_for, sync_once, table
from tests.test_metadata_tables import write_config as metadata_config

pytestmark = [pytest.mark.usefixtures("no_ca_env"), pytest.mark.slow]
KEYS = {"account": "accountid", "new_project": "new_projectid"}
LABELS = {
    "account": ("industrycode__label", "statuscode__label"),
    "new_project": ("new_tags__label",),
}
TAG_NAMES = {1: "Design", 2: "Construction", 3: "Test", 4: "Deploy", 5: "Support"}


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator(SCENARIO, tmp_path_factory.mktemp("sim-relabel")) as ready:
        yield ready


def rows(store_url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in query(database_of(store_url), sql, *([params] if params else []))]


def newest(store_url: str, env: str) -> int:
    commits = "dvmirror.dv_commits" if store_url.startswith("postgresql") else "dv_commits"
    [(top,)] = rows(
        store_url, f"SELECT coalesce(max(seq), 0) FROM {commits} WHERE environment = '{env}'"
    )
    return int(top)


def commits_after(store_url: str, env: str, since: int) -> list[tuple[Any, ...]]:
    commits = "dvmirror.dv_commits" if store_url.startswith("postgresql") else "dv_commits"
    return rows(
        store_url,
        f"SELECT seq, table_name, upserts, deletes FROM {commits} "
        f"WHERE environment = '{env}' AND seq > {since} ORDER BY seq",
    )


class FeedReader:
    """A downstream load that applies `dvmirror feed --since N --format jsonl` in order."""

    def __init__(self, config: Path, env: str, secret: str) -> None:
        self.config, self.env, self.secret = config, env, secret
        self.copy: dict[tuple[str, str], dict[str, Any]] = {}
        self.last = 0
        self.summary = ""

    def pull(self) -> None:
        done = run_cli(
            *("--config", self.config, "feed", "--env", self.env, "--since", str(self.last)),
            *("--format", "jsonl"),
            env={"DVMIRROR_CLIENT_SECRET": self.secret},
        )
        assert done.returncode == 0, done.stderr
        for line in done.stdout.splitlines():
            change = json.loads(line)
            if change["table"] not in KEYS:
                continue
            if change["op"] == "delete":
                self.copy.pop((change["table"], str(change["id"]).lower()), None)
            else:
                key = str(change["row"][KEYS[change["table"]]]).lower()
                self.copy[(change["table"], key)] = change["row"]
        self.summary = done.stderr
        found = re.findall(r"next: --since (\d+)", done.stderr)
        assert found, done.stderr
        self.last = int(found[-1])

    def labels(self, name: str) -> dict[str, tuple[Any, ...]]:
        return {
            key: tuple(r[c] for c in LABELS[name]) for (t, key), r in self.copy.items() if t == name
        }


class SqlReader:
    """A downstream load that runs the README's SQL: M first, then the rows in (last, M]."""

    def __init__(self, store_url: str, env: str) -> None:
        self.store_url, self.env = store_url, env
        self.copy: dict[str, dict[str, tuple[Any, ...]]] = {name: {} for name in KEYS}
        self.last = 0

    def pull(self) -> None:
        top = newest(self.store_url, self.env)
        for name, key in KEYS.items():
            wanted = ", ".join((key, *LABELS[name]))
            for found in rows(
                self.store_url,
                f"SELECT {wanted} FROM {table(self.store_url, name)} "
                f"WHERE _dv_commit_seq > {self.last} AND _dv_commit_seq <= {top}",
            ):
                self.copy[name][str(found[0]).lower()] = tuple(found[1:])
        self.last = top


def mirror_labels(store_url: str, name: str) -> dict[str, tuple[Any, ...]]:
    wanted = ", ".join((KEYS[name], *LABELS[name]))
    found = rows(store_url, f"SELECT {wanted} FROM {table(store_url, name)}")
    return {str(r[0]).lower(): tuple(r[1:]) for r in found}


def _values(stored: Any) -> list[int]:
    return list(stored) if isinstance(stored, list) else [int(v) for v in str(stored).split(",")]


def write_config(sim: dict[str, Any], directory: Path, store_url: str) -> Path:
    """The metadata tests' config, with history kept for account."""
    metadata_config(sim, directory, store_url)
    path = directory / "dvmirror.toml"
    path.write_text(
        path.read_text() + "\n[tenants.environments.table_options.account]\nhistory = true\n"
    )
    return path


def history(store_url: str) -> str:
    env = env_for(store_url)
    if store_url.startswith("postgresql"):
        return f'"{env}"."account__history"'
    return f'"{env}__account__history"'


def test_relabels_reach_readers_of_the_feed(
    sim: dict[str, Any], tmp_path: Path, store_url: str
) -> None:
    env = env_for(store_url)
    path = write_config(sim, tmp_path, store_url)
    config = load_config(path, environ=clean_env())
    assert sync_once(config)[0] == 0
    # Closed history versions: some rows change at the source and are synced again.
    admin(sim, "POST", f"/environments/{env}/tables/account/churn", {"updates": 12, "seed": 5})
    assert sync_once(config)[0] == 0
    feed_reader = FeedReader(path, env, str(sim["client_secret"]))
    sql_reader = SqlReader(store_url, env)
    feed_reader.pull()
    sql_reader.pull()
    for name in KEYS:
        assert feed_reader.labels(name) == mirror_labels(store_url, name)
        assert sql_reader.copy[name] == mirror_labels(store_url, name)
    account, project = table(store_url, "account"), table(store_url, "new_project")
    versions = f"SELECT accountid, _dv_version, modifiedon FROM {account} ORDER BY 1"
    before = rows(store_url, versions)
    closed_sql = f"SELECT * FROM {history(store_url)} WHERE _dv_valid_to IS NOT NULL ORDER BY 1, 2"
    closed = rows(store_url, closed_sql)
    closed_status = f"SELECT statuscode FROM {history(store_url)} WHERE _dv_valid_to IS NOT NULL"
    assert any(r[0] == 1 for r in rows(store_url, closed_status))
    [(version_count,)] = rows(store_url, f"SELECT count(*) FROM {history(store_url)}")
    seq_before = newest(store_url, env)

    tables = f"/environments/{env}/tables"
    admin(
        sim,
        "POST",
        f"{tables}/account/relabel",
        {"column": "industrycode", "value": 2, "label": "Farming"},
    )
    admin(
        sim,
        "POST",
        f"{tables}/new_project/relabel",
        {"column": "new_tags", "value": 2, "label": "Construction"},
    )
    admin(
        sim,
        "POST",
        f"{tables}/account/relabel",
        {"column": "statuscode", "value": 1, "label": "Open"},
    )
    code, output = sync_once(config)
    assert code == 0, output

    # Both readers end with the source's labels; the feed names the metadata tables to copy.
    since = feed_reader.last
    feed_reader.pull()
    assert (
        "metadata tables changed (copy them again): optionsetmetadata, statusmetadata"
        in feed_reader.summary
    )
    folder = run_cli(
        *("--config", path, "feed", "--env", env, "--since", str(since), "--format", "jsonl"),
        *("--out", tmp_path / "loads"),
        env={"DVMIRROR_CLIENT_SECRET": str(sim["client_secret"])},
    )
    assert folder.returncode == 0, folder.stderr
    [written] = (tmp_path / "loads").iterdir()
    manifest = json.loads((written / "manifest.json").read_text())
    assert manifest["metadata_tables"] == ["optionsetmetadata", "statusmetadata"]
    assert set(manifest["rows"]) == {"account", "new_project"}
    sql_reader.pull()
    assert feed_reader.last == sql_reader.last == newest(store_url, env)
    for name in KEYS:
        source = mirror_labels(store_url, name)
        assert feed_reader.labels(name) == source
        assert sql_reader.copy[name] == source

    # The relabel is a commit per mirror table (one for both account columns), then one per
    # metadata table rewritten; the rows' versions stay.
    made = commits_after(store_url, env, seq_before)
    relabelled = {
        r[0]
        for r in rows(
            store_url, f"SELECT accountid FROM {account} WHERE industrycode = 2 OR statuscode = 1"
        )
    }
    tagged = [
        r
        for r in rows(store_url, f"SELECT new_tags FROM {project} WHERE new_tags IS NOT NULL")
        if 2 in _values(r[0])
    ]
    assert relabelled and tagged
    assert [(t, u, d) for _, t, u, d in made[:2]] == [
        ("account", len(relabelled), 0),
        ("new_project", len(tagged), 0),
    ]
    assert {t for _, t, _, _ in made[2:]} == {"optionsetmetadata", "statusmetadata"}
    assert [s for s, *_ in made] == list(range(seq_before + 1, seq_before + 1 + len(made)))
    assert rows(store_url, versions) == before

    industry = rows(
        store_url,
        f"SELECT industrycode, industrycode__label, statuscode, statuscode__label FROM {account}",
    )
    assert all(r[1] == "Farming" for r in industry if r[0] == 2)
    assert all(r[3] == "Open" for r in industry if r[2] == 1)
    for value, text in rows(
        store_url, f"SELECT new_tags, new_tags__label FROM {project} WHERE new_tags IS NOT NULL"
    ):
        assert text == "; ".join(TAG_NAMES[v] for v in _values(value))

    # History: no new version; the open versions show the new labels (and the relabel's
    # number, for loaders of the history); closed versions keep the labels they had.
    assert rows(store_url, f"SELECT count(*) FROM {history(store_url)}") == [(version_count,)]
    assert rows(store_url, closed_sql) == closed
    open_versions = rows(
        store_url,
        "SELECT h.industrycode__label, m.industrycode__label, h.statuscode__label, "
        "m.statuscode__label, h._dv_commit_seq, m._dv_commit_seq "
        f"FROM {history(store_url)} AS h JOIN {account} AS m ON m.accountid = h.accountid "
        "WHERE h._dv_valid_to IS NULL AND h._dv_op = 'upsert'",
    )
    assert len(open_versions) == len(before)
    assert all(r[0] == r[1] and r[2] == r[3] for r in open_versions)
    assert sum(1 for r in open_versions if r[4] == r[5] == made[0][0]) == len(relabelled)

    # Replays change nothing and take no number: the same fixes applied again (as a retried
    # transaction would), and a refresh whose hashes are all equal.
    top = newest(store_url, env)
    seqs = f"SELECT accountid, _dv_commit_seq FROM {account} ORDER BY 1"
    seqs_before = rows(store_url, seqs)
    fixes = [
        LabelFix("account", "industrycode", {2: "Farming"}),
        LabelFix("account", "statuscode", {1: "Open"}),
    ]

    async def replay() -> int:
        engine = create_engine(store_url)
        try:
            return await rewrite(engine, env, {}, fixes, now=datetime.now(UTC))
        finally:
            await engine.dispose()

    assert asyncio.run(replay()) == 0
    assert sync_once(config)[0] == 0
    assert newest(store_url, env) == top
    assert rows(store_url, seqs) == seqs_before
    feed_reader.pull()
    assert feed_reader.last == top
