"""The reference of `dvmirror bench`: a plain concurrent reader that writes nothing.

What a careless but fast hand-written reader gets: one token from the authority's token
endpoint, then one nextLink chain per table, all at once, with the same `$select` and `Prefer`
headers as dvmirror (page size, annotations), each page parsed with orjson and counted. It obeys
`Retry-After` for the whole application user (as Dataverse means it: no request of that user
leaves before the time is up) and retries a 5xx or a broken connection a few times; nothing
else: no governor, no budget, no checkpoints, no database.

The columns are discovered beforehand (a hand-written reader would have them in its code);
`seconds` runs from the first page request to the last page, and `ended` says when that was, so
the bench can also time the reader from its first request (discovery included), as it times
dvmirror.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from sync.dataverse.odata import collection_url, request_headers
from sync.mirror.discovery import discover_table
from sync.store.layout import TableSchema

TRANSIENT = frozenset({500, 502, 503, 504})
RETRIES = 5


@dataclass
class ReadResult:
    """Rows per table, the wall time of the page read, and when it ended (time.monotonic())."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    ended: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class Pause:
    """The application user's `Retry-After`: no request leaves before `until`."""

    def __init__(self) -> None:
        self.until = 0.0

    def hold(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while True:  # a 429 that arrives meanwhile moves `until` further
            left = self.until - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)


class PlainReader:
    """GETs with a bearer token, Retry-After obeyed, a few retries of transient failures."""

    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self._session = session
        self._token = token
        self._pause = Pause()

    async def body(self, url: str, headers: Mapping[str, str]) -> bytes:
        failures = 0
        while True:
            await self._pause.wait()
            try:
                async with self._session.get(
                    url, headers={**headers, "Authorization": f"Bearer {self._token}"}
                ) as response:
                    body = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                status, body, retry_after = 0, b"", None
            if status == 200:
                return body
            if status == 429:
                self._pause.hold(float(retry_after or 5))
                continue
            failures += 1
            if (status in TRANSIENT or status == 0) and failures <= RETRIES:
                await asyncio.sleep(float(retry_after or 2**failures))
                continue
            raise RuntimeError(f"the plain reader got HTTP {status} for {url}: {body[:300]!r}")

    async def get(
        self, url: str, *, table: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        """A JSON document (what discovery needs)."""
        return orjson.loads(await self.body(url, headers or request_headers()))

    async def chain(self, url: str, *, page_size: int) -> int:
        """Follow one nextLink chain to its end; the rows it returned."""
        headers = request_headers(page_size=page_size)
        rows = 0
        next_url: str | None = url
        while next_url is not None:
            document = orjson.loads(await self.body(next_url, headers))
            rows += len(document["value"])
            next_url = document.get("@odata.nextLink")
        return rows


async def client_token(
    session: aiohttp.ClientSession,
    ready: Mapping[str, Any],
    tenant_id: str,
    client_id: str,
    url: str,
) -> str:
    """A client-credentials token for `url` from the simulated authority's token endpoint."""
    app = next(a for a in ready["apps"] if a["client_id"] == client_id)
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": app["client_secret"],
        "scope": f"{url}/.default",
    }
    async with session.post(
        f"{ready['authority_host']}/{tenant_id}/oauth2/v2.0/token", data=form
    ) as response:
        payload = await response.json()
    if "access_token" not in payload:
        raise RuntimeError(f"no token for the plain reader: {payload.get('error_description')}")
    return str(payload["access_token"])


async def read_tables(
    ready: Mapping[str, Any],
    *,
    environment: str,
    tables: Sequence[str],
    client_id: str,
    page_size: int,
) -> tuple[ReadResult, dict[str, TableSchema]]:
    """Read every table of `environment` at once, one chain each; also their schemas."""
    tenant, env = next(
        (t, e) for t in ready["tenants"] for e in t["environments"] if e["name"] == environment
    )
    context = ssl.create_default_context(cafile=ready["ca_file"])
    connector = aiohttp.TCPConnector(ssl=context, limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        token = await client_token(session, ready, tenant["tenant_id"], client_id, env["url"])
        reader = PlainReader(session, token)
        schemas = {t: await discover_table(reader, env["url"], t) for t in tables}
        urls = [
            collection_url(env["url"], schemas[t].entity_set, schemas[t].select) for t in tables
        ]
        started = time.monotonic()
        counts = await asyncio.gather(*(reader.chain(u, page_size=page_size) for u in urls))
        ended = time.monotonic()
    return ReadResult(dict(zip(tables, counts, strict=True)), ended - started, ended), schemas
