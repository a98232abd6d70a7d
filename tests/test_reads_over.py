"""Work that must follow a table's last read starts when that read's body arrives, not after
its commit: a new table's first page is asked for while its mirror is created, and a
backfill's metadata refresh reads its answers once every table has made its last read
(sync.dataverse.peek.surely_last, sync.mirror.ahead, TableJob's `on_reads_over`,
sync.mirror.metadata_refresh.RefreshAfterReads). Pure tests first, then the real jobs and
client against the simulator."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.config.loading import load_config
from sync.dataverse.client import BodyHook
from sync.dataverse.peek import surely_last
from sync.mirror import cursor as cur
from sync.mirror.ahead import FetchAhead
from sync.mirror.job import TableJob
from sync.mirror.job_types import PageProgress
from sync.mirror.metadata_refresh import RefreshAfterReads
from sync.mirror.page import DecodedPage
from sync.mirror.runner import run_job
from sync.runtime.wiring import Wiring
from sync.store.open import open_store
from tests.cli import clean_env
from tests.simfixtures import _no_ca_env, admin, running_simulator, user_stats  # noqa: F401

ORIGIN = "https://org.crm.dynamics.com"
URL = f"{ORIGIN}/api/data/v9.2/accounts?p="


# -- surely_last: pure ---------------------------------------------------------------------


def test_a_page_without_the_key_is_surely_last() -> None:
    assert surely_last(orjson.dumps({"value": [{"name": "a"}], "@odata.deltaLink": "x"}))


def test_a_page_with_a_link_is_not_in_any_spelling_json_allows() -> None:
    assert not surely_last(orjson.dumps({"value": [], "@odata.nextLink": URL + "2"}))
    assert not surely_last(b'{"value": [], "@odata.nextLink" : "' + URL.encode() + b'2"}')


def test_text_quoting_the_key_does_not_hide_the_end() -> None:
    """A row value that mentions the key is escaped in the raw bytes: still the last page."""
    rows = [{"description": 'see "@odata.nextLink": here', "name@odata.nextLink": "x"}]
    body = orjson.dumps({"value": rows})
    assert b"@odata.nextLink" in body
    assert surely_last(body)


# -- FetchAhead tells of the last body before it is decoded --------------------------------


async def test_the_last_body_is_reported_before_its_page_is_decoded() -> None:
    bodies = {
        URL + "0": orjson.dumps({"value": [], "@odata.nextLink": URL + "1"}),
        URL + "1": orjson.dumps({"value": [], "@odata.deltaLink": URL + "delta"}),
    }
    events: list[str] = []
    decoding = asyncio.Event()

    async def fetch(request: cur.Request, on_body: BodyHook | None) -> DecodedPage:
        body = bodies[request.url]
        assert on_body is not None
        on_body(body)
        await decoding.wait()  # decoding takes a while
        events.append(f"decoded {request.url}")
        document = orjson.loads(body)
        return DecodedPage([], [], document.get("@odata.nextLink"), None, [])

    ahead = FetchAhead(fetch, ORIGIN, on_last_body=lambda r: events.append(f"last {r.url}"))
    decoding.set()
    await ahead.page(cur.Request("rows", URL + "0", True))
    assert events == [f"decoded {URL}0"]  # a page with a link is not the last
    decoding.clear()
    page = asyncio.ensure_future(ahead.page(cur.Request("rows", URL + "1", True)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert events == [f"decoded {URL}0", f"last {URL}1"]  # told, not decoded yet
    decoding.set()
    await page
    assert events[-1] == f"decoded {URL}1"
    await ahead.cancel()


# -- against the simulator: the real jobs, client and store --------------------------------


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("sim-reads-over")) as ready:
        yield ready


def configured(sim: dict[str, Any], directory: Path) -> Path:
    """The simulator's configuration, 50-row pages in contoso_prod, the store in `directory`."""
    text = Path(sim["config_file"]).read_text()
    text = text.replace('name = "contoso_prod"', 'name = "contoso_prod"\npage_size = 50', 1)
    text = text.replace(str(Path(sim["state_dir"]) / "dvmirror"), str(directory))
    path = directory / "dvmirror.toml"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("no_ca_env")
