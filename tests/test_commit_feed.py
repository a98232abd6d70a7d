"""The commit-ordered change feed (store.commits) on real SQLite files and a real PostgreSQL
cluster: what takes a number, that numbers follow commit order under concurrent transactions,
and that a reader polling `_dv_commit_seq > :last` ends with exactly the mirror while one polling
`_dv_synced_at > :last` misses rows; `dvmirror feed` and `status --json` through the real CLI."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.mirror.typemap import build_schema
from sync.store import checkpoints as state
from sync.store.checkpoints import TableState
from sync.store.connect import create_engine
from sync.store.dialects import dialect_for
from sync.store.layout import TableSchema
from sync.store.migrate import upgrade
from sync.store.mirror_tables import MirrorLayout, ensure_mirror
from sync.store.writer import PageCounts, PageWrite, commit_page, write_page
from tests.cli import run_cli

ENV = "contoso_prod"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CURSOR = TableState("delta", delta_link="https://x/d")


def key(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def schema() -> TableSchema:
    attrs = [
        {"LogicalName": "accountid", "AttributeType": "Uniqueidentifier"},
        {"LogicalName": "name", "AttributeType": "String"},
    ]
    entity = {"EntitySetName": "accounts", "PrimaryIdAttribute": "accountid"}
    return build_schema(entity | {"ChangeTrackingEnabled": True}, attrs, table="account")


def row(n: int, name: str, version: int) -> tuple[Any, ...]:
    return (key(n), name, f'W/"{version}"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mirror.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="engine")
async def _engine(store_url: str) -> AsyncIterator[Any]:
    engine = create_engine(store_url)
    await upgrade(engine)
    await state.ensure(engine, ENV, "account", now=NOW)
    yield engine
    await engine.dispose()


async def mirror(engine: Any, *, soft: bool = False) -> MirrorLayout:
    return await ensure_mirror(engine, ENV, schema(), soft=soft, now=NOW)


async def commit(engine: Any, layout: MirrorLayout, synced_at: str, **page: Any) -> PageCounts:
    def checkpoint(counts: PageCounts) -> list[Any]:
        return state.checkpoint_statements(ENV, "account", CURSOR, now=NOW)

    write = PageWrite(synced_at=synced_at, **page)
    return await commit_page(
        engine, layout.writer, write, observed_at=synced_at, checkpoint=checkpoint
    )


async def fetch(engine: Any, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


async def feed_rows(engine: Any) -> list[tuple[int, str, int, int]]:
    return [
        (int(r[0]), r[1], int(r[2]), int(r[3]))
        for r in await fetch(
            engine,
            "SELECT seq, table_name, upserts, deletes FROM dv_commits "
            "WHERE environment = :env ORDER BY seq",
            env=ENV,
        )
    ]


def ref(engine: Any) -> str:
    return dialect_for(engine).table_ref(ENV, "account")


async def seqs(engine: Any) -> dict[str, int | None]:
    found = await fetch(engine, f"SELECT accountid, _dv_commit_seq FROM {ref(engine)}")
    return {str(k): s for k, s in found}


async def test_only_real_changes_take_a_number(engine: Any) -> None:
    """Identical rows, touches and unknown tombstones take no number; changes and deletions do,
    in the mirror rows, in `_dv_deletions` and in dv_commits; numbers have no gaps."""
    layout = await mirror(engine)
    t = [stamp(NOW + timedelta(minutes=i)) for i in range(8)]
    first = await commit(engine, layout, t[0], rows=[row(1, "a", 1), row(2, "b", 1)])
    assert (first.changed, first.commit_seq) == (2, 1)
    again = await commit(engine, layout, t[1], rows=[row(1, "a", 1), row(2, "b", 1)])
    assert (again.upserted, again.changed, again.commit_seq) == (2, 0, None)
    touched = await commit(engine, layout, t[2], keys_seen=[key(1), key(2)])
    assert touched.commit_seq is None
    unknown = await commit(engine, layout, t[3], deleted_ids=[key(9)])
    assert (unknown.deleted, unknown.commit_seq) == (0, None)
    assert await feed_rows(engine) == [(1, "account", 2, 0)]
    # The identical page still stamped the rows (full passes and the sweep rely on it).
    synced = await fetch(engine, f"SELECT _dv_synced_at FROM {ref(engine)}")
    assert {str(s[0])[:10] for s in synced} == {"2026-01-02"}

    changed = await commit(engine, layout, t[4], rows=[row(1, "a", 1), row(2, "b2", 2)])
    assert (changed.changed, changed.commit_seq) == (1, 2)
    assert await seqs(engine) == {key(1): 1, key(2): 2}
    gone = await commit(engine, layout, t[5], deleted_ids=[key(1), key(9)])
    assert (gone.deleted, gone.commit_seq) == (1, 3)
    await commit(engine, layout, t[6], rows=[row(3, "c", 1)])
    swept = await commit(engine, layout, t[7], sweep_before=t[6], rows=[row(3, "c", 1)])
    assert (swept.deleted, swept.commit_seq) == (1, 5)  # key 2 was not seen since t[6]
    assert await feed_rows(engine) == [
        (1, "account", 2, 0),
        (2, "account", 1, 0),
        (3, "account", 0, 1),
        (4, "account", 1, 0),
        (5, "account", 0, 1),
    ]
    logged = await fetch(
        engine, 'SELECT id, _dv_commit_seq FROM "_dv_deletions" ORDER BY _dv_commit_seq'
    )
    assert [(str(i), int(s)) for i, s in logged] == [(key(1), 3), (key(2), 5)]


async def test_soft_deletes_and_revivals_are_numbered(engine: Any) -> None:
    layout = await mirror(engine, soft=True)
    t = [stamp(NOW + timedelta(minutes=i)) for i in range(4)]
    await commit(engine, layout, t[0], rows=[row(1, "a", 1)])
    deleted = await commit(engine, layout, t[1], deleted_ids=[key(1)])
    assert (deleted.deleted, deleted.commit_seq) == (1, 2)
    twice = await commit(engine, layout, t[2], deleted_ids=[key(1)])  # already soft-deleted
    assert twice.commit_seq is None
    revived = await commit(engine, layout, t[3], rows=[row(1, "a", 1)])  # same version, alive
    assert (revived.changed, revived.commit_seq) == (1, 3)
    assert await seqs(engine) == {key(1): 3}


@dataclass
class Poller:
    """A downstream load: `_dv_commit_seq` in (last, newest], applied in number order."""

    last: int = 0
    copy: dict[str, tuple[str, int]] = field(default_factory=dict)

    async def poll(self, engine: Any) -> None:
        async with engine.connect() as conn:
            newest = int(
                (
                    await conn.execute(
                        text("SELECT coalesce(max(seq), 0) FROM dv_commits WHERE environment = :e"),
                        {"e": ENV},
                    )
                ).scalar_one()
            )
            window = {"last": self.last, "newest": newest}
            rows = await conn.execute(
                text(
                    f"SELECT accountid, name, _dv_version, _dv_commit_seq FROM {ref(engine)} "
                    "WHERE _dv_commit_seq > :last AND _dv_commit_seq <= :newest"
                ),
                window,
            )
            gone = await conn.execute(
                text(
                    'SELECT id, _dv_commit_seq FROM "_dv_deletions" WHERE environment = :e '
                    "AND _dv_commit_seq > :last AND _dv_commit_seq <= :newest"
                ),
                window | {"e": ENV},
            )
            events: list[tuple[int, int, str, tuple[Any, int] | None]]
            events = [(int(r[3]), 1, str(r[0]), (r[1], int(r[2]))) for r in rows]
            events += [(int(g[1]), 0, str(g[0]), None) for g in gone]
        for _, _, id_, values in sorted(events, key=lambda e: (e[0], e[1])):
            if values is None:
                self.copy.pop(id_, None)
            else:
                self.copy[id_] = values
        self.last = newest


@dataclass
class StampPoller:
    """The old guidance: `_dv_synced_at > :last`."""

    last: Any = None
    copy: dict[str, tuple[str, int]] = field(default_factory=dict)

    async def poll(self, engine: Any) -> None:
        where = "" if self.last is None else "WHERE _dv_synced_at > :last"
        found = await fetch(
            engine,
            f"SELECT accountid, name, _dv_version, _dv_synced_at FROM {ref(engine)} {where}",
            last=self.last,
        )
        for id_, name, version, synced in found:
            self.copy[str(id_)] = (name, int(version))
            self.last = synced if self.last is None else max(self.last, synced)


async def mirror_copy(engine: Any) -> dict[str, tuple[str, int]]:
    found = await fetch(engine, f"SELECT accountid, name, _dv_version FROM {ref(engine)}")
    return {str(k): (n, int(v)) for k, n, v in found}


async def test_stamps_out_of_commit_order_lose_rows_only_for_the_stamp_reader(engine: Any) -> None:
    """Two pages: A stamped first but committed last (its fetch was slower). The reader of
    `_dv_synced_at > :last` never sees A's row; the reader of `_dv_commit_seq` does."""
    layout = await mirror(engine)
    early, late = stamp(NOW), stamp(NOW + timedelta(seconds=5))
    by_seq, by_stamp = Poller(), StampPoller()
    await commit(engine, layout, late, rows=[row(2, "b", 1)])  # B
    await by_seq.poll(engine)
    await by_stamp.poll(engine)
    await commit(engine, layout, early, rows=[row(1, "a", 1)])  # A commits after B
    await by_seq.poll(engine)
    await by_stamp.poll(engine)
    assert by_seq.copy == await mirror_copy(engine) == {key(1): ("a", 1), key(2): ("b", 1)}
    assert key(1) not in by_stamp.copy


