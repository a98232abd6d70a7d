"""Decode one Web API page body into typed rows, tombstones and links, keeping decimals exact.

Pure. The body is the raw response bytes: `rowshape.protect_decimals()` quotes the numbers of the
numeric columns first, then orjson decodes (see rowshape's docstring for why), then
`dataverse.odata.parse_page()` splits rows from deleted-entity entries and `RowShaper` types them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sync.dataverse.odata import parse_page
from sync.errors import HostileResponseError
from sync.mirror.rowshape import InexactNumbers, RowShaper, decode_exact, protect_decimals
from sync.mirror.typemap import UUID_TEXT

DELETED_MARK = b"$deletedEntity"


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """What one page holds: typed row tuples, ids of deleted rows, and the links.

    `rows` (the decoded row objects) is empty unless the shaper keeps them (`keep_rows`).
    """

    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    next_link: str | None
    delta_link: str | None
    tuples: list[tuple[Any, ...]]


class NotJsonError(HostileResponseError):
    """The body is not JSON at all (often a cut connection: the client retries it first)."""


def _refuse(table: str, why: str) -> HostileResponseError:
    return HostileResponseError(
        f"table {table}: refused a page: {why}; nothing from it was written", table=table
    )


Split = tuple[list[dict[str, Any]], list[str], str | None, str | None]


def _split(payload: Any, table: str, *, tombstones: bool = True) -> Split:
    if not tombstones and isinstance(payload, dict):  # no deleted entries: no per-row work
        value = payload.get("value")
        next_link, delta_link = payload.get("@odata.nextLink"), payload.get("@odata.deltaLink")
        links_ok = all(x is None or (isinstance(x, str) and x) for x in (next_link, delta_link))
        if isinstance(value, list) and links_ok:
            return value, [], next_link, delta_link
    try:
        page = parse_page(payload, table=table)
    except HostileResponseError as exc:
        raise _refuse(table, exc.message) from None
    for ident in page.deleted_ids:
        if not UUID_TEXT.fullmatch(ident):
            raise _refuse(table, "a deleted-entity entry has no valid id")
    return page.rows, page.deleted_ids, page.next_link, page.delta_link


def decode_page(body: bytes, shaper: RowShaper) -> DecodedPage:
    """Decode, split and type one page; refuse anything that is not a well-formed OData page."""
    table = shaper.table
    numeric_keys = shaper.schema.numeric_keys
    protected, numeric_count = protect_decimals(body, numeric_keys)
    try:
        payload = orjson.loads(protected)
    except orjson.JSONDecodeError as exc:
        raise NotJsonError(
            f"table {table}: refused a page: not valid JSON ({exc.msg} at byte {exc.pos}); "
            "nothing from it was written",
            table=table,
        ) from None
    del protected  # a copy of the page: free it before the rows are shaped (peak memory)
    rows, deleted, next_link, delta_link = _split(payload, table, tombstones=DELETED_MARK in body)
    try:
        tuples = shaper.shape(rows, numeric_count=numeric_count)
    except InexactNumbers:
        payload, numeric_count = decode_exact(body, numeric_keys, shaper.float_keys)
        rows, deleted, next_link, delta_link = _split(payload, table)
        try:
            tuples = shaper.shape(rows, numeric_count=numeric_count)
        except InexactNumbers as exc:
            raise _refuse(table, f"column {exc} holds a value that is not a decimal") from None
    return DecodedPage(rows if shaper.keep_rows else [], deleted, next_link, delta_link, tuples)