def test_metadata_is_read_after_every_last_read_and_before_the_last_commit(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """Each job tells of its last read once, before its last page commits and not before the
    page two ahead of it did; the refresh then writes the metadata of the tables that
    ran, leaving out one that failed without failing itself."""
    config = load_config(configured(sim, tmp_path), clean_env())
    tenant, environment = next((t, e) for t, e in config.environments() if e.name == "contoso_prod")
    tables = ["account", "contact", "nosuchtable"]
    told: list[str] = []
    commits: list[tuple[str, bool, bool]] = []  # table, last page, told by then

    async def scenario() -> list[Any]:
        store = await open_store(config)
        wiring = Wiring(config, store)
        try:
            client = wiring.client(tenant, environment, wiring.governor(tenant, environment))
            async with client:
                refresh = RefreshAfterReads(
                    client,
                    store,
                    environment=environment.name,
                    environment_url=environment.url,
                    tables=tables,
                )

                def job(table: str) -> TableJob:
                    def committed(page: PageProgress) -> None:
                        commits.append((table, page.cycle_done, table in told))

                    def reads_over() -> None:
                        told.append(table)
                        refresh.reads_over(table)()

                    return TableJob(
                        store=store,
                        client=client,
                        environment=environment,
                        table=table,
                        command="backfill",
                        reconcile_every=None,
                        on_page=committed,
                        on_reads_over=reads_over,
                    )

                results = await asyncio.gather(*(run_job(job(t), until="backfill") for t in tables))
                ran = [r.table for r in results if r.ok]
                assert ran == ["account", "contact"]
                return await refresh.results(ran, now=datetime.now(UTC))
        finally:
            await wiring.close()
            await store.dispose()

    assert asyncio.run(scenario()) == []  # the failed table does not fail the refresh
    assert sorted(told) == sorted(tables)  # each job told once, the failed one too
    for table, pages in (("account", 6), ("contact", 4)):  # 300 and 200 rows, 50 a page
        mine = [(last, known) for t, last, known in commits if t == table]
        assert len(mine) == pages
        assert mine[-1] == (True, True)  # told before the last page committed
        # At most one request ahead: the last is sent once page n-1 is taken, after page
        # n-2's commit, so it cannot have arrived before then.
        assert all(not known for _, known in mine[:-2])
    with sqlite3.connect(tmp_path / "mirror.db") as conn:
        entities = {
            row[0]
            for row in conn.execute(
                'SELECT DISTINCT entityname FROM "contoso_prod__attributemetadata"'
            )
        }
    assert entities == {"account", "contact"}


@pytest.mark.usefixtures("no_ca_env")
def test_a_new_tables_first_page_is_asked_for_while_its_mirror_is_prepared(
    sim: dict[str, Any], tmp_path: Path
) -> None:
    """After prepare() alone (no step yet), the simulator serves the first page; the first
    step takes that answer, so no page is read twice and the mirror holds every row."""
    config = load_config(configured(sim, tmp_path), clean_env())
    tenant, environment = next((t, e) for t, e in config.environments() if e.name == "contoso_prod")

    async def scenario() -> None:
        store = await open_store(config)
        wiring = Wiring(config, store)
        try:
            client = wiring.client(tenant, environment, wiring.governor(tenant, environment))
            async with client:
                job = TableJob(
                    store=store,
                    client=client,
                    environment=environment,
                    table="contact",
                    command="backfill",
                    reconcile_every=None,
                )
                admin(sim, "POST", "/stats/reset")
                await job.prepare()
                for _ in range(200):  # the answer is rendered beside prepare's own work
                    if user_stats(sim, "contoso_prod").get("rows_served", 0) >= 50:
                        break
                    await asyncio.sleep(0.025)
                assert user_stats(sim, "contoso_prod")["rows_served"] == 50
                while await job.step():
                    pass
                await job.finish()
        finally:
            await wiring.close()
            await store.dispose()

    asyncio.run(scenario())
    stats = user_stats(sim, "contoso_prod")
    assert stats["rows_served"] == 200  # 4 pages of 50, each read once
    assert stats["continuations_repeated"] == 0
    with sqlite3.connect(tmp_path / "mirror.db") as conn:
        assert conn.execute('SELECT count(*) FROM "contoso_prod__contact"').fetchone() == (200,)