@pytest.mark.postgres
async def test_postgres_numbers_follow_commit_order(pg_url: str) -> None:
    """While one page's transaction is open (its number taken), a second one of the same
    environment waits: it cannot commit a higher number before the first commits, and a reader
    in between sees neither."""
    engine = create_engine(pg_url)
    try:
        await upgrade(engine)
        layout = await mirror(engine)
        poller = Poller()
        first = PageWrite(rows=[row(1, "a", 1)], synced_at=stamp(NOW))
        second = PageWrite(rows=[row(2, "b", 1)], synced_at=stamp(NOW))
        async with engine.connect() as conn_a, engine.connect() as conn_b:
            tx_a = await conn_a.begin()
            counts_a = await write_page(conn_a, layout.writer, first, observed_at=stamp(NOW))

            async def other() -> PageCounts:
                async with conn_b.begin():
                    return await write_page(conn_b, layout.writer, second, observed_at=stamp(NOW))

            task = asyncio.create_task(other())
            await asyncio.sleep(0.5)
            assert not task.done()  # waiting for the environment's feed lock
            await poller.poll(engine)
            assert poller.copy == {}
            await tx_a.commit()
            counts_b = await asyncio.wait_for(task, 10)
        assert (counts_a.commit_seq, counts_b.commit_seq) == (1, 2)
        await poller.poll(engine)
        assert poller.copy == await mirror_copy(engine)
        assert len(poller.copy) == 2
    finally:
        await engine.dispose()


