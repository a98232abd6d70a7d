"""Page k+1 is asked for as soon as page k's body has arrived, from the nextLink read in its raw
bytes (sync.dataverse.peek), and the guess is dropped when the decoded page says otherwise
(sync.mirror.ahead). Pure tests with plain bodies and a plain fetch function, then one backfill
against the simulator: no request is wasted or repeated."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sync.dataverse.client import BodyHook
from sync.dataverse.peek import peek_next_link
from sync.mirror import cursor as cur
from sync.mirror.ahead import FetchAhead
from sync.mirror.page import DecodedPage
from tests import mirror_compare as compare
from tests.cli import run_cli
from tests.simfixtures import _no_ca_env, admin, running_simulator, user_stats  # noqa: F401

ORIGIN = "https://org.crm.dynamics.com"
LINK = f"{ORIGIN}/api/data/v9.2/accounts?$select=name&$skiptoken=%3Ccookie%20page=%222%22/%3E"


def page_body(rows: list[dict[str, Any]], **links: str) -> bytes:
    return orjson.dumps({"@odata.context": "x", "value": rows, **links})


# -- peek_next_link: pure ------------------------------------------------------------------


def test_reads_the_link_after_the_rows() -> None:
    body = page_body([{"name": "a"}] * 3, **{"@odata.nextLink": LINK})
    assert peek_next_link(body) == LINK == orjson.loads(body)["@odata.nextLink"]


def test_no_link_on_a_last_page() -> None:
    assert peek_next_link(page_body([{"name": "a"}], **{"@odata.deltaLink": LINK})) is None
    assert peek_next_link(b"") is None


def test_escapes_are_decoded_as_json_does() -> None:
    link = LINK + '&x="quoted"\\back/slash'
    body = page_body([], **{"@odata.nextLink": link})
    assert b'\\"' in body
    assert peek_next_link(body) == link


def test_a_value_that_mentions_the_key_is_not_a_link() -> None:
    """Inside a string the key's quotes are escaped: a row's text never reads as the link."""
    trap = '"@odata.nextLink":"https://evil.example/steal"'
    body = page_body([{"name": trap}])
    assert peek_next_link(body) is None
    body = page_body([{"name": trap}], **{"@odata.nextLink": LINK})
    assert peek_next_link(body) == LINK


def test_a_prefixed_annotation_inside_a_row_is_not_the_page_link() -> None:
    body = page_body([{"contacts@odata.nextLink": f"{ORIGIN}/other"}])
    assert peek_next_link(body) is None


def test_spaces_after_the_colon_and_malformed_values() -> None:
    assert peek_next_link(b'{"value":[],"@odata.nextLink" : "x"}') is None  # key then space
    assert peek_next_link(b'{"value":[],"@odata.nextLink":  "' + LINK.encode() + b'"}') == LINK
    assert peek_next_link(b'{"value":[],"@odata.nextLink":null}') is None
    assert peek_next_link(b'{"value":[],"@odata.nextLink":""}') is None
    assert peek_next_link(b'{"value":[],"@odata.nextLink":"cut short') is None
    assert peek_next_link(b'{"value":[],"@odata.nextLink":"bad \\q escape"}') is None


# -- FetchAhead: plain asyncio, a plain fetch function ---------------------------------------


class Server:
    """Answers each request with a body (sent to the hook first, as the client does), and
    records the order in which requests were sent and answers decoded."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.events: list[str] = []
        self.decode_gate = asyncio.Event()
        self.decode_gate.set()

    async def fetch(self, request: cur.Request, on_body: BodyHook | None) -> DecodedPage:
        self.events.append(f"send {request.url}")
        await asyncio.sleep(0)
        body = self.bodies[request.url]
        if on_body is not None:
            on_body(body)
        await self.decode_gate.wait()  # decoding takes a while
        self.events.append(f"decoded {request.url}")
        document = orjson.loads(body)
        return DecodedPage([], [], document.get("@odata.nextLink"), None, [])


def chain(count: int) -> dict[str, bytes]:
    urls = [f"{ORIGIN}/api/data/v9.2/accounts?p={n}" for n in range(count)]
    bodies = {}
    for n, url in enumerate(urls):
        links = {"@odata.nextLink": urls[n + 1]} if n + 1 < count else {}
        bodies[url] = page_body([{"name": str(n)}], **links)
    return bodies


def request(url: str) -> cur.Request:
    return cur.Request("rows", url, True)


