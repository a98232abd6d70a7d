"""What the Web API client is built from and asks of the layers around it: its retry bounds,
its token source, the governor's request gate and slot, the per-table request tally and the
TLS context. Plain types and protocols, no I/O (sync.dataverse.client uses them)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for the transient and throttled retry loops."""

    attempts: int = 5
    max_delay: float = 180.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    throttle_retries: int = 20


class TokenSource(Protocol):
    """What the client needs from auth (sync.dataverse.auth.TokenProvider is the real one)."""

    async def token(self, scope: str, *, force_refresh: bool = False) -> str: ...


def ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """Verification always on; trust exactly the bundle when one is configured."""
    if ca_bundle is not None:
        return ssl.create_default_context(cafile=str(ca_bundle))
    return ssl.create_default_context()


class RequestSlot(Protocol):
    """One request's place under the governor; it is told what the response said."""

    def may_leave(self) -> bool:
        """The last look before the request is written: False if it must not leave now
        (the slot is then recalled, and the request waits for a new one)."""

    def observe(self, status: int, headers: Mapping[str, str], error_code: object = None) -> float:
        """Report a response (599 and no headers when none came); returns the seconds it
        added to the user's Retry-After pause (0 unless it was a 429 that extended it)."""


class RequestGate(Protocol):
    """What the client needs of the governor (sync.governor.gate.Governor): a slot per request.

    A protocol, so the Web API layer does not depend on the governor that sits above it."""

    def slot(self, cost_class: str = "") -> AbstractAsyncContextManager[RequestSlot]:
        """Wait for a slot (pauses, pacing, concurrency) and hold it for one request;
        `cost_class` groups requests of like execution cost."""
        ...


@dataclass
class RequestTally:
    """Responses per table (requests, 429s and the Retry-After pause seconds those 429s
    started), so each run can record what it cost."""

    requests: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)
    paused: dict[str, float] = field(default_factory=dict)

    def count(self, table: str | None, status: int, paused: float = 0.0) -> None:
        key = table or ""
        self.requests[key] = self.requests.get(key, 0) + 1
        if status == 429:
            self.throttled[key] = self.throttled.get(key, 0) + 1
        if paused > 0:
            self.paused[key] = self.paused.get(key, 0.0) + paused

    def of(self, table: str) -> tuple[int, int, float]:
        """(requests, 429s, Retry-After pause seconds) of one table so far."""
        return (
            self.requests.get(table, 0),
            self.throttled.get(table, 0),
            self.paused.get(table, 0.0),
        )