RANGES = 8
PER_RANGE = 40


async def test_a_poller_ends_with_exactly_the_mirror_under_concurrent_ranges(engine: Any) -> None:
    """Eight key ranges commit pages concurrently (with stamps taken before each transaction,
    as the table jobs do), a delta task churns rows across them (updates, deletes, re-creates),
    and a reader polls `_dv_commit_seq > :last` throughout: at the end its copy is the mirror.
    The numbers in dv_commits are 1..N without a gap."""
    layout = await mirror(engine)
    rng = random.Random(23)
    versions: dict[int, int] = {}

    def next_row(n: int) -> tuple[Any, ...]:
        versions[n] = versions.get(n, 0) + 1
        return row(n, f"name {n} v{versions[n]}", versions[n])

    async def page(**kwargs: Any) -> None:
        synced = stamp(datetime.now(UTC))
        await asyncio.sleep(rng.random() * 0.01)  # the page's fetch, after its stamp
        await commit(engine, layout, synced, **kwargs)

    async def key_range(number: int) -> None:
        first = number * PER_RANGE
        for start in range(first, first + PER_RANGE, 10):
            await page(rows=[next_row(n) for n in range(start, start + 10)])

    async def churn() -> None:
        for _ in range(30):
            picked = rng.sample(range(RANGES * PER_RANGE), 6)
            await page(rows=[next_row(n) for n in picked[:4]], deleted_ids=[key(picked[4])])
            await page(deleted_ids=[key(picked[5])])

    by_seq, by_stamp = Poller(), StampPoller()
    writers = asyncio.gather(*(key_range(n) for n in range(RANGES)), churn())
    while not writers.done():
        await by_seq.poll(engine)
        await by_stamp.poll(engine)
        await asyncio.sleep(0.005)
    await writers
    await by_seq.poll(engine)
    await by_stamp.poll(engine)
    exact = await mirror_copy(engine)
    assert len(exact) > RANGES * PER_RANGE // 2
    assert by_seq.copy == exact
    numbers = [r[0] for r in await feed_rows(engine)]
    assert numbers == list(range(1, len(numbers) + 1))
    assert by_seq.last == numbers[-1]


