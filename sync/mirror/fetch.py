"""A DataverseClient that hands row pages back decoded, typed and exact (see sync.mirror.rowshape).

The stock decoder is orjson, which turns Money/Decimal values into floats (rounding past 15
significant digits) and would cost a second full parse of every page. `fetch_page()` passes the
page's `RowShaper` as the client's decoder instead (exact decimals, typed tuples), so the one
HTTP policy of `DataverseClient.get()` applies unchanged: a body cut short is retried as a network
error, while a well-formed but hostile page raises HostileResponseError at once. Large pages are
decoded in the process's decode worker (sync.mirror.decode_workers), beside the SQLite write.
"""

from __future__ import annotations

from functools import partial

from sync.dataverse.client import DataverseClient
from sync.dataverse.odata import request_headers
from sync.errors import HostileResponseError
from sync.mirror.decode_workers import decode_pooled
from sync.mirror.page import DecodedPage, NotJsonError
from sync.mirror.rowshape import RowShaper


def decode_rows(shaper: RowShaper, body: bytes) -> DecodedPage | None:
    """The decoder of a row page: None (retry, then hostile) when the body is not JSON at all."""
    try:
        return decode_pooled(body, shaper)
    except NotJsonError:
        return None


class ExactClient(DataverseClient):
    """DataverseClient whose row pages come back as `DecodedPage` objects."""

    async def fetch_page(
        self,
        url: str,
        shaper: RowShaper,
        *,
        track_changes: bool,
        impersonate: str | None = None,
        page_size: int | None = None,
    ) -> DecodedPage:
        """GET one row page (collection, delta or keys) and return it decoded and typed."""
        headers = request_headers(
            page_size=page_size or self.environment.page_size,
            track_changes=track_changes,
            impersonate=impersonate,
        )
        page = await self.get(
            url, table=shaper.table, headers=headers, decoder=partial(decode_rows, shaper)
        )
        if not isinstance(page, DecodedPage):  # pragma: no cover - decode_rows returns one
            raise HostileResponseError(f"table {shaper.table}: unexpected page", table=shaper.table)
        return page
