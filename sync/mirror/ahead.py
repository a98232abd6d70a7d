"""The one page request of a table that may be in flight before its pager asks for it.

A table's pages form a chain: page k+1 can only be asked for with page k's nextLink. Two ways
to send it early, both bounded to one request ahead, so memory holds at most the page being
committed, the page being decoded and the one being received:
- as soon as page k's body has arrived, from the nextLink read in its raw bytes
  (`sync.dataverse.peek`), so that neither decoding nor committing page k delays the request;
- once page k is decoded, from the request the cursor plans (`keep_or_start`), when the raw
  read sent nothing (a commit was under way, or the page has no link to read).

The early request is a guess: when the request the cursor plans from the decoded page differs,
it is dropped and the planned one sent, so a wrong guess costs one request, never a wrong page.
A request ahead only goes to the environment's own origin (the client checks it again).

`on_last_body` hears of a body that surely has no nextLink (`peek.surely_last`) as it arrives,
before it is decoded: the pager's last read of its chain, which lets work that must follow the
last read (the metadata tables' refresh) start while the page is still decoded and committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sync.dataverse.client import BodyHook
from sync.dataverse.odata import same_origin
from sync.dataverse.peek import peek_next_link, surely_last
from sync.mirror import cursor as cur
from sync.mirror.page import DecodedPage

Fetch = Callable[[cur.Request, BodyHook | None], Awaitable[DecodedPage]]
LastBody = Callable[[cur.Request], None]


class FetchAhead:
    """Fetches a table's pages, keeping at most one request ahead of its pager."""

    def __init__(self, fetch: Fetch, origin: str, on_last_body: LastBody | None = None) -> None:
        self._fetch = fetch
        self._origin = origin
        self._on_last_body = on_last_body
        self._ahead: tuple[cur.Request, asyncio.Future[DecodedPage]] | None = None
        # Set by the pager while it commits a page: a body arriving then sends nothing more,
        # or a third page would be held at once.
        self.committing = False

    @property
    def pending(self) -> cur.Request | None:
        """The request in flight ahead, if any."""
        return None if self._ahead is None else self._ahead[0]

    async def page(self, request: cur.Request) -> DecodedPage:
        """The answer to `request`: the one fetched ahead when it is that request."""
        ahead = self._ahead
        if ahead is not None and ahead[0] == request:
            self._ahead = None
            return await ahead[1]
        await self.cancel()
        return await self._fetch(request, self._on_body(request))

    async def keep_or_start(self, upcoming: cur.Request) -> None:
        """After a page is decoded: keep the request sent ahead if it is `upcoming`, else send
        `upcoming` now (fetched while the page commits)."""
        if self._ahead is not None and self._ahead[0] == upcoming:
            return
        await self.cancel()
        self._start(upcoming)

    async def cancel(self) -> None:
        """Drop the request ahead (the job stops, its plan changed or its commit failed)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            future = ahead[1]
            future.cancel()
            await asyncio.wait([future])  # our own cancellation still propagates
            if not future.cancelled():
                future.exception()  # retrieved: a failed fetch ahead is not worth a warning

    def _start(self, request: cur.Request) -> None:
        self._ahead = (request, asyncio.ensure_future(self._fetch(request, self._on_body(request))))

    def _on_body(self, request: cur.Request) -> BodyHook:
        def arrived(body: bytes) -> None:
            if self._on_last_body is not None and surely_last(body):
                self._on_last_body(request)
                return
            if self._ahead is not None or self.committing:
                return
            link = peek_next_link(body)
            if link is None or link == request.url or not same_origin(link, self._origin):
                return
            self._start(cur.Request(request.kind, link, request.track_changes))

        return arrived