def config_for(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "dvmirror.toml"
    path.write_text(
        f"""
[app]
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "DVMIRROR_CLIENT_SECRET" }}

[store]
url = "{url}"

[[tenants]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenants.environments]]
name = "{ENV}"
url = "https://contoso.crm.dynamics.com"
tables = ["account"]
"""
    )
    return path


async def test_feed_command_and_status_give_the_newest_number(
    engine: Any, store_url: str, tmp_path: Path
) -> None:
    layout = await mirror(engine)
    t = [stamp(NOW + timedelta(minutes=i)) for i in range(3)]
    await commit(engine, layout, t[0], rows=[row(1, "a", 1), row(2, "b", 1)])
    await commit(engine, layout, t[1], rows=[row(1, "a", 1)])  # identical: no number
    await commit(engine, layout, t[2], deleted_ids=[key(2)])
    config = config_for(tmp_path, store_url)
    secret = {"DVMIRROR_CLIENT_SECRET": "feed-test-secret"}
    result = run_cli("--config", config, "feed", "--env", ENV, "--since", "1", "--json", env=secret)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["max_seq"] == 2 and document["since"] == 1
    assert [(c["seq"], c["table"], c["upserts"], c["deletes"]) for c in document["commits"]] == [
        (2, "account", 0, 1)
    ]
    assert document["commits"][0]["committed_at"].startswith("2026-01-02T03:06:05")
    text_out = run_cli("--config", config, "feed", "--env", ENV, "--since", "0", env=secret)
    assert text_out.returncode == 0, text_out.stderr
    assert "max seq: 2" in text_out.stdout
    status = run_cli("--config", config, "status", "--json", env=secret)
    [env] = json.loads(status.stdout)["environments"]
    assert env["commit_seq"] == 2
    unknown = run_cli("--config", config, "feed", "--env", "nope", "--since", "0", env=secret)
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "environment 'nope' is not in" in unknown.stderr
    negative = run_cli("--config", config, "feed", "--env", ENV, "--since", "-1", env=secret)
    assert negative.returncode == 2 and "Traceback" not in negative.stderr


async def test_a_mirror_made_before_the_feed_gets_its_column(engine: Any) -> None:
    """The mirror DDL's drift path adds `_dv_commit_seq` (and its index) to an older mirror:
    its rows keep NULL until they change, and changes from then on are numbered."""
    layout = await mirror(engine)
    await commit(engine, layout, stamp(NOW), rows=[row(1, "a", 1), row(2, "b", 1)])
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for (index,) in await conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE "
                "'%_dv_commit_seq%' AND tbl_name = 'contoso_prod__account'"
            ):
                await conn.exec_driver_sql(f'DROP INDEX "{index}"')
        await conn.exec_driver_sql(f"ALTER TABLE {ref(engine)} DROP COLUMN _dv_commit_seq")
    older = await mirror(engine)
    assert await seqs(engine) == {key(1): None, key(2): None}
    later = stamp(NOW + timedelta(minutes=1))
    counts = await commit(engine, older, later, rows=[row(1, "a", 1), row(2, "b2", 2)])
    assert counts.changed == 1  # an unchanged old row keeps NULL: a first load copies it all
    assert await seqs(engine) == {key(1): None, key(2): 2}
    again = await mirror(engine)  # idempotent: nothing left to add
    assert not again.drift.changed