async def test_the_next_request_leaves_before_the_page_is_decoded() -> None:
    bodies = chain(3)
    first, second, third = bodies
    server = Server(bodies)
    ahead = FetchAhead(server.fetch, ORIGIN)
    server.decode_gate.clear()
    page = asyncio.ensure_future(ahead.page(request(first)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert server.events == [f"send {first}", f"send {second}"]  # page 1 not decoded yet
    assert ahead.pending == request(second)
    server.decode_gate.set()
    decoded = await page
    assert decoded.next_link == second
    await ahead.keep_or_start(request(second))  # the planned request is the one sent: kept
    assert server.events.count(f"send {second}") == 1
    assert (await ahead.page(request(second))).next_link == third
    await ahead.cancel()


async def test_a_wrong_guess_is_dropped_for_the_planned_request() -> None:
    bodies = chain(2)
    first, second = bodies
    planned = f"{ORIGIN}/api/data/v9.2/accounts?planned"
    bodies[planned] = page_body([])
    server = Server(bodies)
    ahead = FetchAhead(server.fetch, ORIGIN)
    await ahead.page(request(first))
    assert ahead.pending == request(second)
    await ahead.keep_or_start(request(planned))
    assert ahead.pending == request(planned)
    # The same URL planned as another kind of request is not the guess either.
    await ahead.keep_or_start(cur.Request("keys", planned, False))
    assert ahead.pending == cur.Request("keys", planned, False)
    await ahead.cancel()
    assert ahead.pending is None


async def test_nothing_more_is_sent_while_a_page_commits() -> None:
    """At most one request ahead: a body arriving during a commit sends nothing."""
    bodies = chain(3)
    first, second, _ = bodies
    server = Server(bodies)
    ahead = FetchAhead(server.fetch, ORIGIN)
    ahead.committing = True
    await ahead.page(request(first))
    assert ahead.pending is None
    assert server.events == [f"send {first}", f"decoded {first}"]
    ahead.committing = False
    await ahead.keep_or_start(request(second))
    assert ahead.pending == request(second)
    await ahead.cancel()


async def test_no_guess_to_another_origin_nor_to_the_same_link() -> None:
    url = f"{ORIGIN}/api/data/v9.2/accounts?p=0"
    server = Server(
        {
            url: page_body([], **{"@odata.nextLink": "https://evil.example/api/data/v9.2/x"}),
            f"{url}&loop": page_body([], **{"@odata.nextLink": f"{url}&loop"}),
        }
    )
    ahead = FetchAhead(server.fetch, ORIGIN)
    await ahead.page(request(url))
    assert ahead.pending is None
    await ahead.page(request(f"{url}&loop"))
    assert ahead.pending is None
    assert [e for e in server.events if e.startswith("send")] == [
        f"send {url}",
        f"send {url}&loop",
    ]


# -- against the simulator -----------------------------------------------------------------


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("sim-ahead")) as ready:
        yield ready


@pytest.mark.usefixtures("no_ca_env")
def test_a_backfill_sends_each_page_request_once(sim: dict[str, Any], tmp_path: Path) -> None:
    """Every guess matches the planned request (change-tracked pages included): the simulator
    sees each continuation link exactly once, and the mirror equals the source."""
    config = Path(sim["config_file"]).read_text()
    config = config.replace('name = "contoso_prod"', 'name = "contoso_prod"\npage_size = 50', 1)
    config = config.replace(str(Path(sim["state_dir"]) / "dvmirror"), str(tmp_path))
    path = tmp_path / "dvmirror.toml"
    path.write_text(config)
    admin(sim, "POST", "/stats/reset")
    result = run_cli("--config", path, "backfill", "--env", "contoso_prod", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    after = user_stats(sim, "contoso_prod")
    with sqlite3.connect(tmp_path / "mirror.db") as conn:
        pages = dict(
            conn.execute(
                "SELECT table_name, count(*) FROM dv_commits WHERE environment = 'contoso_prod'"
                " AND table_name IN ('account', 'contact') GROUP BY table_name"
            ).fetchall()
        )
    for table in ("account", "contact"):
        compare.assert_converged(sim, tmp_path / "mirror.db", "contoso_prod", table)
    assert after["continuations_repeated"] == 0
    # Every page but each table's first is a continuation, and none more was sent.
    assert sum(pages.values()) == 10  # 300 accounts and 200 contacts, 50 a page
    assert after["continuations"] == sum(pages.values()) - len(pages)
