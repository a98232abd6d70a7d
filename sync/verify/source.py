"""What verify asks Dataverse, through the environment's governed client.

Every request here goes through `DataverseClient.get` (the governor's slot, the retry rules, the
link-origin check). Key/version pages are measured in bytes, so a run can say what its narrow
pages cost beside a full page of the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sync.dataverse.client import DataverseClient
from sync.dataverse.odata import api_url, request_headers
from sync.errors import DvmirrorError, HostileResponseError
from sync.limits import MAX_PAGE_SIZE
from sync.mirror.cursor import collection_url, select_params
from sync.mirror.fetch import ExactClient
from sync.mirror.keyranges import KeyRange, valid_key
from sync.mirror.page import DecodedPage
from sync.mirror.rowshape import RowShaper
from sync.store.layout import TableSchema
from sync.verify.plan import MAX_URL, key_chunks, key_filter

AGGREGATE_REFUSED = ("AggregateQueryRecordLimit", "0x8004E023", "0x8004e023")


@dataclass
class Measured:
    """Bytes and rows of the pages read, for the narrow-page cost figure."""

    key_bytes: int = 0
    key_rows: int = 0
    full_bytes: int = 0
    full_rows: int = 0


def _measured(body: bytes) -> tuple[int, Any]:
    return len(body), orjson.loads(body)


async def record_counts(
    client: DataverseClient, environment_url: str, tables: Sequence[str]
) -> dict[str, int]:
    """One RetrieveTotalRecordCount for every table: the snapshot's counts (up to 24 h old)."""
    names = orjson.dumps(list(tables)).decode()
    url = api_url(environment_url, "RetrieveTotalRecordCount(EntityNames=@p)") + f"?@p={names}"
    document = await client.get(url)
    counts = document.get("EntityRecordCountCollection") if isinstance(document, Mapping) else None
    keys = counts.get("Keys") if isinstance(counts, Mapping) else None
    values = counts.get("Values") if isinstance(counts, Mapping) else None
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise HostileResponseError(
            f"environment {client.environment.name}: RetrieveTotalRecordCount sent no counts"
        )
    return {str(k): int(v) for k, v in zip(keys, values, strict=True) if type(v) is int}


async def range_count(
    client: DataverseClient, environment_url: str, schema: TableSchema, key_range: KeyRange
) -> int | None:
    """Exact live rows of one key range (`$apply` aggregate); None when the service refuses to
    count that many (over 50,000 rows)."""
    condition = key_range.filter(schema.primary_key)
    apply = f"filter({condition})/" if condition else ""
    url = collection_url(
        environment_url, schema.entity_set, [("$apply", f"{apply}aggregate($count as n)")]
    )
    try:
        document = await client.get(url, table=schema.table, cost_class=f"count:{schema.table}")
    except DvmirrorError as exc:
        if any(marker in exc.message for marker in AGGREGATE_REFUSED):
            return None
        raise
    value = document.get("value") if isinstance(document, Mapping) else None
    first = value[0] if isinstance(value, list) and value else None
    count = first.get("n") if isinstance(first, Mapping) else None
    if type(count) is not int or count < 0:
        raise HostileResponseError(
            f"table {schema.table}: the aggregate count is not a number", table=schema.table
        )
    return count


def _version(row: Mapping[str, Any]) -> int | None:
    version = row.get("versionnumber")
    if type(version) is int:
        return version
    etag = row.get("@odata.etag")
    if isinstance(etag, str) and etag.startswith('W/"') and etag[3:-1].isdigit():
        return int(etag[3:-1])
    return None


async def _key_pages(
    client: DataverseClient, url: str, schema: TableSchema, measured: Measured
) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    headers = request_headers(page_size=MAX_PAGE_SIZE)
    next_url: str | None = url
    while next_url is not None:
        size, document = await client.get(
            next_url,
            table=schema.table,
            headers=headers,
            decoder=_measured,
            cost_class=f"keys:{schema.table}",
        )
        rows = document.get("value") if isinstance(document, Mapping) else None
        if not isinstance(rows, list):
            raise HostileResponseError(f"table {schema.table}: a page without rows")
        for row in rows:
            key = row.get(schema.primary_key) if isinstance(row, Mapping) else None
            if not valid_key(key):
                raise HostileResponseError(f"table {schema.table}: a row without a valid key")
            assert isinstance(key, str)
            found[key.lower()] = _version(row)
        measured.key_bytes += size
        measured.key_rows += len(rows)
        link = document.get("@odata.nextLink")
        next_url = link if isinstance(link, str) else None
    return found


async def range_versions(
    client: DataverseClient,
    environment_url: str,
    schema: TableSchema,
    key_range: KeyRange,
    measured: Measured,
) -> dict[str, int | None]:
    """Key → versionnumber of every live row of a range (`$select=<pk>,versionnumber`)."""
    params = [("$select", f"{schema.primary_key},versionnumber")]
    condition = key_range.filter(schema.primary_key)
    if condition:
        params.append(("$filter", condition))
    url = collection_url(environment_url, schema.entity_set, params)
    return await _key_pages(client, url, schema, measured)


def _key_urls(
    environment_url: str, schema: TableSchema, keys: Sequence[str], select: list[tuple[str, str]]
) -> list[str]:
    """GET URLs selecting `keys` (`Microsoft.Dynamics.CRM.In` on the key), each within MAX_URL
    characters with its `$select`."""
    base = collection_url(environment_url, schema.entity_set, select)
    room = MAX_URL - len(base) - len("&$filter=")
    return [
        collection_url(
            environment_url,
            schema.entity_set,
            [*select, ("$filter", key_filter(schema.primary_key, chunk))],
        )
        for chunk in key_chunks(schema.primary_key, keys, room=room)
    ]


async def versions_of(
    client: DataverseClient,
    environment_url: str,
    schema: TableSchema,
    keys: Sequence[str],
    measured: Measured,
) -> dict[str, int | None]:
    """Key → versionnumber of those of `keys` that exist in the source now."""
    found: dict[str, int | None] = {}
    select = [("$select", f"{schema.primary_key},versionnumber")]
    for url in _key_urls(environment_url, schema, keys, select):
        found.update(await _key_pages(client, url, schema, measured))
    return found


async def full_page_cost(
    client: ExactClient, environment_url: str, schema: TableSchema, measured: Measured
) -> None:
    """One full-width page (every mirrored column) of a few rows: its bytes per row."""
    params = [*select_params(schema.select)]
    url = collection_url(environment_url, schema.entity_set, params)
    headers = request_headers(page_size=50)
    size, document = await client.get(
        url,
        table=schema.table,
        headers=headers,
        decoder=_measured,
        cost_class=f"table:{schema.table}",
    )
    rows = document.get("value") if isinstance(document, Mapping) else None
    if isinstance(rows, list) and rows:
        measured.full_bytes += size
        measured.full_rows += len(rows)


async def rows_of(
    client: ExactClient, environment_url: str, shaper: RowShaper, keys: Sequence[str]
) -> list[list[tuple[Any, ...]]]:
    """The current rows of `keys`, as writer tuples, one list per URL-sized chunk."""
    schema = shaper.schema
    chunks: list[list[tuple[Any, ...]]] = []
    for url in _key_urls(environment_url, schema, keys, select_params(schema.select)):
        rows: list[tuple[Any, ...]] = []
        next_url: str | None = url
        while next_url is not None:
            page: DecodedPage = await client.fetch_page(
                next_url, shaper, track_changes=False, cost_class=f"table:{schema.table}"
            )
            rows += page.tuples
            next_url = page.next_link
        chunks.append(rows)
    return chunks
