"""The governor's last look before a request is written (see `LastLookConnector`).

The client sets `DEPARTING` to the request's governor slot for the duration of the GET; the
connector asks it once the connection is ready and raises `Recalled` (caught by the client,
which waits for a new slot) when a 429 paused the user in the meantime.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

import aiohttp


class Departing(Protocol):
    """What the connector needs of a governor slot (the client's RequestSlot has it)."""

    def may_leave(self) -> bool: ...


# The slot of the request this task is sending, for the connector's last look.
DEPARTING: ContextVar[Departing | None] = ContextVar("dvmirror_departing", default=None)


class Recalled(Exception):
    """The governor called a request back before it was written."""


class LastLookConnector(aiohttp.TCPConnector):
    """A TCPConnector that asks the request's governor slot once more when the connection is
    ready: between granting a slot and writing the request, a new connection's DNS, TCP and
    TLS handshakes take several turns of the event loop, in which another request's 429 may
    arrive. After `connect` returns, aiohttp writes the request without yielding, so this is
    the last moment a request can still be held back."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own signature
    ) -> aiohttp.connector.Connection:
        connection = await super().connect(req, traces, timeout)
        slot = DEPARTING.get()
        if slot is not None and not slot.may_leave():
            connection.release()  # nothing was written on it: back to the pool
            raise Recalled
        return connection
