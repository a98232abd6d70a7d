"""A DataverseClient that hands row pages back decoded, typed and exact (see sync.mirror.rowshape).

The stock decoder is orjson, which turns Money/Decimal values into floats (rounding past 15
significant digits) and would cost a second full parse of every page. `fetch_page()` passes the
page's `RowShaper` as the client's decoder instead (exact decimals, typed tuples), so the one
HTTP policy of `DataverseClient.get()` applies unchanged: a body cut short is retried as a network
error, while a well-formed but hostile page raises HostileResponseError at once. Large pages are
decoded by the client's decode pool (sync.mirror.decode_workers, owned by the runtime's Wiring)
in a worker process, beside the SQLite write; without a pool they are decoded in the caller.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sync.config.tenants import Environment, Tenant
from sync.dataverse.client import BodyHook, DataverseClient
from sync.dataverse.odata import request_headers
from sync.dataverse.seams import RequestGate, TokenSource
from sync.errors import HostileResponseError
from sync.mirror.decode_workers import DecodePool
from sync.mirror.page import DecodedPage, NotJsonError
from sync.mirror.rowshape import RowShaper


def decode_rows(pool: DecodePool, shaper: RowShaper, body: bytes) -> DecodedPage | None:
    """The decoder of a row page: None (retry, then hostile) when the body is not JSON at all."""
    try:
        return pool.decode(body, shaper)
    except NotJsonError:
        return None


class ExactClient(DataverseClient):
    """DataverseClient whose row pages come back as `DecodedPage` objects.

    `decode_pool` decodes the large pages (the caller's, shared by its clients); without one,
    every page is decoded in the caller.
    """

    def __init__(
        self,
        tenant: Tenant,
        environment: Environment,
        tokens: TokenSource,
        governor: RequestGate,
        *,
        decode_pool: DecodePool | None = None,
        **options: Any,
    ) -> None:
        super().__init__(tenant, environment, tokens, governor, **options)
        self.decode_pool = decode_pool if decode_pool is not None else DecodePool(0)

    async def fetch_page(
        self,
        url: str,
        shaper: RowShaper,
        *,
        track_changes: bool,
        impersonate: str | None = None,
        page_size: int | None = None,
        cost_class: str | None = None,
        on_body: BodyHook | None = None,
    ) -> DecodedPage:
        """GET one row page (collection, delta or keys) and return it decoded and typed.

        `on_body` sees the raw body before it is decoded (see DataverseClient.get)."""
        headers = request_headers(
            page_size=page_size or self.environment.page_size,
            track_changes=track_changes,
            impersonate=impersonate,
        )
        decoder = partial(decode_rows, self.decode_pool, shaper)
        page = await self.get(
            url,
            table=shaper.table,
            headers=headers,
            decoder=decoder,
            cost_class=cost_class,
            on_body=on_body,
        )
        if not isinstance(page, DecodedPage):  # pragma: no cover - decode_rows returns one
            raise HostileResponseError(f"table {shaper.table}: unexpected page", table=shaper.table)
        return page
